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
    assert re.search(r"engine         PyTorch fp32, \d+ threads", r.stdout) and "cpu            " in r.stdout
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
    # bytes that are not UTF-8 in an argument reach Python as unpaired surrogates
    (["answer", "-q", "Who\udcff?", "-c", "text"], "--question 'Who\\udcff?' is not valid UTF-8 text"),
    (["answer", "-q", "Why?", "-c", "caf\udce9"], "the context is not valid UTF-8 text"),
])
def test_bad_input_gives_a_clear_error(argv, message, tiny_model_dir, capsys):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_model_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["eval", "--batch-size", "-1"], "--batch-size: must be at least 1, got -1"),
    (["eval", "--limit", "0"], "--limit: must be at least 1, got 0"),
    (["eval", "--limit", "-5"], "--limit: must be at least 1, got -5"),
    (["eval", "--output", "/nonexistent-folder/pred.json"], "/nonexistent-folder: no such folder"),
    (["answer", "-q", "Why?", "-c", "x", "--top-k", "0"], "--top-k: must be at least 1"),
    (["search", "--population", "0"], "--population: must be at least 1"),
    (["train", "--output", "x", "--lr", "-1"], "--lr: must be a positive number"),
    (["serve", "--port", "70000"], "--port: must be a port from 0 to 65535, got 70000"),
    (["serve", "--threads", "0"], "--threads: must be at least 1"),
    (["serve", "--max-wait-ms", "inf"], "--max-wait-ms: must be a finite number, got inf"),
    (["serve", "--max-wait-ms", "-1"], "--max-wait-ms: must be 0 or more, got -1"),
    (["search", "--step", "0"], "--step: must be above 0 and at most 1, got 0"),
    (["search", "--min-ratio", "1.5"], "--min-ratio: must be between 0 and 1, got 1.5"),
    (["search", "--confirm-margin", "nan"], "--confirm-margin: must be a finite number, got nan"),
    (["train", "--output", "x", "--alpha", "2"], "--alpha: must be between 0 and 1, got 2"),
    (["predict", "--input", "a.jsonl", "--output", "b", "--threads", "-2"], "--threads: must be at least 1"),
    (["predict", "--input", "a.jsonl", "--output", "b", "--passages", "0"], "--passages: must be at least 1"),
])
def test_numeric_options_and_outputs_are_checked_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_output_that_is_a_folder_is_refused_before_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--output", str(tmp_path)])
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_context_file_that_is_a_folder(tiny_model_dir, tmp_path, capsys):
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "What?", "--context-file", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err


def test_answer_without_context_on_a_terminal_says_so(tiny_model_dir, capsys, monkeypatch):
    class Terminal(__import__("io").StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stdin", Terminal(""))
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "What?"]) == 2
    assert "no context: give --context" in capsys.readouterr().err


def test_all_ones_length_config_is_full_length(tiny_model_dir, data_dir, capsys):
    """'1,1,1' once meant one token per layer: now it is the full length (kept tokens = real tokens)."""
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data_dir / "dev.json"), "--limit", "3"]
    assert main(args + ["--length-config", "1,1,1"]) == 0
    ones = capsys.readouterr().out
    assert main(args) == 0
    full = capsys.readouterr().out
    kept = re.search(r"kept tokens\s+([\d. ]+)", ones).group(1).split()
    assert float(kept[0]) > 50 and len(set(kept)) == 1
    assert re.search(r"F1\s+([\d.]+)", ones).group(1) == re.search(r"F1\s+([\d.]+)", full).group(1)


def test_checksum_mismatch_names_the_file(tiny_model_dir, tmp_path, capsys):
    import hashlib
    import shutil
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    (d / "SHA256SUMS.json").write_text(json.dumps(sums))
    args = ["answer", "--model", str(d), "-q", "What?", "-c", "Cats sleep."]
    assert main(args) == 0
    capsys.readouterr()
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-200:] = bytes(255 - b for b in data[-200:])  # 200 bytes flipped
    (d / "model.safetensors").write_bytes(bytes(data))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: checksum mismatch" in err and "--no-verify" in err
    assert main(args + ["--no-verify"]) == 0


def test_version(capsys):
    import quala
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"quala {quala.__version__}"


def test_non_utf8_context_file(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert main(["answer", "--model", str(tiny_model_dir), "-q", "What?", "--context-file", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_console_script_help_lists_subcommands():
    r = subprocess.run(["quala", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(c in r.stdout for c in ("eval", "answer", "train"))
