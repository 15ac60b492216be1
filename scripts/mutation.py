"""Mutation testing of the modules that hold the method and the numbers users trust (cosmic-ray).

    python scripts/mutation.py [--modules metrics,budget,flops,data,modeling,runtime] [--work runs/mutation]
                               [--timeout 60] [--max-minutes M] [--sample N] [--seed S]
    python scripts/mutation.py --modules data,flops --retest-survivors     # after writing tests that kill them
    python scripts/mutation.py --planted [--only NAME,...]

Each module is mutated (cosmic-ray's operators: comparison, arithmetic, boolean, number and keyword replacements,
...) in a copy of the tracked files under WORK/tree, never in this checkout, and a fast subset of the tests that
pin it runs against every mutant. Sessions are kept in WORK/<module>.sqlite: an interrupted run (Ctrl-C,
--max-minutes) goes on where it stopped. Prints killed / survived / timeout per module and every surviving mutant
(file:line, operator, the changed line). Not part of CI: it runs the tests hundreds of times. The six modules make
about 3,000 mutants, 8-20 s each on 2 cores: --sample N runs N of each module's mutants, drawn at random once when
its session is made (the rest are marked skipped, cosmic-ray's own filter mechanism), which estimates the kill rate
to about +-5 points at N=40 in under an hour.

--planted plants, one at a time, the bugs of PLANTED (one-line breaks of the method a reader would not see: the
least attended tokens kept, GELU's tanh form, the KL reversed, LayerDrop off, a server reading one window, ...)
in the copied tree, runs the tests meant to catch each, and prints whether they failed (caught) or passed (missed).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
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
    "modeling": "tests/test_modeling.py tests/test_config.py tests/test_scorer.py tests/test_export.py",
    "runtime": "tests/test_runtime.py tests/test_export.py -k 'not trained_model and not static'",
}
TARGETS = {"modeling": 90.0, "metrics": 90.0}  # percent killed; 85 for the others

# name -> (file, the line as it is, the line with the bug, the tests that must fail)
PLANTED = {
    "keep the least attended tokens": (
        "quala/modeling.py", "significance = RANKINGS[ranking](signals, self).float()",
        "significance = (-RANKINGS[ranking](signals, self)).float()",
        "tests/test_modeling.py tests/test_export.py -k 'most_attended or attention_ranks or least_attended'"),
    "GELU's tanh approximation": (
        "quala/modeling.py", "self.ffn_out(F.gelu(self.ffn_in(x)))", "self.ffn_out(F.gelu(self.ffn_in(x), "
        "approximate='tanh'))", "tests/test_modeling.py -k bare_bert"),
    "LayerNorm eps 1e-5 instead of the config's": (
        "quala/modeling.py", "self.ffn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)",
        "self.ffn_norm = nn.LayerNorm(h, eps=1e-5)", "tests/test_modeling.py -k bare_bert"),
    "distillation KL reversed": (
        "quala/train.py", "F.kl_div(log_p, log_q, log_target=True", "F.kl_div(log_q, log_p, log_target=True",
        "tests/test_train.py -k 'distillation or teacher'"),
    "LayerDrop never drops": (
        "quala/train.py", "skipped = frozenset() if i == 0 else", "skipped = frozenset() if True else",
        "tests/test_train.py -k layerdrop"),
    "a wrong-stage checkpoint is loaded": (
        "quala/train.py", 'if state.get("stage") != self.stage:', "if False:",
        "tests/test_train.py -k wrong_stage"),
    "a corrupted checkpoint raises from deep inside": (
        "quala/train.py", "raise QualaError(f\"{self.checkpoint_path}: cannot read the checkpoint ({e})\") from None",
        "raise", "tests/test_train.py -k wrong_stage"),
    "SIGTERM does not save": (
        "quala/train.py", "signal.signal(signal.SIGTERM, _interrupt)", "pass", "tests/test_train.py -k sigterm"),
    "export ignores the model's learned ranking": (
        "quala/export.py", "ranking = ranking or model.config.ranking", 'ranking = ranking or "attention"',
        "tests/test_scorer.py -k fit_scorer_command"),
    "export leaves the model in training mode": (
        "quala/export.py", "graph = _Graph(model, ranking).eval()", "graph = _Graph(model, ranking)", "tests/test_export.py -k eval_mode"),
    "micro-batches joined in the wrong order": (
        "quala/runtime.py", "outputs.append(np.concatenate(arrays))", "outputs.append(np.concatenate(arrays[::-1]))",
        "tests/test_runtime.py -k micro_batches"),
    "bf16 silently runs fp32": (
        "quala/evaluate.py", 'enabled=self.dtype == "bf16"', "enabled=False", "tests/test_runtime.py -k bf16"),
    "static INT8 quantizes nothing": (
        "quala/quantize.py", 'QDQ, op_types_to_quantize=["MatMul"]', "QDQ, op_types_to_quantize=[]",
        "tests/test_runtime.py -k static"),
    "static INT8 calibrated on one feature": (
        "quala/quantize.py", "features = train_features(load_tokenizer(model_dir), config, n, train_file)",
        "features = train_features(load_tokenizer(model_dir), config, 1, train_file)",
        "tests/test_runtime.py tests/test_quantize.py -k 'static or calibration'"),
    "the server reads only a context's first window": (
        "quala/serve.py", "c.max_seq_length, c.doc_stride, c.max_query_length)\n",
        "c.max_seq_length, c.doc_stride, c.max_query_length)[:1]\n",
        "tests/test_serve.py -k 'last or long_context'"),
    "every request runs alone": (
        "quala/serve.py", "        if self.batch_invariant:\n            room", "        if False:\n            room",
        "tests/test_serve.py -k share_model_runs"),
    "an inference error reaches only the first waiter": (
        "quala/serve.py", "            for job in jobs:\n                self.finish(job, e)",
        "            for job in jobs[:1]:\n                self.finish(job, e)",
        "tests/test_serve.py -k every_waiting"),
    "a budget is ignored on a model without a front": (
        "quala/serve.py", "            if budget is None:\n                return None",
        "            if True:\n                return None", "tests/test_serve.py -k without_a_front"),
    "/answer/batch takes any number of items": (
        "quala/serve.py", "Field(min_length=1, max_length=MAX_BATCH_ITEMS)", "Field()",
        "tests/test_serve.py -k bad_batch"),
}


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


def annotation_spans(source: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every type annotation: under `from __future__ import annotations` they are never
    evaluated, so a mutant inside one (`float | None` to `float / None`) is equivalent to the original."""
    spans = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        notes = [getattr(node, "returns", None)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        notes += [node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) else []
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in notes if a is not None]
    return spans


