"""Each op in quala.onnx_ops: one ONNX node when exported, the same values as eager PyTorch."""
import numpy as np
import onnx
import onnxruntime as ort
import torch

from quala import onnx_ops
from quala.export import export_onnx
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import tiny_config


class Ops(torch.nn.Module):
    def forward(self, x, slots, rows, scores, k):
        y = onnx_ops.reshape(x, (0, -1, 4, 2))  # (B, N, 8) -> (B, N, 4, 2)
        picked = onnx_ops.gather_rows(x, slots)
        flat = onnx_ops.scatter_rows(onnx_ops.reshape(x, (-1, 8)), rows, picked * 10)
        return y, picked, flat, onnx_ops.top_slots(scores, k)


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    slots = torch.tensor([[3, 1], [0, 4]])
    rows = torch.tensor([[3, 1], [5, 9]])  # unique rows of the flattened (10, 8)
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0, 0.1], [1.0, 1.0, 1.0, 3.0, 0.0]])  # ties: lower position first
    return x, slots, rows, scores, torch.tensor(3)


def test_ops_export_one_node_each_and_match_eager(tmp_path):
    path = tmp_path / "ops.onnx"
    with torch.no_grad():
        torch.onnx.export(Ops(), inputs(), str(path), dynamo=False, opset_version=17,
                          input_names=["x", "slots", "rows", "scores", "k"],
                          dynamic_axes={"x": {0: "b", 1: "n"}, "slots": {0: "b", 1: "s"}, "rows": {0: "b", 1: "s"},
                                        "scores": {0: "b", 1: "n"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type not in ("Constant", "Unsqueeze")]
    # the Mul is the test's own `* 10`; TopK takes k as a 1-element tensor (the last Reshape)
    assert sorted(ops) == sorted(["Reshape", "GatherND", "Mul", "Reshape", "ScatterND", "Reshape", "TopK"])
    feed = {name: t.numpy() for name, t in zip(["x", "slots", "rows", "scores", "k"], inputs())}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    want = Ops()(*inputs())
    for g, w in zip(got, want):
        assert np.array_equal(g, w.numpy())
    assert want[3].tolist() == [[1, 2, 0], [3, 0, 1]]


def test_exported_model_has_little_shape_bookkeeping(tmp_path):
    """This 3-layer graph had 590 nodes, 127 of them Shape/Concat/ConstantOfShape/Expand; 261 and 15 once trimmed.
    With layer skips (a Slice/Concat pass-through per layer) 327 and 26: opt-in, as it costs time."""
    model = QualaForQuestionAnswering(tiny_config(num_hidden_layers=3)).eval()
    for skips, most, most_shape in ((False, 300, 18), (True, 340, 26)):
        graph = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", layer_skips=skips))).graph
        nodes = [n for n in graph.node if n.op_type not in ("Constant", "Identity")]
        shape_ops = [n for n in nodes if n.op_type in ("Shape", "Concat", "ConstantOfShape", "Expand")]
        assert len(nodes) <= most, (skips, len(nodes))
        assert len(shape_ops) <= most_shape, [n.name for n in shape_ops]
