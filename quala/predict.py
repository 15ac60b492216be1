"""Batch predictions over large collections: JSONL or Parquet in, answers out in resumable parts.

The input is cut into a plan of parts (quala.rowfiles). One worker function, `run_part`, reads a part, answers its
good rows and writes them, plus the part's rejected rows with the reason, each file atomically. The same function
runs in this process, in a pool of worker processes (one ONNX Runtime session each), or in Ray actors: Ray only
wraps it. The output folder holds:

    _manifest.json        input files, options and model: a rerun with other settings is refused
    part-00000.jsonl ...  the answers of each part, in input order (or .parquet)
    _rejects-00000.jsonl  the part's bad rows and why (only for parts that have some)
    _summary.json         counts and speed, written at the end

Readers of a folder of Parquet files (pyarrow.parquet.read_table, ray.data.read_parquet) skip names starting with
'_' or '.', so the folder reads as one table.

A part's answer file is written last, so its presence means the part is done: a rerun skips it.

Answers depend on the batching only through a dynamically quantized INT8 graph, whose activation scales cover a
micro-batch: with --batch-size 1 (or a batch-invariant graph) each row's answer is the one `quala eval` gives.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from quala.config import LengthConfig, QualaError
from quala.data import unencodable
from quala.files import read_json, sha256, write_json_atomic
from quala.longdoc import PASSAGES
from quala.rowfiles import REQUIRED, Part, Row, count_rows, file_format, list_inputs, plan_parts, read_part, \
    read_rows, write_rows

PART_ROWS = 1000  # rows per part: ~10 s of work per part on one core, a few MB of memory
MAX_CHARS = 100_000  # longest question or context accepted (a 100,000-character context is ~170 windows)
MANIFEST = "_manifest.json"  # names starting with "_" or ".": not data to Parquet dataset readers
SUMMARY = "_summary.json"


@dataclass(frozen=True)
class Options:
    """Everything that decides the output; recorded in the manifest."""
    budget: str | None = None
    length_config: str | None = None
    top_k: int = 1
    batch_size: int = 32
    max_chars: int = MAX_CHARS
    part_rows: int = PART_ROWS
    limit: int | None = None
    output_format: str = "jsonl"
    passages: int | None = PASSAGES  # a long context is read in its best passages; None: every window


@dataclass(frozen=True)
class ModelSpec:
    """How each worker loads the model."""
    model: str | None = None
    runtime: str = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads per worker; None: chosen
    verify: bool = True
    dtype: str = "fp32"  # torch runtime only


@dataclass
class PartResult:
    index: int
    rows: int
    answered: int
    rejected: int
    seconds: float = 0.0


@dataclass
class Summary:
    output: str
    rows: int
    answered: int
    rejected: int
    parts: int
    parts_skipped: int
    seconds: float
    rows_per_second: float  # rows answered or rejected by this run, per second of this run
    workers: int
    threads: int
    engine: str  # 'process', 'processes' or 'ray'


def load_model(spec: ModelSpec):
    from quala.pipeline import load
    return load(spec.model, spec.runtime, threads=spec.threads, verify=spec.verify, dtype=spec.dtype)


# ---- the worker function ----

def run_part(qa, part: Part, options: Options, output: Path) -> PartResult:
    """Read one part, answer its good rows, write its rejects (if any) and then its answers."""
    t0 = time.perf_counter()
    rows = read_part(part)
    good, rejects = [], []
    for r in rows:
        reason = r.error or check_row(r.values, options.max_chars)
        (rejects if reason else good).append((r, reason))
    resolved: dict[str | None, tuple[LengthConfig | None, str]] = {}
    groups: dict[LengthConfig | None, list[int]] = {}
    for i, (r, _) in enumerate(good):
        budget = row_budget(r.values)
        if budget not in resolved:
            resolved[budget] = resolve(qa, budget, options)
        lc, reason = resolved[budget]
        if reason:
            rejects.append((r, reason))
        else:
            groups.setdefault(lc, []).append(i)
    records: dict[int, dict] = {}
    for lc, idx in groups.items():
        pairs = [(good[i][0].values["question"].strip(), good[i][0].values["context"]) for i in idx]
        for i, ranked in zip(idx, qa.answer_pairs(pairs, lc, options.top_k, options.batch_size,
                                                  passages=options.passages)):
            records[i] = answer_record(good[i][0], ranked, lc, options)
    rejects.sort(key=lambda x: x[0].row)
    if rejects:
        write_rows(rejects_path(output, part.index), [reject_record(r, why) for r, why in rejects], "jsonl")
    write_rows(part_path(output, part.index, options.output_format), [records[i] for i in sorted(records)],
               options.output_format, output_schema(options.top_k) if options.output_format == "parquet" else None)
    return PartResult(part.index, len(rows), len(records), len(rejects), time.perf_counter() - t0)


def check_row(values: dict, max_chars: int) -> str:
    """'' for a good row, else the reason it is rejected."""
    for name in REQUIRED:
        if values.get(name) is None:
            return f"missing field {name!r}"
    rid = values["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return f"field 'id' must be a string or an integer, got {type(rid).__name__}"
    if rid == "":
        return "field 'id' is empty"
    if isinstance(rid, str) and (problem := unencodable(rid)):
        return f"field 'id' {problem}"
    for name in ("question", "context"):
        text = values[name]
        if not isinstance(text, str):
            return f"field {name!r} must be a string, got {type(text).__name__}"
        if not text.strip():
            return f"field {name!r} is empty"
        if problem := unencodable(text):
            return f"field {name!r} {problem}"
        if len(text) > max_chars:
            return f"field {name!r} has {len(text)} characters, over the cap of {max_chars} (--max-chars)"
    budget = values.get("budget")
    if budget is not None and not isinstance(budget, str):
        return f"field 'budget' must be a string like 'balanced', '3x' or '20ms', got {type(budget).__name__}"
    return ""


def row_budget(values: dict) -> str | None:
    """A row's own budget; None where it has none, or a blank one (as the server reads a blank budget)."""
    budget = values.get("budget")
    return budget if isinstance(budget, str) and budget.strip() else None


