import json
import re
import subprocess
import sys

import pytest

from quala.cli import main
from quala.data import load_squad, squad_dataset
from quala.metrics import squad_scores


def test_eval_prints_scores_that_match_its_predictions_file(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "pred.json"
    r = subprocess.run([sys.executable, "-m", "quala.cli", "eval", "--model", str(tiny_model_dir), "--data",
                        str(data_dir / "dev.json"), "--length-config", "0.9,0.6,0.4", "--output", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    em = float(re.search(r"exact match\s+([\d.]+)", r.stdout).group(1))
    f1 = float(re.search(r"F1\s+([\d.]+)", r.stdout).group(1))
    assert "questions      18" in r.stdout and "length config  0.9,0.6,0.4" in r.stdout
    kept = [float(x) for x in re.search(r"kept tokens\s+([\d. ]+)", r.stdout).group(1).split()]
    assert kept[0] > kept[1] > kept[2]
    scores = squad_scores(squad_dataset(load_squad(data_dir / "dev.json")), json.loads(out.read_text()))
    assert scores["exact_match"] == pytest.approx(em, abs=0.006) and scores["f1"] == pytest.approx(f1, abs=0.006)


def test_answer_reads_context_from_file_and_stdin(tiny_model_dir, tmp_path, capsys, monkeypatch):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("The Amazon river flows through Brazil and Peru.", encoding="utf-8")
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "Where does it flow?", "--context-file",
                 str(ctx)]) == 0
    out = capsys.readouterr().out
    answer = re.search(r"A: (.*)  \(score ([\d.]+)", out)
    assert answer and answer.group(1) in ctx.read_text() and 0 <= float(answer.group(2)) <= 1
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Cats sleep a lot."))
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "Who sleeps?", "-q", "How much?"]) == 0
    assert capsys.readouterr().out.count("A: ") == 2


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "/nonexistent/dev.json"], "no such file"),
    (["eval", "--length-config", "1.0,0.9,1.0"], "not monotone"),
    (["answer", "-q", "", "-c", "text"], "--question is empty"),
    (["answer", "-q", "Why?", "-c", "   "], "the context is empty"),
    (["answer", "-q", "Why?", "-c", "x", "--model", "/nonexistent"], "not a model directory"),
])
def test_bad_input_gives_a_clear_error(argv, message, tiny_model_dir, capsys):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_model_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_non_utf8_context_file(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "What?", "--context-file", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_console_script_help_lists_subcommands():
    r = subprocess.run(["quala", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(c in r.stdout for c in ("eval", "answer", "train"))
