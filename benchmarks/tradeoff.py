"""The trade-off claim, tested: the searched front against the simple ways to cut a model's cost.

    python benchmarks/tradeoff.py [--model DIR] [--stage1 DIR] [--limit N] [--runtime torch] [--dtype fp32]
                                  [--latency-features 32] [--repeats 5] [--json tradeoff.json] [--png tradeoff.png]

Every row is scored on the official SQuAD v1.1 dev set (the first --limit questions, default all) with the same
runtime and dtype, and priced in GMACs (quala.flops) and batch-1 latency:

- front:    the model's searched front (DIR/length_configs.json) and its full length;
- uniform:  the same model, no search: for r in 1.0, 0.9, ..., 0.3, each layer keeps the ratio r of the *input
            length* (the constant configuration LengthConfig((r,) * layers); ranked by attention as usual). The other
            reading, r of the *previous layer's* tokens at every layer (r, r^2, ...), is not run;
- window:   the same model at full length on shorter windows instead of dropping tokens: max_seq_length 256, 192,
            128 (--windows) with doc_stride scaled alike (doc_stride * len / max_seq_length, 128 * len / 384), and
            the model's own window;
- position: the same model keeping each layer's first k tokens (position pruning, [CLS] first) instead of the most
            attended ones, at the ratios of `uniform` (eager PyTorch only: skipped on an ONNX runtime);
- stage1:   the stage-1 model (fine-tuned without LengthDrop; --stage1, default MODEL/../finetune when it exists,
            else the row is skipped and the output says so) at the front's configurations.

GMACs: the MACs of every feature the row scores, summed and divided by the number of dev features at the model's
own window, i.e. the mean per dev feature, and for shorter windows (more, shorter features) the same questions'
total cost on the same scale. Latency: a fixed sample of dev questions (random, seed 0) whose features at the
model's window number --latency-features; each repeat times every row in turn (so background load hits them
alike) over that sample's features at batch 1; the median over repeats, per feature of the model's window.
A configuration of all-1.0 ratios is the full length (scored once, whatever the ranking).
Output: a markdown table, the best F1 of each method at or under the front's fastest/balanced/accurate GMACs,
--json (redraw with `quala report --tradeoff FILE`) and --png (F1 against GMACs and against latency).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quala.budget import read_front
from quala.config import LengthConfig, QualaError, default_model_dir, squad_path
from quala.data import Example, Feature, collate, load_squad, make_features
from quala.evaluate import TorchPredictor, evaluate
from quala.files import write_json_atomic
from quala.flops import GIGA, forward_macs
from quala.modeling import ModelConfig
from quala.report import plot_tradeoff, tradeoff_markdown
from quala.runtime import load_predictor
from quala.search import runtime_name

RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass
class Setting:
    """One thing to score: a predictor ('model', 'position' or 'stage1'), a length config and a window."""
    engine: str
    lc: LengthConfig | None
    window: int
    stride: int

    def key(self) -> tuple:
        engine = "model" if self.engine == "position" and self.lc is None else self.engine
        return engine, str(self.lc), self.window


@dataclass
class Row:
    method: str
    config: str
    setting: Setting


def full_if_all_ones(lc: LengthConfig | None) -> LengthConfig | None:
    return None if lc is not None and lc.unit == "ratio" and all(v == 1.0 for v in lc.values) else lc


def label(lc: LengthConfig | None) -> str:
    return str(lc) if lc else "full"


def plan_rows(config: ModelConfig, front_configs: list[LengthConfig | None], windows: list[int], position: bool,
              stage1: bool) -> list[Row]:
    """Every row of the comparison, in the order of the table."""
    own = Setting("model", None, config.max_seq_length, config.doc_stride)
    rows = [Row("front", label(lc), Setting("model", full_if_all_ones(lc), own.window, own.stride))
            for lc in front_configs]
    layers = config.num_hidden_layers
    for r in RATIOS:
        lc = full_if_all_ones(LengthConfig((r,) * layers))
        rows.append(Row("uniform", f"r={r:.1f}", Setting("model", lc, own.window, own.stride)))
    for w in windows:
        if w >= config.max_seq_length:
            raise QualaError(f"--windows {w}: not shorter than the model's max_seq_length {config.max_seq_length}")
        stride = round(config.doc_stride * w / config.max_seq_length)
        rows.append(Row("window", f"{w} tokens, stride {stride}", Setting("model", None, w, stride)))
    rows.append(Row("window", f"{own.window} tokens, stride {own.stride}", own))
    if position:
        for r in RATIOS:
            lc = full_if_all_ones(LengthConfig((r,) * layers))
            rows.append(Row("position", f"r={r:.1f}", Setting("position", lc, own.window, own.stride)))
    if stage1:
        rows += [Row("stage1", label(lc), Setting("stage1", full_if_all_ones(lc), own.window, own.stride))
                 for lc in front_configs]
    return rows


def latency_sample(examples: list[Example], features: list[Feature], n: int) -> list[int]:
    """Indices of a fixed random sample of questions (seed 0) with about n features at the model's window."""
    per_example = np.bincount([f.example_index for f in features], minlength=len(examples))
    chosen, total = [], 0
    for i in np.random.default_rng(0).permutation(len(examples)):
        if total >= n:
            break
        chosen.append(int(i))
        total += int(per_example[i])
    return sorted(chosen)


