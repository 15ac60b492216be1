"""`quala predict` throughput and memory: one process, all cores, and Ray local, side by side in one run.

    python benchmarks/predict.py [--limit 2000] [--repeats 3] [--memory-seconds 120] [--budget balanced]
    python benchmarks/predict.py compare PREDICT_OUTPUT EVAL_PREDICTIONS.json   # answers that differ

Makes the SQuAD dev set into JSONL (10,570 rows: id, question, context) and a 1,000,000-row file by repeating it
(ids suffixed '-<copy>'; about 1 GB) under --data. Each throughput row runs `quala predict` in a subprocess on the
first --limit dev rows into a fresh folder: rows/s over the whole command (model loading and, for Ray, starting the
local instance included; median of --repeats) and the peak memory of all its processes (the sum of their RSS,
sampled every 0.2 s; shared library pages count once per process). The memory row runs the default (all cores) on
the 1M-row file for --memory-seconds and then stops it with Ctrl-C: at ~100 rows/s on 2 cores the whole file would
take about 3 hours, so it reports the RSS over time (flat = streaming) and the rows done, not a finished run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quala.config import squad_path
from quala.data import load_squad
from quala.files import atomic_write, read_json
from quala.predict import read_answers
from quala.runtime import physical_cores

MILLION = 1_000_000
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("model name\t", fields.get("model name", "unknown CPU")).strip()
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    isa = ", ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    return f"{name}, {os.cpu_count()} CPUs ({physical_cores()} physical cores), {isa}"


def make_data(folder: Path) -> tuple[Path, Path]:
    """dev.jsonl and dev-1m.jsonl under folder (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    dev, big = folder / "dev.jsonl", folder / "dev-1m.jsonl"
    if not dev.exists() or not big.exists():
        lines = [{"id": e.id, "question": e.question, "context": e.context} for e in load_squad(squad_path("dev"))]
        atomic_write(dev, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in lines)))

        def write_big(tmp: str) -> None:
            with open(tmp, "w") as f:
                for i in range(MILLION):
                    r = lines[i % len(lines)]
                    f.write(json.dumps(dict(r, id=f"{r['id']}-{i // len(lines)}")) + "\n")
        atomic_write(big, write_big)
    return dev, big


def tree_rss(root: int) -> int:
    """Bytes resident in root and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return total


def run_predict(args: list[str], seconds: float | None = None, interval: float = 0.2, watch: Path | None = None
                ) -> dict:
    """Run `quala predict ARGS`, sampling the memory of its process tree; stop it with Ctrl-C after `seconds`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "quala.cli", "predict", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # (seconds, bytes, answer parts written)
    while proc.poll() is None:
        elapsed = time.perf_counter() - t0
        if seconds is not None and elapsed > seconds:
            proc.send_signal(signal.SIGINT)  # as a user's Ctrl-C
            break
        parts = len(list(watch.glob("part-*"))) if watch is not None and watch.exists() else 0
        samples.append((elapsed, tree_rss(proc.pid), parts))
        time.sleep(interval)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # not stopped by Ctrl-C in time: say so, and end it
        proc.kill()
        out, err = proc.communicate()
        err += "\nbenchmark: not stopped 120 s after Ctrl-C; killed"
    if seconds is None and proc.returncode != 0:
        raise SystemExit(f"quala predict failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "samples": samples, "stdout": out, "stderr": err,
            "returncode": proc.returncode, "stop_seconds": time.perf_counter() - t0 - (seconds or 0)}


def throughput_rows(dev: Path, scratch: Path, a) -> list[dict]:
    runs = [("1 process", ["--workers", "1"]), ("all cores (default)", [])] + ([("Ray local", ["--ray"])] if a.ray
                                                                              else [])
    common = ["--input", str(dev), "--limit", str(a.limit)] + (["--budget", a.budget] if a.budget else [])
    results = {name: [] for name, _ in runs}
    for r in range(a.repeats):  # the rows take turns, so drift over the run hits each alike
        for name, extra in runs:
            out = scratch / f"{name.split()[0]}-{r}"
            res = run_predict(common + ["--output", str(out), *extra])
            summary = read_json(out / "_summary.json")
            res.update(rows=summary["rows"], layout=f"{summary['workers']} x {summary['threads']}",
                       peak=max(s[1] for s in res["samples"]))
            results[name].append(res)
    rows = []
    for name, _ in runs:
        rs = results[name]
        seconds = statistics.median(r["seconds"] for r in rs)
        rows.append({"run": name, "layout": rs[0]["layout"], "rows": rs[0]["rows"], "seconds": seconds,
                     "rows_per_s": rs[0]["rows"] / seconds, "peak_mib": max(r["peak"] for r in rs) / 2**20})
    for r in rows:
        r["speedup"] = r["rows_per_s"] / rows[0]["rows_per_s"]
    return rows


