"""benchmarks/latency.py end to end on a tiny model: every row timed, ratios and the JSON written."""
import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"
spec = importlib.util.spec_from_file_location("latency", SCRIPT)
latency = importlib.util.module_from_spec(spec)
sys.modules["latency"] = latency
spec.loader.exec_module(latency)


def test_latency_table_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert latency.main(["--model", str(tiny_model_dir), "--features", "3", "--repeats", "1", "--no-static",
                         "--length-configs", "1,0.5,0.3", "--eval-limit", "2", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    base = rows["BERT-base fp32 PyTorch (random init)"]
    assert base["b1_speedup"] == 1.0 and base["b1_ms"] > 0
    plain = "MiniLM full, ORT quantize_dynamic (plain HF export)"
    assert plain in rows and any("SkipLayerNormFusion off" in name for name in rows)
    assert any("micro-batches of" in name for name in rows)
    assert rows["quala INT8 ORT, one run per batch (no micro-batches)"]["b32_ms"] > 0
    assert rows["quala INT8 ORT, 1,0.5,0.3"]["b32_ms"] > 0 and 0 <= rows["quala INT8 ORT"]["f1"] <= 100
    assert "| BERT-base fp32 PyTorch (random init) |" in capsys.readouterr().out


def test_latency_names_a_missing_model(tmp_path, capsys):
    assert latency.main(["--model", str(tmp_path / "nope"), "--json", str(tmp_path / "l.json")]) == 2
    assert "nope" in capsys.readouterr().err