def time_once(predictor, batches: list[dict], lc: LengthConfig | None) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        predictor(batch, lc)
    return time.perf_counter() - t0


def stage1_dir(arg: Path | None, model_dir: Path) -> tuple[Path | None, str | None]:
    """The stage-1 model directory, or None and why the row is skipped."""
    if arg is not None:
        if not (arg / "config.json").is_file():
            raise QualaError(f"--stage1 {arg}: not a model directory (no config.json)")
        return arg, None
    default = model_dir.resolve().parent / "finetune"
    if (default / "config.json").is_file():
        return default, None
    return None, f"stage1: no --stage1 given and {default} is not a model directory"


def run(args) -> dict:
    model_dir = Path(args.model or default_model_dir())
    dtype = args.dtype
    front = read_front(model_dir)
    front_configs = [p.length_config for p in front.configs] + ([front.full.length_config] if front.full else [])
    front_configs = list(dict.fromkeys(full_if_all_ones(lc) for lc in front_configs))
    predictors = {}
    predictors["model"], tokenizer, config = load_predictor(model_dir, args.runtime, dtype, args.threads)
    runtime = runtime_name(predictors["model"])
    skipped = []
    if isinstance(predictors["model"], TorchPredictor):
        predictors["position"] = TorchPredictor(predictors["model"].model, dtype, ranking="position")
    else:
        skipped.append(f"position: first-k ranking runs in eager PyTorch only, not on {runtime}")
    s1, why = stage1_dir(args.stage1, model_dir)
    if s1 is not None:
        predictors["stage1"], _, s1_config = load_predictor(s1, args.runtime, dtype, args.threads)
        if s1_config.num_hidden_layers != config.num_hidden_layers:
            raise QualaError(f"--stage1 {s1}: {s1_config.num_hidden_layers} layers; the model has "
                             f"{config.num_hidden_layers}")
    else:
        skipped.append(why)
    configs = {"model": config, "position": config, "stage1": s1_config if s1 else config}
    rows = plan_rows(config, front_configs, args.windows, "position" in predictors, s1 is not None)

    examples = load_squad(squad_path("dev"), limit=args.limit)
    features: dict[tuple[int, int], list[Feature]] = {}
    for s in {(r.setting.window, r.setting.stride) for r in rows}:
        features[s] = make_features(examples, tokenizer, s[0], s[1], config.max_query_length)
    reference = features[(config.max_seq_length, config.doc_stride)]
    sample = set(latency_sample(examples, reference, args.latency_features))
    n_sample = sum(f.example_index in sample for f in reference)

    settings = {r.setting.key(): r.setting for r in rows}
    scores, cost, timings = {}, {}, {k: [] for k in settings}
    for i, (k, s) in enumerate(settings.items()):
        t0 = time.perf_counter()
        feats = features[(s.window, s.stride)]
        r = evaluate(predictors[s.engine], tokenizer, examples, s.lc, args.batch_size, s.window, s.stride,
                     config.max_query_length, features=feats, progress=False)
        scores[k] = r
        lengths = np.bincount([len(f) for f in feats])
        cost[k] = sum(c * forward_macs(configs[s.engine], s.lc, n) for n, c in enumerate(lengths) if c) \
            / len(reference) / GIGA
        print(f"[{i + 1}/{len(settings)}] {s.engine} {label(s.lc)} window {s.window}: F1 {r.f1:.2f}, "
              f"{cost[k]:.3f} GMACs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    batches = {k: [collate([f]) for f in features[(s.window, s.stride)] if f.example_index in sample]
               for k, s in settings.items()}
    if args.repeats > 0:
        for k, s in settings.items():  # warm-up
            time_once(predictors[s.engine], batches[k][:2], s.lc)
        for _ in range(args.repeats):
            for k, s in settings.items():
                timings[k].append(time_once(predictors[s.engine], batches[k], s.lc))
    full = cost[Setting("model", None, config.max_seq_length, config.doc_stride).key()]
    out = []
    for row in rows:
        k = row.setting.key()
        latency = 1000 * statistics.median(timings[k]) / n_sample if timings[k] else None
        out.append({"method": row.method, "config": row.config, "length_config": label(row.setting.lc),
                    "max_seq_length": row.setting.window, "doc_stride": row.setting.stride, "gmacs": cost[k],
                    "speedup": full / cost[k], "latency_ms": latency, "em": scores[k].exact_match,
                    "f1": scores[k].f1, "features": scores[k].features})
    budgets = {}
    for name in ("fastest", "balanced", "accurate"):
        point = front.point(front.named.get(name, ""))
        if point is not None:
            budgets[name] = cost[Setting("model", full_if_all_ones(point.length_config), config.max_seq_length,
                                         config.doc_stride).key()]
    info = {"model": str(model_dir), "stage1": str(s1) if s1 else None, "runtime": runtime,
            "dev_file": str(squad_path("dev")), "questions": len(examples), "features": len(reference),
            "latency_questions": len(sample), "latency_features": n_sample, "repeats": args.repeats,
            "torch_threads": torch.get_num_threads()}
    return {"info": info, "rows": out, "budgets": budgets, "skipped": skipped}


