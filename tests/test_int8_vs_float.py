"""benchmarks/int8_vs_float.py: per-configuration F1 change of INT8, flagged past the limit."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_vs_float.py"


def result(runtime: str, f1s: dict[str, float], questions: int = 500) -> dict:
    rows = [{"method": "front", "length_config": c, "gmacs": 2.0 - i, "f1": f} for i, (c, f) in enumerate(f1s.items())]
    rows.append({"method": "first-k", "length_config": "full", "gmacs": 9.9, "f1": 0.0})  # not a front row
    return {"info": {"runtime": runtime, "questions": questions, "model": "m"}, "rows": rows}


def test_compare_pairs_configurations_and_flags_losses_over_the_limit(tmp_path):
    (tmp_path / "f.json").write_text(json.dumps(result("torch-fp32", {"full": 80.0, "0.5,0.5": 60.0, "0.3,0.3": 40.0})))
    (tmp_path / "i.json").write_text(json.dumps(result("onnx-int8", {"full": 79.5, "0.5,0.5": 58.5})))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "f.json"), str(tmp_path / "i.json"),
                          "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, check=True).stdout
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["length_config"] for r in rows] == ["0.5,0.5", "full"]  # cheapest first, only shared configs
    assert [round(r["delta"], 2) for r in rows] == [-1.5, -0.5]
    assert "**-1.50**" in out and "| full | 2.000 | 80.00 | 79.50 | -0.50 |" in out
    assert "1 lose more than 1 F1" in out


def test_different_question_counts_are_refused_with_both_files_named(tmp_path):
    (tmp_path / "f.json").write_text(json.dumps(result("torch-fp32", {"full": 80.0}, questions=500)))
    (tmp_path / "i.json").write_text(json.dumps(result("onnx-int8", {"full": 79.0}, questions=100)))
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "f.json"), str(tmp_path / "i.json")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "same --limit" in p.stderr and "f.json" in p.stderr
    (tmp_path / "bad.json").write_text("{}")
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "bad.json"), str(tmp_path / "i.json")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "bad.json: not a benchmarks/tradeoff.py result" in p.stderr