def in_annotation(start, end, spans) -> bool:
    start, end = tuple(start), tuple(end)
    return any(lo <= start and end <= hi for lo, hi in spans)


def skip_equivalent(db: Path, source: Path) -> None:
    """Mark the mutants inside type annotations as skipped before anything runs (see annotation_spans)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult
    spans = annotation_spans(source)
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        ids = [item.job_id for item in wdb.pending_work_items
               if in_annotation(item.mutations[0].start_pos, item.mutations[0].end_pos, spans)]
        wdb.set_multiple_results(ids, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def keep_a_sample(db: Path, keep: int, seed: int) -> None:
    """Mark all but `keep` mutants, drawn at random, as skipped: cosmic-ray's exec then runs only the sample."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        ids = sorted(item.job_id for item in wdb.pending_work_items)
        chosen = set(random.Random(seed).sample(ids, min(keep, len(ids))))
        wdb.set_multiple_results([i for i in ids if i not in chosen], WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def reopen_survivors(db: Path) -> int:
    """Make the module's surviving mutants pending again (their results deleted), so that the next exec runs them
    against the current tests; the killed ones keep their results."""
    import sqlite3
    with sqlite3.connect(db) as con:
        return con.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount


def run_module(module: str, work: Path, tree: Path, timeout: float, deadline: float, sample: int = 0,
               seed: int = 0) -> None:
    cfg, db = work / f"{module}.toml", work / f"{module}.sqlite"
    cfg.write_text(config_text(module, timeout), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(tree))
    if not db.exists():
        subprocess.run(["cosmic-ray", "init", str(cfg), str(db)], cwd=tree, env=env, check=True)
        skip_equivalent(db, tree / "quala" / f"{module}.py")
        if sample:
            keep_a_sample(db, sample, seed)
    left = deadline - time.monotonic()
    if left <= 0:
        return
    print(f"[{module}] mutating quala/{module}.py against {TESTS[module]}", file=sys.stderr, flush=True)
    try:
        subprocess.run(["cosmic-ray", "exec", str(cfg), str(db)], cwd=tree, env=env, timeout=left)
    except subprocess.TimeoutExpired:
        print(f"[{module}] stopped by --max-minutes; rerun to go on", file=sys.stderr)


def outcomes(db: Path, tree: Path, module: str) -> list[dict]:
    """One row per mutant: where, which operator, and how the tests took it (None while pending; "equivalent" for
    a skipped one inside an annotation, "skipped" for one left out of the sample)."""
    out = subprocess.run(["cosmic-ray", "dump", str(db)], cwd=tree, capture_output=True, text=True, check=True)
    spans = annotation_spans(tree / "quala" / f"{module}.py")
    rows = []
    for line in out.stdout.splitlines():
        item, result = json.loads(line)
        spec = item["mutations"][0]
        outcome = None if result is None else result["worker_outcome"] if result["worker_outcome"] in (
            "timeout", "skipped") else result["test_outcome"]
        if outcome == "skipped" and in_annotation(spec["start_pos"], spec["end_pos"], spans):
            outcome = "equivalent"
        rows.append({"line": spec["start_pos"][0], "operator": spec["operator_name"].split("/")[-1],
                     "occurrence": spec["occurrence"], "outcome": outcome, "diff": (result or {}).get("diff") or ""})
    return rows


def changed_line(diff: str) -> str:
    plus = [d[1:].strip() for d in diff.splitlines() if d.startswith("+") and not d.startswith("+++")]
    return plus[0] if plus else ""


def run_planted(work: Path, names: list[str]) -> int:
    """Each planted bug in a fresh copy of the tree; its tests must fail. Returns how many were missed."""
    tree = work / "planted"
    copy_tree(tree)
    print("| planted bug | file | tests | result |\n| --- | --- | --- | --- |")
    missed = 0
    for name in names:
        file, good, bad, tests = PLANTED[name]
        path = tree / file
        text = path.read_text(encoding="utf-8")
        if text.count(good) != 1:
            raise SystemExit(f"error: {file}: the line for {name!r} is not there exactly once: {good!r}")
        path.write_text(text.replace(good, bad), encoding="utf-8")
        try:
            r = subprocess.run(f"{sys.executable} -m pytest -x -q -p no:cacheprovider {tests}", shell=True,
                               cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True)
        finally:
            path.write_text(text, encoding="utf-8")
        failed = [line.split(" - ")[0] for line in r.stdout.splitlines() if line.startswith("FAILED")]
        caught = r.returncode == 1 and failed
        missed += not caught
        result = f"caught: {failed[0].split('::')[-1]}" if caught else f"MISSED (pytest exit {r.returncode})"
        print(f"| {name} | {file} | `{tests}` | {result} |", flush=True)
    return missed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", default=",".join(TESTS), help=f"comma-separated, from {', '.join(TESTS)}")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "mutation", help="sessions and the copied tree")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a mutant's tests count as hung")
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop after this long (rerun to go on)")
    p.add_argument("--sample", type=int, default=0, help="run N random mutants per module (0: all), fixed when "
                   "the module's session is made")
    p.add_argument("--seed", type=int, default=0, help="the random draw of --sample")
    p.add_argument("--report", action="store_true", help="only print the table of what has run so far")
    p.add_argument("--retest-survivors", action="store_true", help="copy this checkout's code and tests into the "
                   "work tree again and run the surviving mutants once more (after new tests)")
    p.add_argument("--planted", action="store_true", help="plant each bug of PLANTED and run the tests meant to catch it")
    p.add_argument("--only", default="", help="with --planted: these bugs only (comma-separated names)")
    args = p.parse_args(argv)
    if args.planted:
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PLANTED)
        unknown = [n for n in names if n not in PLANTED]
        if unknown:
            print(f"error: --only {unknown[0]!r}: choose from {', '.join(PLANTED)}", file=sys.stderr)
            return 2
        args.work.mkdir(parents=True, exist_ok=True)
        return 1 if run_planted(args.work, names) else 0
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    bad = [m for m in modules if m not in TESTS]
    if bad:
        print(f"error: --modules {','.join(bad)}: choose from {', '.join(TESTS)}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    tree = args.work / "tree"
    if not args.report:
        if args.retest_survivors:
            for m in modules:
                if (args.work / f"{m}.sqlite").exists():
                    print(f"[{m}] {reopen_survivors(args.work / f'{m}.sqlite')} survivors to run again", file=sys.stderr)
        if args.retest_survivors or not all((args.work / f"{m}.sqlite").exists() for m in modules) \
                or not tree.exists():
            copy_tree(tree)  # a fresh session starts from this checkout's code
        deadline = time.monotonic() + 60 * args.max_minutes
        for m in modules:
            run_module(m, args.work, tree, args.timeout, deadline, args.sample, args.seed)
    print("| module | mutants | in annotations | not sampled | killed | survived | timeout | pending | killed % | "
          "target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    survivors = []
    for m in modules:
        db = args.work / f"{m}.sqlite"
        if not db.exists():
            continue
        rows = outcomes(db, tree, m)
        count = {k: sum(r["outcome"] == k for r in rows)
                 for k in ("equivalent", "skipped", "killed", "survived", "timeout", None)}
        done = count["killed"] + count["survived"] + count["timeout"]
        score = 100 * (count["killed"] + count["timeout"]) / done if done else 0.0
        print(f"| {m} | {len(rows)} | {count['equivalent']} | {count['skipped']} | {count['killed']} | "
              f"{count['survived']} | {count['timeout']} | {count[None]} | {score:.1f} | {TARGETS.get(m, 85.0):.0f} |")
        survivors += [(m, r) for r in rows if r["outcome"] == "survived"]
    if survivors:
        print("\nSurviving mutants:")
        for m, r in sorted(survivors, key=lambda x: (x[0], x[1]["line"])):
            print(f"- quala/{m}.py:{r['line']} {r['operator']}: `{changed_line(r['diff'])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
