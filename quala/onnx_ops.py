"""Tensor operations that export as one ONNX node each.

The TorchScript exporter turns every shape read (`x.shape[0]`) into Shape -> Gather -> Unsqueeze -> Concat chains,
and an `index_put` into a dozen nodes; ONNX Runtime cannot fuse them away when sequence lengths change from layer to
layer, and in the length-adaptive graph they were ~600 of its ~850 nodes (15% of the batch-1 time). Each function here
runs plain PyTorch in eager mode (training, evaluation) and, while exporting, emits its one ONNX operator
(`symbolic`), with the same result.
"""
from __future__ import annotations

import torch


def _const(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _onnx_shape(x: torch.Tensor, shape: tuple[int, ...]) -> list[int]:
    return [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]


class _Reshape(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shape):
        return x.reshape(_onnx_shape(x, shape))

    @staticmethod
    def symbolic(g, x, shape):
        return g.op("Reshape", x, _const(g, list(shape)))


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slots):
        return _gather_rows(x, slots)

    @staticmethod
    def symbolic(g, x, slots):
        return g.op("GatherND", x, g.op("Unsqueeze", slots, _const(g, [-1])), batch_dims_i=1)


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, rows, updates):
        return _scatter_rows(flat, rows, updates)

    @staticmethod
    def symbolic(g, flat, rows, updates):
        return g.op("ScatterND", flat, g.op("Unsqueeze", rows, _const(g, [-1])), updates)


class _TopSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k):
        return _top_slots(scores, k)

    @staticmethod
    def symbolic(g, scores, k):
        k = g.op("Reshape", k, _const(g, [1]))
        return g.op("TopK", scores, k, axis_i=1, largest_i=1, sorted_i=1, outputs=2)[1]


class _SliceSlots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m, before):
        return x[:, : int(m)] if before else x[:, int(m):]

    @staticmethod
    def symbolic(g, x, m, before):
        m = g.op("Reshape", m, _const(g, [1]))
        start, end = (_const(g, [0]), m) if before else (m, _const(g, [2 ** 62]))
        return g.op("Slice", x, start, end, _const(g, [1]))


def exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


def reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Reshape with ONNX semantics: 0 copies the input's size there, one -1 is inferred (at most one -1, and the
    exporter needs one whenever a 0 is used)."""
    return _Reshape.apply(x, tuple(shape)) if exporting() else x.reshape(_onnx_shape(x, shape))


def gather_rows(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """x (B, N, H) at slots (B, k) -> (B, k, H), as whole-row copies (ONNX GatherND with batch_dims=1)."""
    return _GatherRows.apply(x, slots) if exporting() else _gather_rows(x, slots)


def _gather_rows(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    b, n, h = x.shape
    rows = torch.arange(b, device=x.device)[:, None] * n + slots
    return x.reshape(b * n, h)[rows]


def scatter_rows(flat: torch.Tensor, rows: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """A copy of flat (M, H) with flat[rows[i, j]] = updates[i, j] (rows unique): one ONNX ScatterND."""
    return _ScatterRows.apply(flat, rows, updates) if exporting() else _scatter_rows(flat, rows, updates)


def _scatter_rows(flat: torch.Tensor, rows: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    return flat.index_put((rows,), updates)


def top_slots(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Positions (B, k) of the k highest scores per row, best first, ties broken by the lower position: the same
    tokens on every backend. Eager PyTorch uses a stable sort; ONNX TopK orders ties by the lower index too."""
    return _TopSlots.apply(scores, k) if exporting() else _top_slots(scores, k)


def _top_slots(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return scores.sort(dim=1, descending=True, stable=True).indices[:, : int(k)]


def slots_before(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x[:, :m] for a 0-d tensor m that is a runtime value in the graph (one ONNX Slice)."""
    return _SliceSlots.apply(x, m, True) if exporting() else x[:, : int(m)]


def slots_from(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x[:, m:] for a 0-d tensor m that is a runtime value in the graph (one ONNX Slice)."""
    return _SliceSlots.apply(x, m, False) if exporting() else x[:, int(m):]
