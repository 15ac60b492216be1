"""Do span logits need calibrating by how many layers each token ran? A screen, zero-shot on the model's weights.

    python benchmarks/exit_calibration.py [--model DIR] [--configs "1,0.99,0.8,0.54,0.35,0.12;..."]
        [--fit 400:2000] [--test 2400:2813]

Drop-and-restore gives a token dropped after layer d the span logits of layer d's state. In a cheap configuration
most answers come from such states (benchmarks/answer_survival.py: at 2x, 92% of the answers are dropped before
the last layer), and they compete with the tokens that ran every layer through one linear head that never knew
how deep each state is. The candidate: per depth d (layers run, 0..L-1) a scale and a bias on the start and the
end logits, logit * exp(s[d]) + b[d]; depth L (every layer) stays as it is, so full length is unchanged. The
4 (L) values are fitted on the --fit slice of held-out training questions (their windows that hold the answer, the
configurations pooled, the span cross-entropy over context tokens) and scored on the --test slice, never the dev
set. PyTorch fp32. Output: F1 per configuration without and with the calibration, and the paired difference.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quala.budget import configs_to_score
from quala.config import default_model_dir, exit_status
from quala.data import collate, length_grouped_batches, make_features, postprocess
from quala.evaluate import question_f1
from quala.flops import mean_gmacs
from quala.modeling import QualaForQuestionAnswering
from quala.search import heldout_questions, parse_slice
from quala.tokenizer import load_tokenizer

CONFIGS = "1,0.99,0.8,0.54,0.35,0.12;0.99,0.98,0.6,0.6,0.21,0.18;0.92,0.53,0.53,0.44,0.19,0.19;0.48,0.48,0.4,0.24,0.05,0.05"


def load_answer_survival():
    """benchmarks/answer_survival.py, for its kept_tokens (the positions each layer ran on)."""
    spec = importlib.util.spec_from_file_location("answer_survival", Path(__file__).with_name("answer_survival.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kept_tokens = load_answer_survival().kept_tokens  # loaded once, not per configuration


def run_windows(model, features: list, lc, batch_size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per feature: start logits, end logits and depth (layers each token ran on), its real tokens only."""
    out: list = [None] * len(features)
    for idx in length_grouped_batches([len(f) for f in features], batch_size):
        kept, start, end = kept_tokens(model, collate([features[i] for i in idx]), lc, None)
        depth = kept.sum(1)
        for row, i in enumerate(idx):
            n = len(features[i])
            out[i] = start[row, :n], end[row, :n], depth[row, :n]
    return out


def calibrate(logits: np.ndarray, depth: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """logit * exp(scale[depth]) + bias[depth]; scale and bias hold layers + 1 values, the last 0."""
    return logits * np.exp(scale[depth]) + bias[depth]


def fit(windows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]], layers: int,
        l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(2, layers + 1) scales and biases (start, end) minimising the span cross-entropy of the gold start and end
    over each window's context tokens, depth `layers` held at (0, 0)."""
    n = max(len(w[0]) for w in windows)
    pad = lambda k, fill, dtype: torch.as_tensor(np.stack([np.pad(w[k], (0, n - len(w[k])), constant_values=fill)  # noqa: E731
                                                           for w in windows]), dtype=dtype)
    start, end = pad(0, 0.0, torch.float64), pad(1, 0.0, torch.float64)
    depth, context = pad(2, layers, torch.long), pad(3, False, torch.bool)
    gold = torch.tensor([[w[4], w[5]] for w in windows])
    free = torch.ones(2, layers + 1, dtype=torch.float64)
    free[:, layers] = 0
    params = torch.zeros(2, 2, layers + 1, dtype=torch.float64, requires_grad=True)  # (scale/bias, start/end, depth)
    opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        scale, bias = params[0] * free, params[1] * free
        total = 0
        for side, logits in enumerate((start, end)):
            z = logits * scale[side][depth].exp() + bias[side][depth]
            z = z.masked_fill(~context, -torch.inf)
            total = total + F.cross_entropy(z, gold[:, side])
        total = total + l2 * (params ** 2).sum()
        total.backward()
        return total

    opt.step(loss)
    with torch.no_grad():
        return (params[0] * free).numpy(), (params[1] * free).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--configs", default=CONFIGS, help="';'-separated length configurations to fit and score")
    p.add_argument("--fit", default="400:2000", help="held-out questions to fit on, OFFSET:COUNT (default 400:2000)")
    p.add_argument("--test", default="2400:2813", help="held-out questions to score, OFFSET:COUNT (default 2400:2813)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    model = QualaForQuestionAnswering.from_pretrained(model_dir).eval()
    config, layers = model.config, model.config.num_hidden_layers
    configs = [lc for lc in configs_to_score(model_dir, args.configs, config) if lc is not None]
    tokenizer = load_tokenizer(model_dir)
    settings = (config.max_seq_length, config.doc_stride, config.max_query_length)
    fit_examples, _ = heldout_questions(config, *parse_slice(args.fit, "--fit"))
    fit_features = [f for f in make_features(fit_examples, tokenizer, *settings, training=True) if f.start_position > 0]
    rows = []
    for lc in configs:
        for f, (s, e, d) in zip(fit_features, run_windows(model, fit_features, lc, args.batch_size)):
            rows.append((s, e, d, f.offsets[:, 0] >= 0, f.start_position, f.end_position))
    scale, bias = fit(rows, layers)
    print(f"fitted on {len(fit_features)} answer windows x {len(configs)} configurations ({args.fit}); "
          "per depth 0..L, start / end:")
    print("scale exp(s): " + " / ".join(" ".join(f"{v:.3f}" for v in np.exp(s)) for s in scale))
    print("bias b:       " + " / ".join(" ".join(f"{v:+.3f}" for v in b) for b in bias) + "\n")
    examples, _ = heldout_questions(config, *parse_slice(args.test, "--test"))
    features = make_features(examples, tokenizer, *settings)
    lengths = [len(f) for f in features]
    full = mean_gmacs(config, None, lengths)
    print(f"scored on {len(examples)} held-out questions ({args.test}), {len(features)} windows; PyTorch fp32; F1\n")
    print("| length config | fewer MACs | as trained | calibrated by depth | difference (± s.e.) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for lc in configs:
        out = run_windows(model, features, lc, args.batch_size)
        plain = question_f1(examples, postprocess(examples, features, [o[0] for o in out], [o[1] for o in out]))
        tuned = question_f1(examples, postprocess(examples, features,
                                                  [calibrate(s, d, scale[0], bias[0]) for s, _, d in out],
                                                  [calibrate(e, d, scale[1], bias[1]) for _, e, d in out]))
        diff = tuned - plain
        print(f"| {lc} | {full / mean_gmacs(config, lc, lengths):.2f}x | {plain.mean():.2f} | {tuned.mean():.2f} | "
              f"{diff.mean():+.2f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
