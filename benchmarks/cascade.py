"""Answer cheaply first, and again at a costlier configuration only when unsure: does that beat the front?

    python benchmarks/cascade.py [--model DIR] [--runtime onnx-int8] [--configs "full;A;B;C"]
        [--tune 0:2400] [--test 2400:2813] [--confidence logit,prob] [--targets 1.5,2,3]

A cascade answers every question at a cheap configuration A; where its answer's confidence is below a threshold
(`logit`: the span's start + end logit, comparable across questions; `prob`: its share among the n-best spans), it
answers again at a costlier configuration B and keeps that answer. A question costs the MACs of every pass it ran.
For each target the most accurate cascade (pair and threshold) with at least TARGET times fewer MACs than full
length is chosen on the `--tune` questions and reported on the `--test` questions, beside each configuration
alone and the F1 the configurations alone reach at the cascade's saving (linear between the two around it). Both
samples are offset:count of the search's held-out training articles, never the dev set. A cascade's cost varies
per question: the table gives the share answered twice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from quala.budget import configs_to_score
from quala.config import LengthConfig, ModelConfig, QualaError, default_model_dir, exit_status
from quala.data import Example, make_features
from quala.evaluate import evaluate, question_f1
from quala.flops import forward_macs
from quala.runtime import load_predictor
from quala.search import heldout_questions

CONFIDENCES = ("logit", "prob")
THRESHOLD_QUANTILES = np.linspace(0.0, 0.8, 81)  # of the cheap pass's confidence on the tune questions


class Scored(NamedTuple):
    """Per question of a sample, at one configuration."""
    f1: np.ndarray  # official v1.1 F1, percent
    logit: np.ndarray  # the answer's start + end logit
    prob: np.ndarray  # its probability among the n-best spans
    macs: np.ndarray  # of the question's windows at this configuration
    full_macs: np.ndarray  # of the same windows at full length


class Choice(NamedTuple):
    cheap: str
    costly: str | None  # None: the single configuration `cheap`
    threshold: float  # answer again where confidence < threshold (-inf: never)


def score(predictor, tokenizer, config: ModelConfig, examples: list[Example], lc: LengthConfig | None,
          batch_size: int) -> Scored:
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    result = evaluate(predictor, tokenizer, examples, lc, batch_size, features=features, progress=False)
    macs, full = np.zeros(len(examples)), np.zeros(len(examples))
    for f in features:
        macs[f.example_index] += forward_macs(config, lc, len(f))
        full[f.example_index] += forward_macs(config, None, len(f))
    return Scored(question_f1(examples, result.answers), np.array([a.logit for a in result.answers]),
                  np.array([a.score for a in result.answers]), macs, full)


def outcome(scored: dict[str, Scored], choice: Choice, confidence: str) -> tuple[float, float, float]:
    """F1, times fewer MACs than full length, and the share of questions answered twice."""
    cheap = scored[choice.cheap]
    if choice.costly is None:
        return float(cheap.f1.mean()), float(cheap.full_macs.sum() / cheap.macs.sum()), 0.0
    costly = scored[choice.costly]
    again = getattr(cheap, confidence) < choice.threshold
    f1 = np.where(again, costly.f1, cheap.f1)
    macs = cheap.macs + again * costly.macs
    return float(f1.mean()), float(cheap.full_macs.sum() / macs.sum()), float(again.mean())


def candidates(scored: dict[str, Scored], confidence: str) -> list[Choice]:
    """Every single configuration, and every cheap -> costlier pair at thresholds from its confidence's quantiles."""
    choices = [Choice(name, None, -np.inf) for name in scored]
    for cheap, a in scored.items():
        for costly, b in scored.items():
            if b.macs.sum() > a.macs.sum():
                thresholds = np.unique(np.quantile(getattr(a, confidence), THRESHOLD_QUANTILES))
                choices += [Choice(cheap, costly, float(t)) for t in thresholds]
    return choices


def best(scored: dict[str, Scored], choices: list[Choice], target: float, confidence: str) -> Choice | None:
    """The most accurate choice with at least `target` times fewer MACs than full length on these questions."""
    results = [outcome(scored, c, confidence) for c in choices]
    fits = [(f1, i) for i, (f1, saving, _) in enumerate(results) if saving >= target]
    return choices[max(fits)[1]] if fits else None


