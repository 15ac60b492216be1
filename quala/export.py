"""ONNX export: one graph for every length configuration.

The graph takes the tokens each layer keeps as a runtime input, `token_counts` (batch, layers), the output of
`LengthConfig.token_counts(seq_lens)`; full length is `token_counts = seq_lens` at every layer. Each layer's TopK is
sized by that input, so switching configuration never needs a new graph. Reshapes, row gathers and the restore
scatter export as single nodes (quala.onnx_ops), so the graph carries little shape bookkeeping.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from quala.config import LengthConfig, QualaError
from quala.files import atomic_write
from quala.modeling import QualaForQuestionAnswering
from quala.runtime import INPUTS, LAYER_SKIPS_KEY, QUESTION_LAST_KEY, RANKING_KEY

OUTPUTS = ("start_logits", "end_logits", "kept")
OPSET = 17
EXPORTABLE_RANKINGS = ("attention", "question", "cls", "learned")  # "position": a baseline, eager PyTorch only


class _Graph(nn.Module):
    """The model with explicit token counts and plain tuple outputs: what the exporter traces."""

    def __init__(self, model: QualaForQuestionAnswering, ranking: str):
        super().__init__()
        self.model, self.ranking = model, ranking

    def forward(self, input_ids, attention_mask, token_type_ids, token_counts):
        out = self.model(input_ids, attention_mask, token_type_ids, token_counts=token_counts, ranking=self.ranking)
        return out.start_logits, out.end_logits, out.kept


def full_counts(attention_mask: torch.Tensor, num_layers: int) -> torch.Tensor:
    """token_counts for full length: every layer keeps every real token."""
    return attention_mask.long().sum(1)[:, None].expand(-1, num_layers).contiguous()


def token_counts(attention_mask: torch.Tensor, num_layers: int, length_config: LengthConfig | None) -> torch.Tensor:
    if length_config is None:
        return full_counts(attention_mask, num_layers)
    return length_config.token_counts(attention_mask.long().sum(1))


def example_inputs(model: QualaForQuestionAnswering, batch: int = 2, length: int = 24) -> tuple[torch.Tensor, ...]:
    """A small padded batch with dropping at every layer, so the traced graph holds the dropping path."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(model.config.vocab_size, 20000), (batch, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1:, length - 5:] = 0
    ids[mask == 0] = model.config.pad_token_id
    types = torch.zeros_like(ids)
    types[:, length // 3:] = 1
    layers = model.config.num_hidden_layers
    counts = LengthConfig(tuple(1.0 - 0.5 * i / layers for i in range(layers))).token_counts(mask.sum(1))
    return ids, mask, types, counts


def export_onnx(model: QualaForQuestionAnswering, output: str | os.PathLike, ranking: str | None = None,
                layer_skips: bool = False) -> Path:
    """Write the model as ONNX (legacy TorchScript exporter, opset 17) with dynamic batch and sequence axes; the
    token ranking (quala.modeling.RANKINGS) is baked into the graph. layer_skips: the graph also runs length
    configurations with a 0 (a skipped layer), at 7-14% more time at full length; metadata LAYER_SKIPS_KEY says so.
    ranking None: the model config's; metadata RANKING_KEY names the one baked in (and QUESTION_LAST_KEY the config's
    question_last_layer, where set)."""
    ranking = ranking or model.config.ranking
    if ranking not in EXPORTABLE_RANKINGS:
        raise QualaError(f"ranking {ranking!r}: the graph can rank by {', '.join(EXPORTABLE_RANKINGS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    graph = _Graph(model, ranking).eval()  # the exporter restores the mode it finds: dropout stays off after it
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "token_type_ids": {0: "batch", 1: "sequence"}, "token_counts": {0: "batch"},
               "start_logits": {0: "batch", 1: "sequence"}, "end_logits": {0: "batch", 1: "sequence"},
               "kept": {0: "batch"}}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shapes used as values: expected here
            torch.onnx.export(graph, example_inputs(model), tmp, dynamo=False, opset_version=OPSET,
                              input_names=list(INPUTS), output_names=list(OUTPUTS), dynamic_axes=dynamic,
                              do_constant_folding=True)
        import onnx
        proto = onnx.load(tmp)
        last = model.config.question_last_layer
        onnx.helper.set_model_props(proto, {RANKING_KEY: ranking} | ({LAYER_SKIPS_KEY: "1"} if layer_skips else {})
                                    | ({} if last is None else {QUESTION_LAST_KEY: str(last)}))
        onnx.save(proto, tmp)

    model.graph_layer_skips = layer_skips
    try:
        atomic_write(output, write)
    finally:
        model.graph_layer_skips = False
    return output


def export_dir(model_dir: str | os.PathLike, output: str | os.PathLike | None = None, layer_skips: bool = False,
               ranking: str | None = None, overrides: dict | None = None) -> Path:
    """Export a model directory's PyTorch weights to DIR/model.onnx (or `output`); overrides: ModelConfig values
    to export with instead of config.json's (e.g. question_last_layer)."""
    model_dir = Path(model_dir)
    model = QualaForQuestionAnswering.from_pretrained(model_dir, **(overrides or {}))
    target = Path(output) if output else model_dir / "model.onnx"
    if target.suffix != ".onnx":
        raise QualaError(f"--output {target}: give a file name ending in .onnx")
    return export_onnx(model, target, ranking, layer_skips)
