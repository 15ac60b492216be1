"""`quala predict`: JSONL/Parquet in and out, parts and resume, rejects, worker processes and Ray; the shipped
INT8 model on real SQuAD dev rows."""
import json
import signal
import subprocess
import sys
import time

import pytest

from quala.budget import read_front
from quala.cli import main
from quala.config import default_model_dir, squad_path
from quala.data import load_squad
from quala.predict import ModelSpec, Options, predict, read_answers, read_rejects
from quala.rowfiles import Part, plan_parts, read_part

pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402


@pytest.fixture(scope="module")
def dev_rows() -> list[dict]:
    return [{"id": e.id, "question": e.question, "context": e.context}
            for e in load_squad(squad_path("dev"), limit=60)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run(input_path, output, **kw):
    workers = kw.pop("workers", 1)
    ray_address = kw.pop("ray_address", None)
    return predict(input_path, output, Options(**kw), ModelSpec(threads=1), workers, ray_address, progress=False)


def test_answers_equal_quala_eval_at_batch_size_1(dev_rows, tmp_path, capsys):
    """With one feature per batch no answer depends on its batch-mates, whatever the INT8 graph does."""
    write_jsonl(tmp_path / "dev.jsonl", dev_rows[:30])
    assert main(["eval", "--limit", "30", "--batch-size", "1", "--budget", "balanced", "--output",
                 str(tmp_path / "eval.json")]) == 0
    assert main(["predict", "--input", str(tmp_path / "dev.jsonl"), "--output", str(tmp_path / "out"),
                 "--budget", "balanced", "--batch-size", "1", "--part-rows", "7", "--quiet"]) == 0
    assert "30: 30 answered, 0 rejected" in capsys.readouterr().out
    expected = json.loads((tmp_path / "eval.json").read_text())
    answers = read_answers(tmp_path / "out")
    assert [a["id"] for a in answers] == [r["id"] for r in dev_rows[:30]]
    assert {a["id"]: a["answer"] for a in answers} == expected
    a = answers[0]
    front = read_front(default_model_dir())
    balanced = front.point(front.named["balanced"])
    assert a["length_config"] == str(balanced.length_config) and a["budget"] == "balanced"
    assert dev_rows[0]["context"][a["start"]:a["end"]] == a["answer"] and 0 < a["score"] <= 1


def test_killed_run_resumes_to_the_output_of_an_uninterrupted_one(dev_rows, tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", dev_rows)
    run(tmp_path / "in.jsonl", tmp_path / "ref", part_rows=4)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(tmp_path / "in.jsonl"), "--output", str(out), "--part-rows", "4",
            "--workers", "1", "--threads", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "quala.cli", *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "part-00000.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("part-*.jsonl")))
    assert 1 <= done < 15, f"the run was not stopped mid-way ({done} of 15 parts)"
    (out / ".part-00014.jsonl.tmp999").write_text("half a part")  # what a kill while writing leaves
    assert main(argv) == 0
    assert f"15 parts, {done} done before this run" in capsys.readouterr().out
    assert read_answers(out) == read_answers(tmp_path / "ref")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert main(argv) == 0  # nothing left to do: the same output again
    assert "15 parts, 15 done before this run" in capsys.readouterr().out
    assert read_answers(out) == read_answers(tmp_path / "ref")


def test_rerun_with_other_options_or_input_is_refused(dev_rows, tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", dev_rows[:5])
    argv = ["predict", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--quiet"]
    assert main(argv + ["--budget", "balanced"]) == 0
    capsys.readouterr()
    assert main(argv + ["--budget", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "budget 'balanced' then, 'fastest' now" in err and "choose another --output" in err
    assert main(argv + ["--budget", "balanced", "--read-all"]) == 2  # long contexts would be read otherwise
    assert "passages 5 then, None now" in capsys.readouterr().err
    write_jsonl(tmp_path / "in.jsonl", dev_rows[:6])
    assert main(argv + ["--budget", "balanced"]) == 2
    assert "the input files differ" in capsys.readouterr().err


def test_bad_rows_go_to_rejects_with_the_reason_and_the_run_goes_on(dev_rows, tmp_path):
    good = dev_rows[:3]
    lines = [json.dumps(good[0]),
             json.dumps({"id": "q-missing", "context": "text"}),
             json.dumps(dict(good[1], id="empty-context", context="  ")),
             json.dumps(dict(good[1], id="too-long", context="word " * 1000)),
             json.dumps(dict(good[1], id="bad-budget", budget="superfast")),
             json.dumps(dict(good[1], id="number-budget", budget=3)),
             '{"id": "broken", "question": ',
             '["not", "an", "object"]',
             "",
             json.dumps(dict(good[1], budget="fastest")),
             json.dumps(dict(good[2], id=7)),
             json.dumps(dict(good[1], id="lone-surrogate", question="Who \ud800 wrote it?")),  # JSON's \ud800
             json.dumps(dict(good[2], id="blank-budget", budget=" ")),  # as if absent, as the server reads it
             json.dumps(dict(good[2], id="id-\udcff"))]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = run(tmp_path / "in.jsonl", tmp_path / "out", part_rows=4, max_chars=2000, budget="balanced")
    assert (s.rows, s.answered, s.rejected) == (14, 4, 10)
    rejects = read_rejects(tmp_path / "out")
    assert [r["row"] for r in rejects] == [1, 2, 3, 4, 5, 6, 7, 8, 11, 13]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "missing field 'question'" and rejects[0]["id"] == "q-missing"
    assert reasons[1] == "field 'context' is empty"
    assert reasons[2] == "field 'context' has 5000 characters, over the cap of 2000 (--max-chars)"
    assert reasons[3].startswith("field 'budget': cannot read budget 'superfast'")
    assert reasons[4].startswith("field 'budget' must be a string")
    assert reasons[5].startswith("line 7: malformed JSON") and reasons[6] == "line 8: expected a JSON object, got list"
    assert reasons[7] == "line 9: empty line" and rejects[0]["file"] == str(tmp_path / "in.jsonl")
    assert reasons[8] == "field 'question' is not valid UTF-8 text (an unpaired surrogate '\\ud800' at character 4)"
    assert reasons[9].startswith("field 'id' is not valid UTF-8") and rejects[9]["id"] == "id-\\udcff"
    answers = read_answers(tmp_path / "out")
    assert [a["id"] for a in answers] == [good[0]["id"], good[1]["id"], "7", "blank-budget"]
    assert [a["budget"] for a in answers] == ["balanced", "fastest", "balanced", "balanced"]
    assert answers[1]["length_config"] != answers[0]["length_config"] == answers[2]["length_config"]


def test_parquet_folder_in_parquet_out_equals_jsonl(dev_rows, tmp_path):
    """Parts never cross files: the same files as JSONL and as Parquet (small row groups) give the same parts."""
    (tmp_path / "j").mkdir()
    (tmp_path / "p").mkdir()
    for name, rows in (("a", dev_rows[:13]), ("b", dev_rows[13:20])):
        write_jsonl(tmp_path / "j" / f"{name}.jsonl", rows)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p" / f"{name}.parquet", row_group_size=3)
    (tmp_path / "p" / "_SUCCESS").write_text("")  # marker files of other tools are skipped
    s = run(tmp_path / "p", tmp_path / "out-p", part_rows=5, top_k=3)
    run(tmp_path / "j", tmp_path / "out-j", part_rows=5, top_k=3)
    assert (s.parts, s.answered) == (5, 20)
    assert sorted(p.name for p in (tmp_path / "out-p").glob("part-*")) == [f"part-0000{i}.parquet" for i in range(5)]
    table = pq.read_table(tmp_path / "out-p")
    assert table.schema.field("answers").type == pa.list_(pa.struct([("answer", pa.string()), ("score", pa.float64()),
                                                                     ("start", pa.int64()), ("end", pa.int64())]))
    answers = read_answers(tmp_path / "out-p")
    assert answers == read_answers(tmp_path / "out-j")
    assert [a["id"] for a in answers] == [r["id"] for r in dev_rows[:20]]
    first = answers[0]
    assert len(first["answers"]) == 3 and first["answers"][0]["answer"] == first["answer"]
    assert first["answers"][0]["score"] >= first["answers"][1]["score"] >= first["answers"][2]["score"]
    run(tmp_path / "p", tmp_path / "out.jsonl", part_rows=5, top_k=3)  # the output's suffix chooses the format
    assert read_answers(tmp_path / "out.jsonl") == answers


def test_worker_processes_and_one_process_write_the_same_parts(dev_rows, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", dev_rows[:24])
    one = run(tmp_path / "in.jsonl", tmp_path / "one", part_rows=6, workers=1)
    two = run(tmp_path / "in.jsonl", tmp_path / "two", part_rows=6, workers=2)
    assert (one.engine, two.engine, two.workers, two.threads) == ("process", "processes", 2, 1)
    assert read_answers(tmp_path / "two") == read_answers(tmp_path / "one")


def test_ray_local_instance_writes_the_same_parts(dev_rows, tmp_path):
    ray = pytest.importorskip("ray")
    write_jsonl(tmp_path / "in.jsonl", dev_rows[:24])
    local = run(tmp_path / "in.jsonl", tmp_path / "local", part_rows=6, workers=2)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    try:
        s = run(tmp_path / "in.jsonl", tmp_path / "ray", part_rows=6, workers=None, ray_address="")
    finally:
        ray.shutdown()
    assert (s.engine, s.workers, s.threads, s.answered) == ("ray", 2, 1, local.answered)
    assert read_answers(tmp_path / "ray") == read_answers(tmp_path / "local")


def test_jsonl_parts_cover_every_line_once(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xc3\xa9"}\n\n{"c": 3}')  # a blank line, no newline at the end
    parts = plan_parts([path], "jsonl", 2)
    assert [(p.first_row, p.rows) for p in parts] == [(0, 2), (2, 2)]
    rows = [r for p in parts for r in read_part(p)]
    assert [r.values for r in rows] == [{"a": 1}, {"b": "é"}, None, {"c": 3}] and rows[2].error == "line 3: empty line"
    assert [(p.first_row, p.rows) for p in plan_parts([path, path], "jsonl", 3, limit=5)] == [(0, 3), (3, 1), (0, 1)]
    assert read_part(Part(0, str(path), "jsonl", 3, 1, parts[1].offset + 1))[0].values == {"c": 3}


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.jsonl", "no such file or folder"),
    (lambda d: (d / "x.csv").write_text("id,question") and d / "x.csv", "unknown input format '.csv'"),
    (lambda d: pq.write_table(pa.table({"id": ["1"], "text": ["x"]}), d / "x.parquet") or d / "x.parquet",
     "no column 'question', 'context'"),
])
def test_bad_input_gives_a_clear_error(make, message, tmp_path, capsys):
    assert main(["predict", "--input", str(make(tmp_path)), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_folder_of_something_else_is_refused(dev_rows, tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", dev_rows[:2])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["predict", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert "is not a `quala predict` output folder" in capsys.readouterr().err
    assert main(["predict", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "in.jsonl")]) == 2
    assert "is a file" in capsys.readouterr().err