def parse_sample(text: str, flag: str) -> tuple[int, int]:
    try:
        offset, count = (int(v) for v in text.split(":"))
    except ValueError:
        offset = count = -1
    if offset < 0 or count < 1:
        raise QualaError(f"{flag} {text!r}: give offset:count in the held-out split, e.g. 0:2400")
    return offset, count


def interpolated(scored: dict[str, Scored], saving: float, confidence: str) -> float | None:
    """The single configurations' F1 at `saving` times fewer MACs, linear between the two around it."""
    points = sorted(outcome(scored, Choice(name, None, -np.inf), confidence)[1::-1] for name in scored)
    savings, f1s = zip(*points)
    return float(np.interp(saving, savings, f1s)) if savings[0] <= saving <= savings[-1] else None


def table(tune: dict[str, Scored], test: dict[str, Scored], targets: list[float], confidence: str) -> str:
    """Each configuration alone, then per target the cascade chosen on tune, with the single configurations' F1
    interpolated at the saving it reached on test."""
    lines = ["| target | configuration (alone) or cascade chosen on tune | answered twice (test) "
             "| tune F1 @ fewer MACs | test F1 @ fewer MACs | alone at that saving (test) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    choices = candidates(tune, confidence)
    rows = [("", c) for c in choices if c.costly is None]
    rows += [(f"{target:g}x", best(tune, choices, target, confidence)) for target in targets]
    for target, choice in rows:
        if choice is None:
            lines.append(f"| {target} | no configuration reaches it | | | | |")
            continue
        name = choice.cheap if choice.costly is None else \
            f"{choice.cheap} -> {choice.costly} where {confidence} < {choice.threshold:.3g}"
        a, b = outcome(tune, choice, confidence), outcome(test, choice, confidence)
        alone = interpolated(test, b[1], confidence) if choice.costly else None
        lines.append(f"| {target} | {name} | {b[2]:.1%} | {a[0]:.2f} @ {a[1]:.2f}x | {b[0]:.2f} @ {b[1]:.2f}x | "
                     f"{'' if alone is None else f'{alone:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the released one)")
    p.add_argument("--runtime", default="onnx-int8", help="onnx-int8 (default), onnx or torch")
    p.add_argument("--configs", default="full;1,0.99,0.8,0.54,0.35,0.12;0.92,0.53,0.53,0.44,0.19,0.19;"
                   "0.48,0.48,0.4,0.24,0.05,0.05;0.36,0.36,0.24,0.17,0.05,0.05",
                   help="';'-separated length configurations the cascades are built from ('full' included)")
    p.add_argument("--tune", default="0:2400", help="held-out questions the choices are made on (offset:count)")
    p.add_argument("--test", default="2400:2813", help="held-out questions they are reported on (offset:count)")
    p.add_argument("--confidence", default="logit,prob",
                   help="what decides to answer again, comma-separated: a table for each (default logit,prob)")
    p.add_argument("--targets", default="1.5,2,3", help="comma-separated MAC savings to choose for (default 1.5,2,3)")
    p.add_argument("--batch-size", type=int, default=64)
    return exit_status(run, p.parse_args(argv))


def run(args) -> None:
    confidences = args.confidence.split(",")
    if any(c not in CONFIDENCES for c in confidences):
        raise QualaError(f"--confidence {args.confidence!r}: choose from {', '.join(CONFIDENCES)}")
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        raise QualaError(f"--targets {args.targets!r}: give numbers separated by commas, e.g. 1.5,2,3") from None
    samples = {flag: parse_sample(text, flag) for flag, text in (("--tune", args.tune), ("--test", args.test))}
    model = args.model or default_model_dir()
    predictor, tokenizer, config = load_predictor(model, args.runtime)
    configs = configs_to_score(model, args.configs, config)
    scored = {}
    for flag, sample in samples.items():
        examples, _ = heldout_questions(config, *sample)
        scored[flag] = {str(lc or "full"): score(predictor, tokenizer, config, examples, lc, args.batch_size)
                        for lc in configs}
    print(f"{model}, {args.runtime}; held-out training questions: tune {args.tune}, test {args.test}")
    for confidence in confidences:
        print(f"\nAnswered again where the cheap answer's {confidence} is low:\n")
        print(table(scored["--tune"], scored["--test"], targets, confidence))


if __name__ == "__main__":
    sys.exit(main())
