"""Does the answer survive the token drops? Per layer, how often the gold answer's tokens are still kept, and how
often the predicted span is the gold one when the answer survived and when it was dropped.

    python benchmarks/answer_survival.py [--model DIR] [--configs "1,1,0.94,0.54,0.35,0.12;..."] [--limit 1000]
                                         [--offset 2400] [--ranking learned]

A cheap configuration can lose F1 two ways: its ranking drops the answer's tokens, which then get their span
logits from an early layer's state (drop-and-restore), or it keeps them but their states, computed over less
context, point elsewhere. This tells the two apart. Held-out TRAIN questions (the search's split, from --offset,
never the dev set), windows that contain the answer, PyTorch fp32, the model's own ranking unless --ranking.
"Survived after layer l": the answer's first and last tokens are both among the tokens layer l ran on. "Span
hit": the best span (start <= end, at most 30 tokens, in the context) is exactly the gold token span.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from quala.budget import configs_to_score
from quala.config import LengthConfig, default_model_dir, exit_status
from quala.data import collate, make_features
from quala.flops import mean_gmacs
from quala.modeling import QualaForQuestionAnswering
from quala.search import heldout_questions
from quala.tokenizer import load_tokenizer

MAX_ANSWER_TOKENS = 30


def kept_tokens(model: QualaForQuestionAnswering, batch: dict, lc: LengthConfig | None, ranking: str | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, layers, N) bool: the window positions each layer ran on (a skipped layer: those of the layer before);
    and the start and end logits (B, N)."""
    ids, mask, types = (torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    b, n = ids.shape
    state = {"rows": torch.arange(n).expand(b, n), "kept": mask.bool()}
    per_layer: dict[int, torch.Tensor] = {}

    def follow(index: int):
        def hook(layer, inputs, output) -> None:  # compose the layer's kept slots into window positions
            _, valid, slots, _ = output
            rows = state["rows"] if slots is None else state["rows"].gather(1, slots)
            kept = torch.zeros(b, n + 1, dtype=torch.bool)
            kept.scatter_(1, torch.where(valid, rows, n), True)
            state["rows"], state["kept"] = rows, kept[:, :n]
            per_layer[index] = state["kept"]
        return hook

    hooks = [layer.register_forward_hook(follow(i)) for i, layer in enumerate(model.layers)]
    try:
        with torch.inference_mode():
            out = model(ids, mask, types, lc, ranking=ranking)
    finally:
        for h in hooks:
            h.remove()
    layers, last = [], mask.bool()
    for i in range(len(model.layers)):
        last = per_layer.get(i, last)
        layers.append(last)
    return torch.stack(layers, 1).numpy(), out.start_logits.numpy(), out.end_logits.numpy()


def best_span(start: np.ndarray, end: np.ndarray, context: np.ndarray) -> tuple[int, int]:
    """The highest start + end logit over context spans of at most MAX_ANSWER_TOKENS tokens."""
    s = np.where(context, start, -np.inf)
    e = np.where(context, end, -np.inf)
    total = s[:, None] + e[None, :]
    i, j = np.indices(total.shape)
    total[(j < i) | (j - i >= MAX_ANSWER_TOKENS)] = -np.inf
    k = int(np.argmax(total))
    return k // total.shape[1], k % total.shape[1]


def survival(model, features: list, lc: LengthConfig | None, ranking: str | None, batch_size: int) -> dict:
    layers = len(model.layers)
    survived = np.zeros(layers)
    hits = {True: [0, 0], False: [0, 0]}  # survived the last layer -> [span hits, windows]
    for at in range(0, len(features), batch_size):
        chunk = features[at: at + batch_size]
        batch = collate(chunk)
        kept, start, end = kept_tokens(model, batch, lc, ranking)
        for f, k, s, e in zip(chunk, kept, start, end):
            both = k[:, f.start_position] & k[:, f.end_position]
            survived += both
            context = np.zeros(len(s), dtype=bool)
            context[: len(f)] = f.offsets[:, 0] >= 0
            hit = best_span(s, e, context) == (f.start_position, f.end_position)
            hits[bool(both[-1])][0] += hit
            hits[bool(both[-1])][1] += 1
    n = len(features)
    rate = lambda h: 100 * h[0] / h[1] if h[1] else float("nan")  # noqa: E731
    return {"survived": list(100 * survived / n), "hit_survived": rate(hits[True]), "hit_dropped": rate(hits[False]),
            "hit": 100 * (hits[True][0] + hits[False][0]) / n, "dropped_share": 100 * hits[False][1] / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--configs", default=None,
                   help="';'-separated length configurations (default: full and the front's named points)")
    p.add_argument("--limit", type=int, default=1000, help="held-out questions (default 1000)")
    p.add_argument("--offset", type=int, default=2400,
                   help="first held-out question (default 2400: after the search's and the confirmation's)")
    p.add_argument("--ranking", default=None, help="a ranking of quala.modeling.RANKINGS (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    model = QualaForQuestionAnswering.from_pretrained(model_dir).eval()
    config = model.config
    configs = configs_to_score(model_dir, args.configs, config)
    examples, _ = heldout_questions(config, args.offset, args.limit)
    features = [f for f in make_features(examples, load_tokenizer(model_dir), config.max_seq_length,
                                         config.doc_stride, config.max_query_length, training=True)
                if f.start_position > 0]
    lengths = [len(f) for f in features]
    full = mean_gmacs(config, None, lengths)
    head = ("| length config | fewer MACs | " + " | ".join(f"after layer {i + 1}" for i in range(len(model.layers)))
            + " | span hit | hit, answer kept to the end | hit, answer dropped | dropped |")
    print(f"{len(features)} held-out windows holding their answer ({len(examples)} questions from {args.offset}); "
          f"ranking {args.ranking or config.ranking}; % of windows\n")
    print(head + "\n|" + " --- |" + " ---: |" * (head.count("|") - 2))
    for lc in configs:
        r = survival(model, features, lc, args.ranking, args.batch_size)
        print(f"| {lc or 'full'} | {full / mean_gmacs(config, lc, lengths):.2f}x | "
              + " | ".join(f"{v:.1f}" for v in r["survived"])
              + f" | {r['hit']:.1f} | {r['hit_survived']:.1f} | {r['hit_dropped']:.1f} | {r['dropped_share']:.1f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