def resolve(qa, budget: str | None, options: Options) -> tuple[LengthConfig | None, str]:
    """A row's length configuration (its own budget, else the run's), or the reason it has none."""
    try:
        if budget is None:
            lc, _ = qa.resolve(options.budget, options.length_config)
        else:
            lc, _ = qa.resolve(budget)
    except QualaError as e:
        return None, f"field 'budget': {e}"
    return lc, ""


def answer_record(row: Row, ranked: list, lc: LengthConfig | None, options: Options) -> dict:
    best = ranked[0]
    rec = {"id": str(row.values["id"]), "answer": best.text, "score": best.score, "start": best.start,
           "end": best.end, "length_config": str(lc) if lc else "full",
           "budget": row_budget(row.values) or options.budget}
    if options.top_k > 1:
        rec["answers"] = [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in ranked]
    return rec


def reject_record(row: Row, reason: str) -> dict:
    rid = row.values.get("id") if row.values else None
    if rid is not None:  # an id that is not UTF-8 text is written with its surrogates as \udcff escapes
        rid = str(rid).encode("utf-8", "backslashreplace").decode("utf-8")
    return {"file": row.file, "row": row.row, "id": rid, "reason": reason}


def output_schema(top_k: int):
    import pyarrow as pa
    answer = [("answer", pa.string()), ("score", pa.float64()), ("start", pa.int64()), ("end", pa.int64())]
    fields = [("id", pa.string())] + answer + [("length_config", pa.string()), ("budget", pa.string())]
    if top_k > 1:
        fields.append(("answers", pa.list_(pa.struct(answer))))
    return pa.schema(fields)


def part_path(output: Path, index: int, fmt: str) -> Path:
    return output / f"part-{index:05d}.{fmt}"


def rejects_path(output: Path, index: int) -> Path:
    return output / f"_rejects-{index:05d}.jsonl"


# ---- the run: plan, manifest, workers ----

