"""Should a long window keep a smaller share of its tokens than a short one? A screen, zero-shot on the model.

    python benchmarks/length_rule.py [--model DIR] [--configs "0.92,0.53,0.53,0.44,0.19,0.19;..."]
        [--exponents 1,0.75,0.5] [--test 2400:1500] [--runtime torch|onnx-int8]

A length configuration keeps a fixed share r_l of every window at layer l (n r_l tokens). What an answer needs
(the question, the answer's neighbourhood) hardly grows with the window, while a long window's attention costs
more per token. The candidate, LengthConfig's exponent b (written 'r,r,...@b'), keeps c r_l m^(1-b) n^b tokens of
a window of n (m: the scored windows' mean length), c chosen so that those windows cost the same mean MACs as the
ratio configuration (b = 1 is that configuration itself): with b < 1 long windows keep a smaller share and short
ones a larger. The graph takes token counts as an input, so every runtime runs it. Held-out training questions
(--test, never the dev set), F1 per configuration and exponent, and the paired difference against b = 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from quala.budget import configs_to_score
from quala.config import REFERENCE_TOKENS, LengthConfig, default_model_dir, exit_status
from quala.data import make_features
from quala.evaluate import evaluate, question_f1
from quala.flops import mean_gmacs
from quala.runtime import load_predictor
from quala.search import heldout_questions, parse_slice

CONFIGS = "1,0.99,0.8,0.54,0.35,0.12;0.92,0.53,0.53,0.44,0.19,0.19;0.48,0.48,0.4,0.24,0.05,0.05"


def rule_config(lc: LengthConfig, exponent: float, mean_length: float, scale: float) -> LengthConfig:
    """lc's ratios with `exponent`, keeping scale * r * mean_length^(1-b) * n^b tokens of a window of n."""
    if exponent == 1 and scale == 1:
        return lc
    factor = scale * (mean_length / REFERENCE_TOKENS) ** (1 - exponent)
    return LengthConfig(tuple(min(1.0, v * factor) for v in lc.values), "ratio", exponent)


def matched_scale(config, lc: LengthConfig, lengths: np.ndarray, exponent: float) -> float:
    """The scale at which rule_config costs lc's mean MACs on these lengths (bisection)."""
    target, mean_length = mean_gmacs(config, lc, lengths), float(np.mean(lengths))
    low, high = 0.2, 2.0
    for _ in range(40):
        mid = (low + high) / 2
        if mean_gmacs(config, rule_config(lc, exponent, mean_length, mid), lengths) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--configs", default=CONFIGS, help="';'-separated ratio configurations")
    p.add_argument("--exponents", default="1,0.75,0.5", help="exponents b, ','-separated (1: the configuration)")
    p.add_argument("--test", default="2400:1500", help="held-out questions to score, OFFSET:COUNT")
    p.add_argument("--runtime", default="torch", help="torch (PyTorch fp32, default), onnx or onnx-int8")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    predictor, tokenizer, config = load_predictor(model_dir, args.runtime)
    configs = [lc for lc in configs_to_score(model_dir, args.configs, config) if lc is not None]
    exponents = [1.0] + [b for b in (float(v) for v in args.exponents.split(",")) if b != 1]  # b = 1 first
    examples, _ = heldout_questions(config, *parse_slice(args.test, "--test"))
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    lengths = np.array([len(f) for f in features])
    full = mean_gmacs(config, None, lengths)
    print(f"{len(examples)} held-out questions ({args.test}), {len(features)} windows of {lengths.mean():.1f} tokens "
          f"({lengths.min()}-{lengths.max()}); runtime {args.runtime}\n")
    print("| length config | exponent b | as run | fewer MACs | F1 | difference to b = 1 (± s.e.) |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for lc in configs:
        base = None
        for b in exponents:
            rule = rule_config(lc, b, float(lengths.mean()), 1.0 if b == 1 else matched_scale(config, lc, lengths, b))
            r = evaluate(predictor, tokenizer, examples, rule, args.batch_size, features=features, progress=False)
            per_question = question_f1(examples, r.answers)
            diff = "" if base is None else (f"{(per_question - base).mean():+.2f} ± "
                                            f"{(per_question - base).std(ddof=1) / np.sqrt(len(base)):.2f}")
            base = per_question if base is None else base
            shown = LengthConfig(tuple(round(v, 3) for v in rule.values), "ratio", b)
            print(f"| {lc} | {b:g} | {shown} | {full / mean_gmacs(config, rule, lengths):.2f}x | {r.f1:.2f} | {diff} |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
