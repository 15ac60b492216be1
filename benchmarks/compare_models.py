"""Is a candidate model better than the shipped one? Paired F1 on the same held-out questions, with its noise.

    python benchmarks/compare_models.py --candidate DIR [--baseline DIR]
        [--configs "full;1,0.99,0.8,0.54,0.35,0.12" | --budgets "1.5x;2x;3x"] [--samples "2400:1500,400:2000"]
        [--runtime torch]

Both models answer every question of each held-out sample (offset:count of the search's split of the training
articles, never the dev set) at each configuration. The table gives both F1s, the mean per-question difference
(candidate - baseline) and its standard error (std / sqrt(n)), per sample and pooled, with a verdict: "ahead" or
"behind" when the pooled difference is beyond two standard errors, else "level". One sample of 1,500 questions
cannot resolve a few tenths of F1: 560 more LengthDrop steps scored +0.03 to +0.46 on one sample and -0.50 to -0.96 on
another (docs/benchmarks.md). Sample 400:2000 is the questions `quala search` confirms its front on, 2400:1500 the
ones after them. Default runtime: PyTorch fp32 (`--runtime onnx-int8` scores the shipped graphs).

--budgets compares what a user gets for each budget instead of fixed configurations: each model's own front
(DIR/length_configs.json) picks its configuration for the budget, as `--budget` does, and both are scored on the
same questions. Two fronts of one model (a longer search, say) compare this way: a model directory with the same
weights and the new front as the candidate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from quala.budget import FrontPoint, configs_to_score, read_front, select
from quala.config import LengthConfig, ModelConfig, QualaError, default_model_dir, exit_status
from quala.data import Example, make_features
from quala.evaluate import evaluate, question_f1
from quala.files import read_json
from quala.metrics import Paired, paired
from quala.runtime import load_predictor
from quala.search import heldout_questions, parse_slice


def verdict(p: Paired) -> str:
    if p.difference > 2 * p.stderr:
        return "ahead"
    if p.difference < -2 * p.stderr:
        return "behind"
    return "level"


def parse_samples(text: str) -> list[tuple[int, int]]:
    """'2400:1500,400:2000' -> [(2400, 1500), (400, 2000)]: offset and count in the held-out split."""
    samples = [parse_slice(part, "--samples") for part in text.split(",") if part.strip()]
    if not samples:
        raise QualaError(f"--samples {text!r}: give offset:count pairs separated by commas, e.g. 2400:1500,400:2000")
    return samples


def score(model_dir: Path, runtime: str, samples: dict[str, list[Example]], configs: list[LengthConfig | None],
          batch_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-question F1 of one model (loaded once) on each sample at each configuration: sample -> config text ->."""
    predictor, tokenizer, config = load_predictor(model_dir, runtime)
    out = {}
    for name, examples in samples.items():
        features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride,
                                 config.max_query_length)
        out[name] = {str(lc or "full"): question_f1(examples, evaluate(predictor, tokenizer, examples, lc, batch_size,
                                                                        features=features, progress=False).answers)
                     for lc in configs}
    return out


def compare(candidate: Path, baseline: Path, runtime: str, samples: dict[str, list[Example]],
            configs: list[LengthConfig | None], batch_size: int = 32) -> list[tuple[str, str, Paired]]:
    """(config, sample name or "pooled", Paired) rows."""
    ours, theirs = (score(d, runtime, samples, configs, batch_size) for d in (candidate, baseline))
    return [row for key in (str(lc or "full") for lc in configs) for row in sample_rows(key, ours, key, theirs, key)]


def sample_rows(label: str, ours: dict[str, dict[str, np.ndarray]], mine: str, theirs: dict[str, dict[str, np.ndarray]],
                base: str) -> list[tuple[str, str, Paired]]:
    """The candidate at configuration `mine` against the baseline at `base`: one row per sample, then pooled."""
    rows = [(label, name, paired(ours[name][mine], theirs[name][base])) for name in ours]
    if len(ours) > 1:
        rows.append((label, "pooled", paired(np.concatenate([ours[n][mine] for n in ours]),
                                             np.concatenate([theirs[n][base] for n in ours]))))
    return rows


def compare_budgets(candidate: Path, baseline: Path, runtime: str, samples: dict[str, list[Example]],
                    budgets: list[str], batch_size: int = 32) -> list[tuple[str, str, Paired]]:
    """(budget with both points' configurations, sample name or "pooled", Paired) rows: each model at the
    configuration its own front picks for the budget."""
    picks = {b: [select(read_front(d), b, str(d)) for d in (candidate, baseline)] for b in budgets}  # before scoring
    ours, theirs = (score(d, runtime, samples, list(dict.fromkeys(p[i].length_config for p in picks.values())),
                          batch_size) for i, d in enumerate((candidate, baseline)))
    return [row for b, (mine, base) in picks.items()
            for row in sample_rows(f"{b}: {point_text(mine)} vs {point_text(base)}", ours,
                                   str(mine.length_config or "full"), theirs, str(base.length_config or "full"))]


def point_text(p: FrontPoint) -> str:
    return f"{p.length_config or 'full'} ({p.speedup_gmacs:.2f}x)"


def table(rows: list[tuple[str, str, Paired]], first: str = "length config") -> str:
    """Markdown; the verdict on the pooled rows (on every row when there is one sample)."""
    lines = [f"| {first} | questions | candidate F1 | baseline F1 | difference | std. error | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    single = not any(name == "pooled" for _, name, _ in rows)
    for key, name, p in rows:
        mark = verdict(p) if single or name == "pooled" else ""
        lines.append(f"| {key} | {name} ({p.questions}) | {p.candidate:.2f} | {p.baseline:.2f} | "
                     f"{p.difference:+.2f} | {p.stderr:.2f} | {mark} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidate", type=Path, required=True, help="model directory to judge")
    p.add_argument("--baseline", type=Path, default=None, help="model directory to beat (default: the released one)")
    p.add_argument("--configs", default="full", help="';'-separated length configurations (default full)")
    p.add_argument("--budgets", default=None,
                   help="';'-separated budgets ('1.5x;2x;3x', point names, GMACs): each model at the point its own "
                        "front picks for each, instead of --configs")
    p.add_argument("--samples", default="2400:1500,400:2000",
                   help="held-out samples as offset:count, comma-separated (default 2400:1500,400:2000)")
    p.add_argument("--runtime", default="torch", help="torch (fp32, default), onnx or onnx-int8")
    p.add_argument("--batch-size", type=int, default=32)
    return exit_status(run, p.parse_args(argv))


def run(args) -> None:
    baseline = args.baseline or default_model_dir()
    config = ModelConfig.from_dict(read_json(args.candidate / "config.json"))
    configs = configs_to_score(args.candidate, args.configs, config)  # checked before minutes of scoring
    samples = {f"{o}:{n}": heldout_questions(config, o, n)[0] for o, n in parse_samples(args.samples)}
    print(f"candidate {args.candidate}, baseline {baseline}; {args.runtime}; held-out training questions; F1\n")
    if args.budgets:
        budgets = [b.strip() for b in args.budgets.split(";") if b.strip()]
        rows = compare_budgets(args.candidate, baseline, args.runtime, samples, budgets, args.batch_size)
        print(table(rows, "budget: candidate's point vs baseline's"))
    else:
        print(table(compare(args.candidate, baseline, args.runtime, samples, configs, args.batch_size)))


if __name__ == "__main__":
    sys.exit(main())