def predict(input_path: str | Path, output: str | Path, options: Options = Options(), spec: ModelSpec = ModelSpec(),
            workers: int | None = None, ray_address: str | None = None, progress: bool = True) -> Summary:
    """Answer every row of input_path into the folder `output` (see the module docstring). ray_address: None for
    local processes, '' for a Ray instance started here, else the address of a Ray cluster."""
    t0 = time.perf_counter()
    files, in_fmt = list_inputs(input_path)
    output = Path(output)
    options = replace(options, output_format=output_format(output, in_fmt))
    check_options(options)
    parts = plan_parts(files, in_fmt, options.part_rows, options.limit)
    pending = [p for p in parts if not part_path(output, p.index, options.output_format).exists()]
    if ray_address is None:
        workers, threads = choose_workers(workers, spec.threads, len(pending))
    else:
        threads = spec.threads or 1
    spec = replace(spec, threads=threads)
    qa = load_model(spec if ray_address is None and workers == 1 else replace(spec, threads=1))
    resolve_default(qa, options)
    start_output(output, manifest(input_path, files, in_fmt, options, qa, parts))
    todo = {p.index for p in pending}
    results = [done_part(output, p, options.output_format) for p in parts if p.index not in todo]
    bar = progress_bar(sum(p.rows for p in parts), sum(r.rows for r in results), progress)

    def on_result(r: PartResult) -> None:
        results.append(r)
        bar.update(r.rows)
        bar.set_postfix(rejected=sum(x.rejected for x in results), refresh=False)

    try:
        if ray_address is not None:
            del qa
            workers = run_ray(ray_address, pending, spec, options, output, workers, on_result)
        elif workers == 1:
            for p in pending:
                on_result(run_part(qa, p, options, output))
        else:
            del qa
            run_processes(pending, spec, options, output, workers, on_result)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    ran = sum(r.rows for r in results if r.index in todo)
    summary = Summary(str(output), sum(r.rows for r in results), sum(r.answered for r in results),
                      sum(r.rejected for r in results), len(parts), len(parts) - len(pending), round(seconds, 3),
                      round(ran / seconds, 2), workers, threads,
                      "ray" if ray_address is not None else "process" if workers == 1 else "processes")
    write_json_atomic(output / SUMMARY, asdict(summary))
    return summary


def output_format(output: Path, in_fmt: str) -> str:
    """By the output folder's suffix (answers.parquet/), else the input's format."""
    if output.exists() and not output.is_dir():
        raise QualaError(f"{output}: is a file; --output names a folder of parts")
    return file_format(output) or in_fmt


def check_options(o: Options) -> None:
    for name in ("top_k", "batch_size", "max_chars", "part_rows"):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise QualaError(f"{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
    if o.limit is not None and o.limit < 1:
        raise QualaError(f"limit must be a whole number >= 1, got {o.limit!r}")
    if o.output_format == "parquet":
        from quala.rowfiles import pyarrow_parquet
        pyarrow_parquet()


def choose_workers(workers: int | None, threads: int | None, pending: int) -> tuple[int, int]:
    """Worker processes and intra-op threads each, workers x threads <= physical cores: by default one
    single-threaded session per core (faster than one session using every core; benchmarks/predict.py), never
    more workers than parts to do."""
    from quala.runtime import physical_cores
    cores = physical_cores()
    if workers is not None and workers < 1:
        raise QualaError(f"--workers must be at least 1, got {workers}")
    if workers is None:
        workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, pending))
    return workers, threads or max(1, cores // workers)


def resolve_default(qa, options: Options) -> None:
    """A bad --budget or --length-config fails the run before any work, not every row."""
    qa.resolve(options.budget, options.length_config)


def manifest(input_path, files: list[Path], fmt: str, options: Options, qa, parts: list[Part]) -> dict:
    root = Path(input_path)
    return {"input": {"path": str(root.resolve()), "format": fmt,
                      "files": [{"name": str(f.relative_to(root)) if f != root else f.name, "bytes": f.stat().st_size,
                                 "modified_ns": f.stat().st_mtime_ns} for f in files]},
            "options": asdict(options), "model": model_fingerprint(qa),
            "parts": len(parts), "rows": sum(p.rows for p in parts)}


def model_fingerprint(qa) -> dict:
    """The model's files that decide answers, by content: the same model moved elsewhere still resumes."""
    d = Path(qa.model_dir)
    weights = Path(getattr(qa.predictor, "path", d / "model.safetensors"))
    names = ("config.json", "tokenizer.json", "vocab.txt", "length_configs.json")
    files = [d / n for n in names if (d / n).is_file()] + [weights]
    return {"dir": str(d.resolve()), "sha256": {f.name: sha256(f) for f in files}}


def start_output(output: Path, new: dict) -> None:
    """Create the folder and its manifest, or check that the manifest there matches this run."""
    path = output / MANIFEST
    if output.is_dir() and any(output.iterdir()) and not path.is_file():
        raise QualaError(f"{output}: exists and is not a `quala predict` output folder (no {MANIFEST}); "
                         f"choose another --output")
    if path.is_file():
        old = read_json(path)
        diffs = manifest_differences(old if isinstance(old, dict) else {}, new)
        if diffs:
            raise QualaError(f"{output}: was written by a run with other settings ({'; '.join(diffs)}); rerun with "
                             f"the same ones to resume, or choose another --output")
        for tmp in output.glob(".*.tmp*"):  # left by a run killed while writing
            tmp.unlink()
        return
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, new)


