"""benchmarks/int8_vs_float.py: screen every front configuration, score the flagged ones again, flag by the larger."""
import json
import os
import subprocess
import sys
from pathlib import Path

from quala.budget import Front, FrontPoint, write_front
from quala.config import LengthConfig
from quala.quantize import quantize_model
from tests.test_tradeoff import sharp_model
from tests.conftest import load_script

int8_vs_float = load_script("benchmarks/int8_vs_float.py")
SCRIPT = Path(int8_vs_float.__file__)


def row(k: str, gmacs: float, delta: float, confirm: float | None = None) -> dict:
    r = {"length_config": k, "gmacs": gmacs, "f1_float": 50.0, "f1_int8": 50.0 + delta, "delta": delta,
         "questions": 500}
    if confirm is not None:
        r |= {"confirm_f1_float": 60.0, "confirm_f1_int8": 60.0 + confirm, "confirm_delta": confirm,
              "confirm_questions": 10570}
    return r


def test_the_verdict_is_the_larger_sample_when_there_is_one():
    rows = [row("0.3,0.3", 0.5, -1.8, confirm=-0.4), row("0.5,0.5", 0.8, -1.2, confirm=-1.3), row("full", 1.0, 0.2)]
    out = int8_vs_float.table(rows, 1.0)
    assert "| 0.3,0.3 | 0.500 | 50.00 | 48.20 | -1.80 | 60.00 | 59.60 | -0.40 |" in out  # screen loss not flagged
    assert "| 0.5,0.5 | 0.800 | 50.00 | 48.80 | -1.20 | 60.00 | 58.70 | **-1.30** |" in out
    assert "| full | 1.000 | 50.00 | 50.20 | +0.20 |  |  |  |" in out
    assert "3 configurations, 2 scored again on 10570 questions" in out and "1 lose more than 1 F1" in out
    assert "from -1.30 to +0.20" in out


def test_screen_then_confirm_on_a_tiny_model_and_resume_from_the_caches(tmp_path, tokenizer):
    model = tmp_path / "m"
    sharp_model(0).save_pretrained(model)
    tokenizer.save_pretrained(str(model))
    quantize_model(model, "dynamic")
    points = [FrontPoint("p0", LengthConfig((0.5, 0.3, 0.2)), 0.01, 3.0, 10.0)]
    write_front(model / "length_configs.json", Front(points, None, {"fastest": "p0"}))
    cmd = [sys.executable, str(SCRIPT), "--model", str(model), "--limit", "4", "--confirm-limit", "8",
           "--confirm-over", "-100", "--json", str(tmp_path / "rows.json")]  # confirm every row
    env = {**os.environ, "QUALA_INT8_KERNEL": "u8u8"}  # the stored integers on every CPU: one cache name
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["length_config"] for r in rows] == ["0.5,0.3,0.2", "full"]
    assert all(r["questions"] == 4 and r["confirm_questions"] == 8 for r in rows)
    assert "torch-fp32 vs onnxruntime:model.int8.onnx" in out and "2 scored again on 8 questions" in out
    caches = sorted(p.name for p in (model / "int8_vs_float").iterdir())
    assert caches == ["onnxruntime-model.int8.onnx.dev4.json", "onnxruntime-model.int8.onnx.dev8.json",
                      "torch-fp32.dev4.json", "torch-fp32.dev8.json"]
    cache = json.loads((model / "int8_vs_float" / "torch-fp32.dev8.json").read_text())
    cache["scores"]["full"]["f1"] = 99.0  # a second run reads the cache instead of scoring again
    (model / "int8_vs_float" / "torch-fp32.dev8.json").write_text(json.dumps(cache))
    subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert rows[1]["confirm_f1_float"] == 99.0
    # nothing flagged now, but the larger sample scored before still gives the verdict
    subprocess.run(cmd[:-4] + ["--confirm-over", "100"] + cmd[-2:], capture_output=True, text=True, check=True,
                   env=env)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert all(r["confirm_questions"] == 8 for r in rows) and rows[1]["confirm_f1_float"] == 99.0


def test_a_model_without_a_front_is_a_clear_error(tmp_path, tokenizer):
    model = tmp_path / "m"
    sharp_model(0).save_pretrained(model)
    p = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model)], capture_output=True, text=True)
    assert p.returncode != 0 and "length_configs.json" in p.stderr and "Traceback" not in p.stderr


def test_the_float_onnx_graph_as_the_float_side_on_chosen_configs(tmp_path, tokenizer):
    model = tmp_path / "m"
    sharp_model(0).save_pretrained(model)
    tokenizer.save_pretrained(str(model))
    quantize_model(model, "dynamic")
    assert (model / "model.onnx").is_file()
    base = [sys.executable, str(SCRIPT), "--model", str(model), "--limit", "6", "--no-confirm",
            "--configs", "0.5,0.3,0.2; full"]  # no front file needed
    rows = {}
    for side in ("torch", "onnx"):
        extra = ["--float", str(model / "model.onnx")] if side == "onnx" else []
        out = subprocess.run(base + extra + ["--json", str(tmp_path / f"{side}.json")], capture_output=True,
                             text=True, check=True).stdout
        rows[side] = json.loads((tmp_path / f"{side}.json").read_text())["rows"]
    assert "onnxruntime:model.onnx vs onnxruntime:model.int8.onnx" in out
    assert [r["length_config"] for r in rows["onnx"]] == ["0.5,0.3,0.2", "full"]
    # the same weights: the float graph scores what PyTorch fp32 scores; the INT8 side is unchanged
    assert [r["f1_float"] for r in rows["onnx"]] == [r["f1_float"] for r in rows["torch"]]
    assert [r["f1_int8"] for r in rows["onnx"]] == [r["f1_int8"] for r in rows["torch"]]
    bad = subprocess.run(base[:-2] + ["--configs", "0.5,1.5,0.2"], capture_output=True, text=True)
    assert bad.returncode != 0 and "1.5" in bad.stderr and "Traceback" not in bad.stderr
