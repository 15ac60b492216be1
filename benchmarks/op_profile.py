"""Where the time of a quala ONNX graph goes, per operator type, from ONNX Runtime's own profiler.

    python benchmarks/op_profile.py [--model DIR] [--features 64] [--batch-sizes 1,32]
                                    [--length-configs "full;1,1,0.94,0.54,0.35,0.12"] [--top 12]

Runs the model's INT8 graph (DIR/model.int8.onnx) on real-length SQuAD dev features in length-grouped batches,
with the session settings quala's runtime uses, once to warm up and once profiled, and sums each node's kernel
time by operator type. The table gives ms per feature for each group of operators: the int8 weight matmuls (the
MACs quala counts), the float attention products, the token ranking and drop-and-restore operators, norms and
activations, and layout/shape operators; "between kernels" is the run's wall time that no kernel accounts for
(scheduling, allocation, the session's own work). The groups show which part of a cheap point does not shrink
with its MACs. The profiler adds its own overhead: compare groups and configurations within one run, and take
latency itself from benchmarks/latency.py.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from quala.config import LengthConfig, QualaError, default_model_dir, exit_status, squad_path
from quala.data import collate, length_grouped_batches, load_squad, make_features
from quala.files import read_json
from quala.flops import mean_gmacs
from quala.modeling import ModelConfig, load_tokenizer
from quala.runtime import MICRO_BATCH, OnnxPredictor, cpu_description

GROUPS = {
    "int8 weight matmuls": {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
                            "MatMulInteger"},
    "float attention products": {"FusedMatMul", "MatMul", "Softmax"},
    "token ranking, drop and restore": {"TopK", "GatherND", "GatherElements", "ScatterND", "ReduceMax", "ReduceSum",
                                        "Where", "Pad", "Clip", "Min", "Max", "Less", "Greater", "Equal", "And", "Or",
                                        "Range", "Sub", "Not"},
    "norms and activations": {"LayerNormalization", "SkipLayerNormalization", "Gelu", "Add", "Mul", "Div", "Erf"},
    "layout and shape": {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Shape", "Slice", "Concat", "Cast", "Split",
                         "Gather", "Expand", "ConstantOfShape", "Identity"},
}


def group_of(op: str) -> str:
    return next((g for g, ops in GROUPS.items() if op in ops), "other")


def profile(path: Path, batches: list[dict], config: ModelConfig, lc: LengthConfig | None, threads: int,
            scratch: Path) -> tuple[dict[str, float], dict[str, int], float]:
    """Kernel µs summed per operator type, node runs per operator type, and the profiled runs' total wall µs."""
    predictor = OnnxPredictor(path, config, threads, profile_prefix=str(scratch / "profile"))
    predictor(batches[0], lc)  # the warm-up's runs are in the profile too: dropped below
    warm = -(-len(batches[0]["input_ids"]) // MICRO_BATCH)
    for batch in batches:
        predictor(batch, lc)
    events = json.loads(Path(predictor.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = sorted(e["ts"] for e in runs)[warm] if len(runs) > warm else 0
    wall = sum(e["dur"] for e in runs if e["ts"] >= first_timed)
    per_op: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"]
            count[op] += 1
    return per_op, count, wall


def table(name: str, per_op: dict[str, float], count: dict[str, int], wall: float, n: int, runs: int,
          top: int) -> str:
    ms = {op: us / 1000 / n for op, us in per_op.items()}
    kernels = sum(ms.values())
    total = wall / 1000 / n
    groups: dict[str, float] = collections.defaultdict(float)
    for op, t in ms.items():
        groups[group_of(op)] += t
    lines = [f"### {name}", "", "| group | ms/feature | share of wall |", "| --- | ---: | ---: |"]
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {g} | {t:.3f} | {100 * t / total:.1f}% |")
    lines.append(f"| between kernels | {total - kernels:.3f} | {100 * (total - kernels) / total:.1f}% |")
    lines.append(f"| **wall (profiled)** | **{total:.3f}** | 100% |")
    lines += ["", "| operator | group | nodes per run | ms/feature | µs per node run |",
              "| --- | --- | ---: | ---: | ---: |"]
    for op, t in sorted(ms.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {op} | {group_of(op)} | {count[op] / runs:.0f} | {t:.3f} | {per_op[op] / count[op]:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--features", type=int, default=64, help="dev features profiled (default 64)")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--length-configs", default="full",
                   help="';'-separated length configurations, 'full' for none (default full)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--top", type=int, default=12, help="operator types listed per table (default 12)")
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    path = model_dir / "model.int8.onnx"
    if not path.is_file():
        raise QualaError(f"{path}: no such file (run `quala quantize --model {model_dir}` first)")
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise QualaError(f"--batch-sizes {args.batch_sizes!r}: give comma-separated integers, e.g. 1,32") from None
    configs = []
    for text in args.length_configs.split(";"):
        lc = LengthConfig.parse(text.strip())
        if lc is not None:
            lc.check(config.num_hidden_layers, config.max_seq_length)
        configs.append((text.strip(), lc))
    tokenizer = load_tokenizer(model_dir)
    examples = load_squad(squad_path("dev"), limit=args.features)
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride,
                             config.max_query_length)[: args.features]
    lengths = [len(f) for f in features]
    print(f"CPU: {cpu_description()}\n{len(features)} dev features, {np.mean(lengths):.1f} tokens on average; "
          f"{args.threads} threads; {path}\n")
    with tempfile.TemporaryDirectory() as scratch:
        for b in sizes:
            batches = [collate([features[i] for i in idx]) for idx in length_grouped_batches(lengths, b)]
            runs = sum(-(-len(x["input_ids"]) // MICRO_BATCH) for x in batches)
            for name, lc in configs:
                gmac = mean_gmacs(config, lc, lengths)
                per_op, count, wall = profile(path, batches, config, lc, args.threads,
                                              Path(scratch))
                print(table(f"batch {b}, {name} ({gmac:.3f} GMAC/feature)", per_op, count, wall, len(features),
                            runs, args.top) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.exit(main())