def manifest_differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key, value in new["options"].items():
        was = old.get("options", {}).get(key)
        if was != value:
            diffs.append(f"{key.replace('_', '-')} {was!r} then, {value!r} now")
    if old.get("input", {}).get("format") != new["input"]["format"] or \
            old.get("input", {}).get("files") != new["input"]["files"]:
        diffs.append(f"the input files differ from {old.get('input', {}).get('path')!r} then "
                     f"(names, sizes or modification times)")
    if old.get("model", {}).get("sha256") != new["model"]["sha256"]:
        diffs.append(f"the model differs from {old.get('model', {}).get('dir')!r} then")
    return diffs


def done_part(output: Path, part: Part, fmt: str) -> PartResult:
    answered = count_rows(part_path(output, part.index, fmt))
    rejects = rejects_path(output, part.index)
    rejected = count_rows(rejects) if rejects.is_file() else 0
    return PartResult(part.index, part.rows, answered, rejected)


def progress_bar(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, unit="row", desc="predict", disable=not enabled, smoothing=0.1,
                file=sys.stderr)


# ---- where the worker function runs ----

_worker: dict = {}


def init_worker(spec: ModelSpec, options: Options, output: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which ends the pool
    _worker.update(qa=load_model(spec), options=options, output=output)


def run_part_in_worker(part: Part) -> PartResult:
    return run_part(_worker["qa"], part, _worker["options"], _worker["output"])


def run_processes(pending: list[Part], spec: ModelSpec, options: Options, output: Path, workers: int,
                  on_result) -> None:
    """A pool of spawned processes, each loading the model once (spawn: no ONNX Runtime threads are forked)."""
    with mp.get_context("spawn").Pool(workers, init_worker, (spec, options, output)) as pool:
        for result in pool.imap_unordered(run_part_in_worker, pending):
            on_result(result)


class RayPartWorker:
    """A Ray Data actor: the model loaded once, then run_part for each part it is given."""

    def __init__(self, spec: ModelSpec, options: Options, output: str):
        self.qa = load_model(spec)
        self.options = options
        self.output = Path(output)

    def __call__(self, batch: dict) -> dict:
        results = [run_part(self.qa, Part(**json.loads(p)), self.options, self.output) for p in batch["part"]]
        return {"result": [json.dumps(asdict(r)) for r in results]}


def run_ray(address: str, pending: list[Part], spec: ModelSpec, options: Options, output: Path,
            workers: int | None, on_result) -> int:
    """The same parts through Ray Data: one block per part, a fixed pool of actors each holding the model and
    spec.threads CPUs. The output folder must be one every node can write (a shared file system)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise QualaError("--ray needs Ray: pip install \"quala[ray]\"") from None
    started = not ray.is_initialized()
    if started:
        from quala.runtime import physical_cores
        kwargs = {"address": address} if address else {"num_cpus": physical_cores()}
        ray.init(include_dashboard=False, logging_level="warning", **kwargs)
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // spec.threads)
        workers = max(1, min(workers, len(pending)))
        if not pending:
            return workers
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts rows
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-run INFO lines and the note on progress bars
        ds = ray.data.from_items([{"part": json.dumps(asdict(p))} for p in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(RayPartWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=spec.threads, fn_constructor_args=(spec, options, str(output.resolve())))
        for row in ds.iter_rows():
            on_result(PartResult(**json.loads(row["result"])))
        return workers
    finally:
        if started:
            ray.shutdown()


# ---- reading an output folder ----

def read_answers(output: str | Path) -> list[dict]:
    """Every answer of an output folder, in input order (for checks and tests; a large output is better read part
    by part, or as a dataset: pyarrow.dataset / ray.data.read_parquet on the folder)."""
    output = Path(output)
    parts = sorted(p for p in output.glob("part-*") if file_format(p))
    return [row for p in parts for row in read_rows(p)]


def read_rejects(output: str | Path) -> list[dict]:
    return [row for p in sorted(Path(output).glob("_rejects-*.jsonl")) for row in read_rows(p)]
