"""Width as a third axis: does removing attention heads cost less F1 than dropping tokens, at equal MACs? A screen,
zero-shot on the model's weights.

    python benchmarks/head_pruning.py [--model DIR] [--configs "full;1,0.99,0.8,0.54,0.35,0.12;..."]
        [--prune 0,6,12,18] [--fit 400:1000] [--test 2400:1500]

A head's share of a layer is its query, key, value and output projections and its attention products
(quala.flops prices them per head as a twelfth of the layer's attention when there are 12 heads); the feed-forward
block does not shrink. Heads are ranked by Michel et al.'s importance (NeurIPS 2019, "Are Sixteen Heads Really
Better than One?"): the mean |dL/dg| of a gate g on each head's attention probabilities, L the span cross-entropy,
over the --fit slice of held-out training questions at every --configs configuration, normalised per layer. The
least important are removed first (their probabilities zeroed: no context and no share of the attention the
scorers read, as a smaller model computes), at least one head left per layer. F1 on the --test slice, never the
dev set; PyTorch fp32. Compare a pruned row with the unpruned configuration of about the same MACs.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from quala import modeling
from quala.budget import configs_to_score
from quala.config import default_model_dir, exit_status
from quala.data import collate, length_grouped_batches, make_features
from quala.evaluate import TorchPredictor, evaluate
from quala.flops import GIGA, layer_tokens
from quala.modeling import QualaForQuestionAnswering
from quala.search import heldout_questions, parse_slice
from quala.tokenizer import load_tokenizer

CONFIGS = "full;1,0.99,0.8,0.54,0.35,0.12;0.92,0.53,0.53,0.44,0.19,0.19"


@contextmanager
def gated_heads(model: QualaForQuestionAnswering, gates: torch.Tensor):
    """Every layer's attention probabilities scaled per head by gates (layers, heads), for the duration."""
    attend = modeling.Layer.attend
    index = {id(layer): i for i, layer in enumerate(model.layers)}

    def gated(self, x, valid, probs_needed=True):
        h = self.attn_out.in_features
        d = h // self.heads
        q, k, v = (p.reshape(p.shape[0], -1, self.heads, d).transpose(1, 2) for p in self.project_qkv(x))
        probs = modeling.mask_scores(q @ k.transpose(-1, -2) / d ** 0.5, valid).softmax(-1)
        probs = probs * gates[index[id(self)]][None, :, None, None]
        return probs, (probs @ v).transpose(1, 2).reshape(x.shape[0], -1, h)

    modeling.Layer.attend = gated
    try:
        yield
    finally:
        modeling.Layer.attend = attend


def importance(model, features: list, configs: list, batch_size: int) -> torch.Tensor:
    """(layers, heads) mean |dL/dg| over the windows and configurations, each layer scaled to unit L2 norm."""
    c = model.config
    gates = torch.ones(c.num_hidden_layers, c.num_attention_heads, requires_grad=True)
    total = torch.zeros_like(gates)
    with gated_heads(model, gates):
        for lc in configs:
            for idx in length_grouped_batches([len(f) for f in features], batch_size):
                batch = {k: torch.as_tensor(v) for k, v in collate([features[i] for i in idx]).items()}
                out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], lc)
                context = batch["context"]
                heads = ((out.start_logits, "start_positions"), (out.end_logits, "end_positions"))
                loss = sum(F.cross_entropy(logits.masked_fill(~context, -torch.inf), batch[gold])
                           for logits, gold in heads)
                grad, = torch.autograd.grad(loss, gates)
                total += grad.abs()
    return total / total.norm(dim=1, keepdim=True)


def pruned_gates(scores: torch.Tensor, count: int) -> torch.Tensor:
    """1 for kept heads, 0 for the `count` least important, never a layer's last head."""
    gates = torch.ones_like(scores)
    for flat in scores.flatten().argsort().tolist():
        if count == 0:
            break
        layer, head = divmod(flat, scores.shape[1])
        if gates[layer].sum() > 1:
            gates[layer, head] = 0
            count -= 1
    return gates


def pruned_gmacs(config, lc, lengths: list[int], heads: list[int]) -> float:
    """quala.flops' MACs with each layer's attention (projections and products) priced for its heads only."""
    h, i, total = config.hidden_size, config.intermediate_size, 0
    for n in lengths:
        for (m, k), a in zip(layer_tokens(lc, n, config.num_hidden_layers), heads):
            attention = 3 * m * h * h + 2 * m * m * h + k * h * h
            total += attention * a / config.num_attention_heads + 2 * k * h * i
        total += n * h * 2
    return total / len(lengths) / GIGA


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--configs", default=CONFIGS, help=f"';'-separated length configurations (default {CONFIGS!r})")
    p.add_argument("--reference", default="",
                   help="';'-separated configurations scored unpruned only, to compare at equal MACs")
    p.add_argument("--prune", default="0,6,12,18", help="heads removed, ','-separated counts (default 0,6,12,18)")
    p.add_argument("--fit", default="400:1000", help="held-out questions for the importance, OFFSET:COUNT")
    p.add_argument("--test", default="2400:1500", help="held-out questions to score, OFFSET:COUNT")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    model = QualaForQuestionAnswering.from_pretrained(model_dir).eval().requires_grad_(False)
    config = model.config
    configs = configs_to_score(model_dir, args.configs, config)
    reference = configs_to_score(model_dir, args.reference, config) if args.reference else []
    counts = [int(v) for v in args.prune.split(",")]
    tokenizer = load_tokenizer(model_dir)
    settings = (config.max_seq_length, config.doc_stride, config.max_query_length)
    fit_examples, _ = heldout_questions(config, *parse_slice(args.fit, "--fit"))
    fit_features = [f for f in make_features(fit_examples, tokenizer, *settings, training=True) if f.start_position > 0]
    scores = importance(model, fit_features, configs, args.batch_size)
    print(f"head importance from {len(fit_features)} answer windows ({args.fit}), per layer (heads by rank):")
    for layer, row in enumerate(scores):
        print(f"  layer {layer}: " + " ".join(f"{v:.2f}" for v in row.sort(descending=True).values))
    examples, _ = heldout_questions(config, *parse_slice(args.test, "--test"))
    features = make_features(examples, tokenizer, *settings)
    lengths = [len(f) for f in features]
    heads = config.num_attention_heads
    full = pruned_gmacs(config, None, lengths, [heads] * config.num_hidden_layers)
    print(f"\n{len(examples)} held-out questions ({args.test}), {len(features)} windows; PyTorch fp32\n")
    print("| length config | heads removed | heads per layer | fewer MACs | F1 |")
    print("| --- | ---: | --- | ---: | ---: |")
    rows = [(lc, n) for lc in configs for n in counts] + [(lc, 0) for lc in reference]
    for lc, n in rows:
        gates = pruned_gates(scores, n)
        kept = [int(v) for v in gates.sum(1).tolist()]
        with torch.no_grad(), gated_heads(model, gates):
            f1 = evaluate(TorchPredictor(model), tokenizer, examples, lc, 32, features=features, progress=False).f1
        print(f"| {lc or 'full'} | {n} | {','.join(map(str, kept))} | "
              f"{full / pruned_gmacs(config, lc, lengths, kept):.2f}x | {f1:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
