"""The cost model: multiply-accumulates (MACs) of one forward pass, per layer and length configuration.

What is counted, matching quala.modeling exactly (one feature of n real tokens, batch 1, no padding):
- layer l receives m_l tokens (n for layer 0, else the previous layer's kept count) and keeps k_l of them
  (LengthConfig.token_counts); its attention runs on the m_l tokens it receives: Q/K/V projections 3*m*h*h,
  scores Q K^T m*m*h and probs @ V m*m*h; its attention output projection k*h*h and feed-forward block 2*k*h*i
  run on the k_l kept tokens only;
- a layer skipped by a token count of 0 computes nothing; the next layer receives the tokens it was passed;
- the span head runs on all n restored tokens: n*h*2;
- embeddings are table lookups: 0 MACs. Bias additions, softmax, LayerNorm, GELU, the significance ranking and
  the gathers are not multiply-accumulates and are not counted (the usual convention; they are <1% of the work).

FLOPs in the sense of torch.utils.flop_counter are 2 * MACs. The Length-Adaptive Transformer paper's "35.3 GFLOPs"
for BERT-base at 384 tokens is this MAC count (35.33 G), i.e. it calls MACs FLOPs.
"""
from __future__ import annotations

import numpy as np

from quala.config import LengthConfig

GIGA = 1e9


def layer_tokens(length_config: LengthConfig | None, n: int, num_layers: int) -> list[tuple[int, int]]:
    """(tokens received, tokens kept) for each layer on an input of n real tokens; (0, 0) for a skipped layer."""
    if length_config is None:
        return [(n, n)] * num_layers
    return tokens_of_counts(n, length_config.token_counts(np.array([n]))[0].tolist())


def tokens_of_counts(n: int, counts: list[int]) -> list[tuple[int, int]]:
    """(tokens received, tokens kept) per layer from the kept counts (0: the layer is skipped, it passes on what
    it received)."""
    out, received = [], n
    for k in counts:
        out.append((received, k) if k else (0, 0))
        received = k or received
    return out


def layer_macs(config, received: int, kept: int) -> int:
    """MACs of one encoder layer of a ModelConfig (hidden h, intermediate i)."""
    h, i = config.hidden_size, config.intermediate_size
    attention = 3 * received * h * h + 2 * received * received * h
    return attention + kept * h * h + 2 * kept * h * i


def forward_macs(config, length_config: LengthConfig | None, n: int) -> int:
    """MACs of one forward pass over n real tokens; length_config None = full length."""
    layers = layer_tokens(length_config, n, config.num_hidden_layers)
    return sum(layer_macs(config, m, k) for m, k in layers) + n * config.hidden_size * 2


def mean_gmacs(config, length_config: LengthConfig | None, lengths: list[int] | np.ndarray) -> float:
    """GMACs per feature, averaged over features of the given real lengths (e.g. the SQuAD dev features)."""
    if len(lengths) == 0:
        return 0.0
    counts = np.bincount(np.asarray(lengths, dtype=np.int64))  # many features share a length: price each once
    total = sum(c * forward_macs(config, length_config, n) for n, c in enumerate(counts) if c)
    return float(total / len(lengths) / GIGA)


def speedup(config, length_config: LengthConfig | None, lengths: list[int] | np.ndarray) -> float:
    """How many times fewer MACs than the model's full length configuration."""
    return mean_gmacs(config, None, lengths) / mean_gmacs(config, length_config, lengths)


def dev_lengths(tokenizer, config, limit: int | None = None, dev_file: str = "") -> list[int]:
    """Real token counts of the SQuAD dev features (dev_file, default the shared dev set), windowed as the model
    windows them."""
    from quala.config import squad_path
    from quala.data import load_squad, make_features
    examples = load_squad(dev_file or squad_path("dev"), limit=limit)
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    return [len(f) for f in features]


def main(argv: list[str] | None = None) -> None:
    """Sanity values (BERT-base and MiniLM-L6 at 384 tokens); with --model, GMACs per SQuAD dev feature at their real
    lengths and padded to the window (as the original work timed them)."""
    import argparse
    from pathlib import Path

    from quala.files import read_json
    from quala.config import ModelConfig
    from quala.tokenizer import load_tokenizer
    p = argparse.ArgumentParser(prog="python -m quala.flops", description=main.__doc__)
    p.add_argument("--model", type=Path, default=None, help="model directory: price it on the SQuAD dev features")
    p.add_argument("--length-config", default=None, help="ratios or token counts (default: full length)")
    p.add_argument("--limit", type=int, default=None, help="first N dev questions only")
    args = p.parse_args(argv)
    bert_base = ModelConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    for name, c in (("BERT-base", bert_base), ("MiniLM-L6-H384", ModelConfig())):
        print(f"{name:15s} 384 tokens: {forward_macs(c, None, 384) / GIGA:.2f} GMACs "
              f"({2 * forward_macs(c, None, 384) / GIGA:.2f} GFLOPs as 2*MACs)")
    if args.model:
        config = ModelConfig.from_dict(read_json(args.model / "config.json"))
        lc = LengthConfig.parse(args.length_config)
        lengths = dev_lengths(load_tokenizer(args.model), config, args.limit)
        print(f"{args.model} [{lc or 'full'}] on {len(lengths)} dev features: {mean_gmacs(config, lc, lengths):.3f} "
              f"GMACs per feature, {speedup(config, lc, lengths):.2f}x fewer than full length")
        # the original work timed windows padded to max_seq_length: there a configuration's savings include padding
        padded = [config.max_seq_length] * len(lengths)
        print(f"real tokens per feature: mean {np.mean(lengths):.1f}, median {np.median(lengths):.0f}; padded to "
              f"{config.max_seq_length}: {mean_gmacs(config, lc, padded):.3f} GMACs per feature, "
              f"{speedup(config, lc, padded):.2f}x fewer than full length")


if __name__ == "__main__":
    main()
