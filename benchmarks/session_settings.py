"""Which ONNX Runtime session settings run quala's INT8 graph fastest on this CPU, paired side by side.

    python benchmarks/session_settings.py [--model DIR] [--features 64] [--repeats 9] [--batch-sizes 1,32]
                                          [--length-configs "full;1,0.99,0.8,0.54,0.35,0.12"] [--threads 2]
                                          [--kernels u8u8,u8s7]

quala's runtime leaves ONNX Runtime's SkipLayerNormalization fusion out and runs a batch on every physical core
(quala.runtime.OnnxPredictor). This times that setting against the fusion left in, and against one thread, on the
same graph and the same real-length SQuAD dev features in length-grouped batches: the settings alternate within
each repeat, so a noisy machine slows all of them alike. It prints, per batch size and length configuration, the
median ms per feature, the speed relative to quala's setting and in how many repeats each setting beat it. A
setting that wins on a CPU class in most repeats is a candidate for the runtime to choose there. --kernels adds
quala's setting with each int8 kernel named (u8s8, u8u8, u8s7; quala.runtime.choose_int8_kernel picks one per CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from quala.budget import configs_to_score
from quala.config import QualaError, default_model_dir, exit_status, squad_path
from quala.data import collate, length_grouped_batches, load_squad, make_features
from quala.files import read_json
from quala.modeling import ModelConfig, load_tokenizer
from quala.runtime import DISABLED_FUSIONS, INT8_KERNELS, OnnxPredictor, cpu_description


def settings(path: Path, config: ModelConfig, threads: int, kernels: tuple[str, ...] = ()
             ) -> dict[str, OnnxPredictor]:
    """Named predictors of one graph; the first is quala's runtime setting (with the int8 kernel it picks here)."""
    quala = OnnxPredictor(path, config, threads)
    out = {f"quala: SkipLayerNormFusion off, {threads} threads, {quala.int8_kernel}": quala,
           f"SkipLayerNormFusion on, {threads} threads": OnnxPredictor(path, config, threads, disabled_fusions=()),
           "SkipLayerNormFusion off, 1 thread": OnnxPredictor(path, config, 1, disabled_fusions=DISABLED_FUSIONS)}
    for kernel in kernels:
        out[f"quala's setting, int8 kernel {kernel}"] = OnnxPredictor(path, config, threads, int8_kernel=kernel)
    return out


def paired_times(predictors: dict[str, OnnxPredictor], batches: list[dict], lc, features: int, repeats: int
                 ) -> dict[str, list[float]]:
    """ms per feature of each predictor in each repeat; the predictors alternate within a repeat."""
    for predictor in predictors.values():  # warm-up: first-call allocations, the side-by-side session
        predictor(batches[0], lc)
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predictor in predictors.items():
            t0 = time.perf_counter()
            for batch in batches:
                predictor(batch, lc)
            times[name].append(1000 * (time.perf_counter() - t0) / features)
    return times


def table_rows(batch_size: int, config_name: str, times: dict[str, list[float]]) -> list[str]:
    base_name = next(iter(times))
    base = times[base_name]
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        wins = "" if name == base_name else f"{sum(v < b for v, b in zip(values, base))} of {len(values)}"
        rows.append(f"| {batch_size} | {config_name} | {name} | {median:.2f} | "
                    f"{statistics.median(base) / median:.2f}x | {wins} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--features", type=int, default=64, help="dev features timed (default 64)")
    p.add_argument("--repeats", type=int, default=9, help="paired repeats (default 9)")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--length-configs", default=None,
                   help="';'-separated length configurations, 'full' for none (default: full and the front's "
                        "balanced and fastest points)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of quala's setting (default 2)")
    p.add_argument("--kernels", default="", help="also time quala's setting with these int8 kernels, ',' between "
                                                 "them (u8s8, u8u8, u8s7)")
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    path = model_dir / "model.int8.onnx"
    if not path.is_file():
        raise QualaError(f"{path}: no such file (run `quala quantize --model {model_dir}` first)")
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise QualaError(f"--batch-sizes {args.batch_sizes!r}: give comma-separated integers, e.g. 1,32") from None
    if args.repeats < 1 or args.features < 1 or min(sizes) < 1:
        raise QualaError("--repeats, --features and every batch size must be at least 1")
    kernels = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    if any(k not in INT8_KERNELS or k == "auto" for k in kernels):
        raise QualaError(f"--kernels {args.kernels!r}: choose from u8s8, u8u8, u8s7")
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    configs = configs_to_score(model_dir, args.length_configs, config)
    features = make_features(load_squad(squad_path("dev"), limit=args.features), load_tokenizer(model_dir),
                             config.max_seq_length, config.doc_stride, config.max_query_length)[: args.features]
    predictors = settings(path, config, args.threads, kernels)
    print(f"CPU: {cpu_description()}\n{len(features)} dev features, {args.repeats} paired repeats; {path}\n")
    print("| batch | length config | session setting | ms/feature (median) | vs quala's setting | faster than "
          "quala's in |\n| ---: | --- | --- | ---: | ---: | ---: |")
    for size in sizes:
        batches = [collate([features[i] for i in idx])
                   for idx in length_grouped_batches([len(f) for f in features], size)]
        for lc in configs:
            times = paired_times(predictors, batches, lc, len(features), args.repeats)
            print("\n".join(table_rows(size, str(lc or "full"), times)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
