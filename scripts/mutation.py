"""Mutation testing of the modules that hold the method and the numbers users trust (cosmic-ray).

    python scripts/mutation.py [--modules metrics,budget,flops,data,modeling,runtime] [--work runs/mutation]
                               [--timeout 60] [--max-minutes M]

Each module is mutated (cosmic-ray's operators: comparison, arithmetic, boolean, number and keyword replacements,
...) in a copy of the tracked files under WORK/tree, never in this checkout, and a fast subset of the tests that
pin it runs against every mutant. Sessions are kept in WORK/<module>.sqlite: an interrupted run (Ctrl-C,
--max-minutes) goes on where it stopped. Prints killed / survived / timeout per module and every surviving mutant
(file:line, operator, the changed line). Not part of CI: it runs the tests hundreds of times.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module -> the tests that pin it (fast ones: each mutant runs them)
TESTS = {
    "metrics": "tests/test_metrics.py",
    "budget": "tests/test_budget.py",
    "flops": "tests/test_flops.py",
    "data": "tests/test_data.py tests/test_pipeline.py",
    "modeling": "tests/test_modeling.py tests/test_config.py",
    "runtime": "tests/test_runtime.py -k 'not bf16 and not static'",
}
TARGETS = {"modeling": 90.0, "metrics": 90.0}  # percent killed; 85 for the others


def copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of this checkout, copied fresh."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    if dest.exists():
        shutil.rmtree(dest)
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def config_text(module: str, timeout: float) -> str:
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {TESTS[module]}"
    return (f'[cosmic-ray]\nmodule-path = "quala/{module}.py"\ntimeout = {timeout}\nexcluded-modules = []\n'
            f'test-command = "{command}"\n\n[cosmic-ray.distributor]\nname = "local"\n')


def run_module(module: str, work: Path, tree: Path, timeout: float, deadline: float) -> None:
    cfg, db = work / f"{module}.toml", work / f"{module}.sqlite"
    cfg.write_text(config_text(module, timeout), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(tree))
    if not db.exists():
        subprocess.run(["cosmic-ray", "init", str(cfg), str(db)], cwd=tree, env=env, check=True)
    left = deadline - time.monotonic()
    if left <= 0:
        return
    print(f"[{module}] mutating quala/{module}.py against {TESTS[module]}", file=sys.stderr, flush=True)
    try:
        subprocess.run(["cosmic-ray", "exec", str(cfg), str(db)], cwd=tree, env=env, timeout=left)
    except subprocess.TimeoutExpired:
        print(f"[{module}] stopped by --max-minutes; rerun to go on", file=sys.stderr)


def outcomes(db: Path, tree: Path) -> list[dict]:
    """One row per mutant: where, which operator, and how the tests took it (None while pending)."""
    out = subprocess.run(["cosmic-ray", "dump", str(db)], cwd=tree, capture_output=True, text=True, check=True)
    rows = []
    for line in out.stdout.splitlines():
        item, result = json.loads(line)
        spec = item["mutations"][0]
        rows.append({"line": spec["start_pos"][0], "operator": spec["operator_name"].split("/")[-1],
                     "occurrence": spec["occurrence"], "outcome": None if result is None else
                     ("timeout" if result["worker_outcome"] == "timeout" else result["test_outcome"]),
                     "diff": (result or {}).get("diff") or ""})
    return rows


def changed_line(diff: str) -> str:
    plus = [d[1:].strip() for d in diff.splitlines() if d.startswith("+") and not d.startswith("+++")]
    return plus[0] if plus else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", default=",".join(TESTS), help=f"comma-separated, from {', '.join(TESTS)}")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "mutation", help="sessions and the copied tree")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a mutant's tests count as hung")
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop after this long (rerun to go on)")
    p.add_argument("--report", action="store_true", help="only print the table of what has run so far")
    args = p.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    bad = [m for m in modules if m not in TESTS]
    if bad:
        print(f"error: --modules {','.join(bad)}: choose from {', '.join(TESTS)}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    tree = args.work / "tree"
    if not args.report:
        if not all((args.work / f"{m}.sqlite").exists() for m in modules) or not tree.exists():
            copy_tree(tree)  # a fresh session starts from this checkout's code
        deadline = time.monotonic() + 60 * args.max_minutes
        for m in modules:
            run_module(m, args.work, tree, args.timeout, deadline)
    print("| module | mutants | killed | survived | timeout | pending | killed % | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    survivors = []
    for m in modules:
        db = args.work / f"{m}.sqlite"
        if not db.exists():
            continue
        rows = outcomes(db, tree)
        count = {k: sum(r["outcome"] == k for r in rows) for k in ("killed", "survived", "timeout", None)}
        done = count["killed"] + count["survived"] + count["timeout"]
        score = 100 * (count["killed"] + count["timeout"]) / done if done else 0.0
        print(f"| {m} | {len(rows)} | {count['killed']} | {count['survived']} | {count['timeout']} | {count[None]} | "
              f"{score:.1f} | {TARGETS.get(m, 85.0):.0f} |")
        survivors += [(m, r) for r in rows if r["outcome"] == "survived"]
    if survivors:
        print("\nSurviving mutants:")
        for m, r in sorted(survivors, key=lambda x: (x[0], x[1]["line"])):
            print(f"- quala/{m}.py:{r['line']} {r['operator']}: `{changed_line(r['diff'])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
