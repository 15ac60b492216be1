"""benchmarks/op_profile.py on a tiny exported model: every int8 matmul counted once per profiled run (the warm-up
left out), every operator of the graph in a named group, kernel time within the wall time."""

from quala.config import LengthConfig
from quala.data import collate, length_grouped_batches, make_features
from tests.conftest import load_script

op_profile = load_script("benchmarks/op_profile.py")


def test_profile_counts_each_node_once_per_run(onnx_dir, dev_examples, tokenizer, tmp_path):
    from tests.conftest import tiny_config
    layers = tiny_config().num_hidden_layers
    features = make_features(dev_examples[:3], tokenizer, 128, 48)[:5]
    batches = [collate([features[i] for i in idx]) for idx in length_grouped_batches([len(f) for f in features], 2)]
    runs = len(batches)  # batches of 2 rows: one micro-batch each
    per_op, count, wall = op_profile.profile(onnx_dir / "model.int8.onnx", batches, tiny_config(),
                                             LengthConfig.parse("1,0.5,0.3"), 1, tmp_path)
    matmuls = count["DynamicQuantizeMatMul"] + count["MatMulIntegerToFloat"]
    assert matmuls == runs * (4 * layers + 1)  # query-key-value (one matmul), attn_out, ffn_in, ffn_out; the QA head
    assert count["TopK"] == runs * layers  # a length config: every layer ranks
    assert {op: op_profile.group_of(op) for op in per_op if op_profile.group_of(op) == "other"} == {}
    assert 0 < sum(per_op.values()) <= wall


def test_table_and_errors(onnx_dir, tiny_model_dir, capsys):
    assert op_profile.main(["--model", str(onnx_dir), "--features", "2", "--batch-sizes", "1,2",
                            "--length-configs", "full;1,0.5,0.3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and out.count("| **wall (profiled)** |") == 4
    assert "### batch 2, 1,0.5,0.3 (" in out and "| int8 weight matmuls |" in out
    assert op_profile.main(["--model", str(tiny_model_dir)]) == 2  # no INT8 graph there
    assert "model.int8.onnx: no such file" in capsys.readouterr().err
    assert op_profile.main(["--model", str(onnx_dir), "--batch-sizes", "one"]) == 2
