"""ONNX export: one graph, the length configuration as a runtime input, parity with eager PyTorch."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quala.cli import main
from quala.config import LengthConfig
from quala.export import INPUTS, OUTPUTS, export_onnx, token_counts
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import tiny_config
from tests.test_modeling import batch

CONFIGS = [None, LengthConfig((0.8, 0.5, 0.25)), LengthConfig((1.0, 0.3, 0.1)), LengthConfig((0.5, 0.5, 0.5)),
           LengthConfig((30, 20, 5), "tokens"), LengthConfig((100, 100, 1), "tokens")]


@pytest.fixture(scope="module")
def peaky_model():
    """Random weights with sharp attention: significance scores far apart, so float noise cannot reorder them."""
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    for layer in model.layers:
        torch.nn.init.normal_(layer.query.weight, std=0.3)
        torch.nn.init.normal_(layer.key.weight, std=0.3)
    return model


@pytest.fixture(scope="module")
def session(peaky_model, tmp_path_factory):
    path = export_onnx(peaky_model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(session, ids, mask, types, lc):
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy(),
            "token_counts": token_counts(mask, 3, lc).numpy()}
    return session.run(None, feed)


@pytest.mark.parametrize("lc", CONFIGS, ids=str)
@pytest.mark.parametrize("length", [40, 77])
def test_onnx_runtime_matches_pytorch(session, peaky_model, lc, length):
    ids, mask, types = batch(4, length, seed=length)  # rows 1-3 are padded
    with torch.no_grad():
        ref = peaky_model(ids, mask, types, lc)
    start, end, kept = run(session, ids, mask, types, lc)
    real = mask.bool().numpy()
    assert np.abs(start - ref.start_logits.numpy())[real].max() < 1e-4
    assert np.abs(end - ref.end_logits.numpy())[real].max() < 1e-4
    assert np.array_equal(kept, ref.kept.numpy())


def test_one_graph_with_runtime_sizes(session):
    assert [i.name for i in session.get_inputs()] == list(INPUTS)
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    ids, mask, types = batch(2, 50)
    _, _, full = run(session, ids, mask, types, None)
    _, _, small = run(session, ids, mask, types, LengthConfig((0.6, 0.4, 0.2)))
    assert full[0].tolist() == [50, 50, 50] and small[0].tolist() == [30, 20, 10]


def test_export_command_leaves_the_model_in_eval_mode(tiny_model_dir, tmp_path, peaky_model):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tiny_model_dir), "--output", str(out)]) == 0
    graph = onnx.load(str(out)).graph
    assert {n.op_type for n in graph.node} >= {"TopK", "Gather", "ScatterND"}
    export_onnx(peaky_model, tmp_path / "again.onnx")
    assert not peaky_model.training and not any(m.training for m in peaky_model.modules())


def reference_attention_received(model, ids, mask, types) -> np.ndarray:
    """Layer 0's attention received by each token, summed over heads and real queries: float64 numpy, written out
    from the weights (an independent check of the ranking, whatever the graph computes)."""
    layer, heads = model.layers[0], model.config.num_attention_heads
    with torch.no_grad():
        x = model.embed(ids, types).double().numpy()
    w = {name: tuple(p.detach().double().numpy() for p in (getattr(layer, name).weight, getattr(layer, name).bias))
         for name in ("query", "key")}
    b, n, h = x.shape
    d = h // heads
    q, k = ((x @ w[name][0].T + w[name][1]).reshape(b, n, heads, d).transpose(0, 2, 1, 3) for name in ("query", "key"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    real = mask.numpy().astype(bool)
    scores = np.where(real[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs * real[:, None, :, None]).sum(axis=(1, 2))


def test_onnx_graph_keeps_the_most_attended_tokens(session, peaky_model):
    """Which tokens layer 0 kept, read from the graph's output: a token dropped at layer 0 keeps its embedding, so its
    logits are the span head applied to the embedding output. The kept ones must be [CLS] and the most attended."""
    ids, mask, types = batch(4, 40, seed=3)
    lc = LengthConfig((0.4, 0.4, 0.4))
    start, _, kept = run(session, ids, mask, types, lc)
    with torch.no_grad():
        untouched = peaky_model.qa_outputs(peaky_model.embed(ids, types))[..., 0].numpy()
        eager = peaky_model(ids, mask, types, lc).start_logits.numpy()
    received = reference_attention_received(peaky_model, ids, mask, types)
    for row, length in enumerate(mask.sum(1).tolist()):
        k = int(kept[row, 0])
        for logits in (start, eager):
            changed = np.abs(logits[row, :length] - untouched[row, :length]) > 1e-4
            ranked = 1 + np.argsort(-received[row, 1:length], kind="stable")
            assert set(np.nonzero(changed)[0]) == {0, *ranked[: k - 1].tolist()}, row
        gap = np.sort(received[row, 1:length])[::-1]
        assert gap[k - 2] - gap[k - 1] > 1e-3  # a clear margin: float noise cannot decide it


def test_export_of_a_model_in_training_mode_is_deterministic_and_leaves_it_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).train()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert not model.training and not any(m.training for m in model.modules())
    assert "Dropout" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask, types = batch(2, 30)
    first, second = run(s, ids, mask, types, None)[0], run(s, ids, mask, types, None)[0]
    with torch.no_grad():
        eager = model(ids, mask, types).start_logits.numpy()
    assert np.array_equal(first, second) and np.abs(first - eager)[mask.bool().numpy()].max() < 1e-5


SKIP_CONFIGS = [LengthConfig((1.0, 0.0, 0.5)), LengthConfig((0.0, 0.6, 0.3)), LengthConfig((0.7, 0.4, 0.0)),
                LengthConfig((0, 30, 5), "tokens")]


@pytest.fixture(scope="module")
def skips_session(peaky_model, tmp_path_factory):
    path = export_onnx(peaky_model, tmp_path_factory.mktemp("onnx") / "skips.onnx", layer_skips=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("lc", SKIP_CONFIGS, ids=str)
def test_one_graph_skips_a_layer_as_eager_pytorch_does(skips_session, peaky_model, lc):
    ids, mask, types = batch(4, 60, seed=3)
    with torch.no_grad():
        ref = peaky_model(ids, mask, types, lc)
    start, end, kept = run(skips_session, ids, mask, types, lc)
    real = mask.bool().numpy()
    assert np.abs(start - ref.start_logits.numpy())[real].max() < 1e-4
    assert np.abs(end - ref.end_logits.numpy())[real].max() < 1e-4
    assert np.array_equal(kept, ref.kept.numpy()) and (kept[:, list(lc.skipped)] == 0).all()


@pytest.mark.parametrize("ranking", ["question", "cls"])
def test_question_aware_rankings_export_with_token_counts(peaky_model, tmp_path, ranking):
    path = export_onnx(peaky_model, tmp_path / f"{ranking}.onnx", ranking=ranking, layer_skips=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask, types = batch(4, 50, seed=5)
    types[:, 12:] = 1
    for lc in (LengthConfig((0.8, 0.5, 0.25)), LengthConfig((1.0, 0.0, 0.4))):
        with torch.no_grad():
            ref = peaky_model(ids, mask, types, lc, ranking=ranking)
            other = peaky_model(ids, mask, types, lc)
        start, _, kept = run(session, ids, mask, types, lc)
        real = mask.bool().numpy()
        assert np.abs(start - ref.start_logits.numpy())[real].max() < 1e-4
        assert np.array_equal(kept, ref.kept.numpy())
        assert np.abs(start - other.start_logits.numpy())[real].max() > 1e-3  # a different ranking, baked in


def test_position_ranking_is_not_exported(peaky_model, tmp_path):
    from quala.config import QualaError
    with pytest.raises(QualaError, match="the graph can rank by attention, question, cls"):
        export_onnx(peaky_model, tmp_path / "p.onnx", ranking="position")


@pytest.mark.parametrize("lc", CONFIGS[1:3], ids=str)
def test_the_skip_graph_matches_the_lean_one_without_skips(session, skips_session, lc):
    ids, mask, types = batch(4, 60, seed=4)
    lean, skips = run(session, ids, mask, types, lc), run(skips_session, ids, mask, types, lc)
    real = mask.bool().numpy()
    assert np.abs(lean[0] - skips[0])[real].max() < 1e-5 and np.array_equal(lean[2], skips[2])


def test_runtime_refuses_a_skip_on_a_graph_exported_without_skips(tiny_model_dir, tmp_path):
    """Metadata says whether a graph can skip a layer; it survives quantization; a lean graph refuses a 0."""
    import shutil
    from quala.config import QualaError
    from quala.quantize import quantize_model
    from quala.runtime import load_predictor
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    assert main(["export", "--model", str(d), "--layer-skips"]) == 0
    int8 = quantize_model(d)
    predictor, _, _ = load_predictor(d, "onnx-int8")
    assert predictor.path == int8 and predictor.layer_skips
    assert load_predictor(d, "onnx")[0].layer_skips
    export_onnx(QualaForQuestionAnswering.from_pretrained(d), d / "model.onnx")
    lean = load_predictor(d, "onnx")[0]
    ids, mask, types = batch(2, 30)
    b = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    assert not lean.layer_skips and lean(b, LengthConfig((1.0, 0.5, 0.3)))[0].shape == (2, 30)
    with pytest.raises(QualaError, match="exported without layer skips: export it again with `quala export "
                                         "--layer-skips`"):
        lean(b, LengthConfig((1.0, 0.0, 0.3)))


@pytest.mark.parametrize("layer_skips", [False, True])
def test_question_last_layer_is_baked_into_the_graph(tiny_model_dir, tmp_path, capsys, layer_skips):
    """`quala export --question-last-layer L`: the graph ranks the question last from layer L as eager PyTorch does,
    says so in its metadata and in DIR/config.json; a layer the model does not have changes nothing."""
    import json
    import shutil
    from quala.runtime import load_predictor
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    args = ["export", "--model", str(d)] + (["--layer-skips"] if layer_skips else [])
    assert main(args + ["--question-last-layer", "1"]) == 0
    model = QualaForQuestionAnswering.from_pretrained(d)
    assert model.config.question_last_layer == 1
    predictor = load_predictor(d, "onnx")[0]
    assert predictor.question_last_layer == 1
    ids, mask, types = batch(4, 50, seed=5)
    b = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    real = mask.bool().numpy()
    for lc in (LengthConfig((0.8, 0.5, 0.25)), LengthConfig((1.0, 0.3, 0.2))):
        with torch.no_grad():
            ref = model(ids, mask, types, lc)
            model.config.question_last_layer = None
            other = model(ids, mask, types, lc)
            model.config.question_last_layer = 1
        start, _, kept = predictor(b, lc)
        assert np.abs(start - ref.start_logits.numpy())[real].max() < 1e-4
        assert np.array_equal(kept, ref.kept.numpy())
        assert np.abs(start - other.start_logits.numpy())[real].max() > 1e-3  # the question did rank last
    before = (d / "config.json").read_text()
    with pytest.raises(SystemExit):
        main(["export", "--model", str(d), "--question-last-layer", "x"])
    assert main(["export", "--model", str(d), "--question-last-layer", "3"]) == 2
    assert "question_last_layer 3: a layer 0..2 or null" in capsys.readouterr().err
    assert (d / "config.json").read_text() == before
    assert main(["export", "--model", str(d), "--question-last-layer", "none"]) == 0
    assert json.loads((d / "config.json").read_text())["quala"]["question_last_layer"] is None
    assert load_predictor(d, "onnx")[0].question_last_layer is None