def parse_windows(text: str) -> list[int]:
    try:
        windows = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise QualaError(f"--windows {text!r}: give token counts like '256,192,128'") from None
    if any(w < 16 for w in windows):
        raise QualaError(f"--windows {text!r}: windows must be at least 16 tokens")
    return windows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory with length_configs.json "
                   "(default: the released model)")
    p.add_argument("--stage1", type=Path, default=None, help="stage-1 model directory (default: MODEL/../finetune "
                   "when it exists, else the stage1 row is skipped)")
    p.add_argument("--limit", type=int, default=None, help="score the first N dev questions (default all)")
    p.add_argument("--runtime", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="engine of every row (default torch; position pruning runs on torch only)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="torch dtype (default fp32)")
    p.add_argument("--windows", default="256,192,128", help="shorter windows to compare (default 256,192,128)")
    p.add_argument("--batch-size", type=int, default=32, help="features per forward pass when scoring")
    p.add_argument("--latency-features", type=int, default=32,
                   help="about this many dev features (whole questions) timed at batch 1 (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the sample; the median counts "
                   "(default 5; 0 skips timing)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of PyTorch and ONNX Runtime (default: "
                   "theirs); on a loaded machine, fewer threads than cores gives steadier timings")
    p.add_argument("--json", type=Path, default=Path("tradeoff.json"), help="results (default tradeoff.json)")
    p.add_argument("--png", type=Path, default=Path("tradeoff.png"), help="plot (default tradeoff.png)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    try:
        args.windows = parse_windows(args.windows)
        if args.limit is not None and args.limit < 1:
            raise QualaError(f"--limit {args.limit}: must be at least 1")
        if args.threads is not None:
            if args.threads < 1:
                raise QualaError(f"--threads {args.threads}: must be at least 1")
            torch.set_num_threads(args.threads)
        result = run(args)
        write_json_atomic(args.json, result)
        plot_tradeoff(result, args.png)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    print(tradeoff_markdown(result))
    print(f"\njson      {args.json}\nplot      {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