def memory_run(big: Path, scratch: Path, a) -> list[tuple[float, float, int]]:
    out = scratch / "million"
    res = run_predict(["--input", str(big), "--output", str(out)] + (["--budget", a.budget] if a.budget else []),
                      seconds=a.memory_seconds, interval=1.0, watch=out)
    print(f"memory run: Ctrl-C after {a.memory_seconds:.0f} s, exited {res['stop_seconds']:.1f} s later with status "
          f"{res['returncode']}" + (" (killed)" if "killed" in res["stderr"][-60:] else ""), flush=True)
    return [(t, b / 2**20, parts) for t, b, parts in res["samples"]]


def markdown(rows: list[dict], memory: list[tuple[float, float, int]], a) -> str:
    lines = [f"CPU: {cpu_line()}", "",
             "| run | workers x threads | rows | seconds (median of %d) | rows/s | speed-up | peak RSS MiB (all "
             "processes) |" % a.repeats, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['layout']} | {r['rows']} | {r['seconds']:.1f} | {r['rows_per_s']:.1f} "
                     f"| {r['speedup']:.2f}x | {r['peak_mib']:.0f} |")
    if memory:
        lines += ["", f"1,000,000-row JSONL, all cores, stopped after {a.memory_seconds:.0f} s (RSS of all "
                  f"processes; parts of 1,000 rows):", "", "| seconds | RSS MiB | parts written |",
                  "| ---: | ---: | ---: |"]
        step = max(1, len(memory) // 10)
        for t, mib, parts in memory[::step] + ([memory[-1]] if (len(memory) - 1) % step else []):
            lines.append(f"| {t:.0f} | {mib:.0f} | {parts} |")
        steady = [m for t, m, p in memory if p > 0]
        if steady:
            lines.append(f"\nafter the first part: RSS {min(steady):.0f}-{max(steady):.0f} MiB "
                         f"over {len(steady)} samples")
    return "\n".join(lines)


def compare(pred: Path, eval_json: Path) -> int:
    """How many answers of a `quala predict` output differ from `quala eval --output` predictions."""
    answers = {r["id"]: r["answer"] for r in read_answers(pred)}
    expected = read_json(eval_json)
    missing = [k for k in expected if k not in answers]
    differ = [k for k in expected if k in answers and answers[k] != expected[k]]
    print(f"{len(expected)} questions in {eval_json}, {len(answers)} answers in {pred}: "
          f"{len(differ)} differ, {len(missing)} missing, {len(set(answers) - set(expected))} extra")
    for k in differ[:5]:
        print(f"  {k}: predict {answers[k]!r}, eval {expected[k]!r}")
    return 1 if differ or missing else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="predict.py compare")
        p.add_argument("predict_output", type=Path)
        p.add_argument("eval_json", type=Path)
        a = p.parse_args(argv[1:])
        return compare(a.predict_output, a.eval_json)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=2000, help="dev rows per throughput run (default 2000; 10570: all)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each throughput row (default 3; median)")
    p.add_argument("--memory-seconds", type=float, default=120.0,
                   help="how long the 1M-row memory run goes before Ctrl-C (default 120; 0: skip it)")
    p.add_argument("--budget", default="balanced", help="budget of every run (default balanced; '' for the model's "
                   "default configuration)")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "quala-predict-bench",
                   help="where the JSONL files are made and kept (default: $TMPDIR/quala-predict-bench)")
    p.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray row")
    p.add_argument("--json", type=Path, default=Path("predict-bench.json"), help="results file")
    a = p.parse_args(argv)
    dev, big = make_data(a.data)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=a.data) as scratch:
        rows = throughput_rows(dev, Path(scratch), a)
        print(markdown(rows, [], a), flush=True)  # kept if the memory run goes wrong
        memory = memory_run(big, Path(scratch), a) if a.memory_seconds > 0 else []
    if memory:
        print(markdown(rows, memory, a).split("\n\n", 2)[-1])
    load = (load_before, os.getloadavg()[0])
    print(f"\nbudget {a.budget or 'default'}; load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} CPUs")
    text = json.dumps({"cpu": cpu_line(), "rows": rows, "memory": memory, "load_average": load}, indent=1)
    atomic_write(a.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
