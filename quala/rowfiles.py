"""Row files for batch prediction: JSONL or Parquet, one file or a folder of them, cut into parts and read or
written one part at a time, so memory stays flat whatever the input size.

A part is a run of consecutive rows of one file. The plan of parts depends only on the input files and the part
size, so a rerun plans the same parts and can skip the ones already written.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quala.config import QualaError
from quala.files import atomic_write

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
COLUMNS = ("id", "question", "context", "budget")  # read from the input; budget is optional
REQUIRED = ("id", "question", "context")


@dataclass(frozen=True)
class Part:
    index: int
    path: str
    format: str  # 'jsonl' or 'parquet'
    first_row: int  # index of the part's first row in its file (JSONL: line number - 1)
    rows: int
    offset: int = 0  # JSONL: byte offset of the first row


@dataclass(frozen=True)
class Row:
    file: str
    row: int  # index in its file
    values: dict | None  # the fields read, or None when the row could not be read
    error: str = ""  # why it could not be read


def pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QualaError("Parquet files need pyarrow: pip install \"quala[parquet]\"") from None
    return pq


def file_format(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def list_inputs(path: str | os.PathLike) -> tuple[list[Path], str]:
    """A file, or a folder's .jsonl/.parquet files (sorted by name; names starting with '.' or '_' skipped)."""
    path = Path(path)
    if path.is_file():
        fmt = file_format(path)
        if fmt is None:
            raise QualaError(f"{path}: unknown input format {path.suffix!r}: give a .jsonl or .parquet file")
        return [path], fmt
    if not path.is_dir():
        raise QualaError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and file_format(p) and p.name[0] not in "._")
    if not files:
        raise QualaError(f"{path}: no .jsonl or .parquet files in this folder")
    formats = {file_format(p) for p in files}
    if len(formats) > 1:
        raise QualaError(f"{path}: holds both JSONL and Parquet files; give one format per folder")
    return files, formats.pop()


def plan_parts(files: list[Path], fmt: str, part_rows: int, limit: int | None = None) -> list[Part]:
    """Parts of at most part_rows rows, never crossing files, over the first `limit` rows (default all)."""
    parts: list[Part] = []
    left = limit if limit is not None else float("inf")
    for path in files:
        if left <= 0:
            break
        spans = jsonl_spans(path, part_rows, left) if fmt == "jsonl" else parquet_spans(path, part_rows, left)
        for first, rows, offset in spans:
            parts.append(Part(len(parts), str(path), fmt, first, rows, offset))
            left -= rows
    return parts


def jsonl_spans(path: Path, part_rows: int, limit: float) -> Iterator[tuple[int, int, int]]:
    """(first line, lines, byte offset) of each part: one streaming pass over the file's lines."""
    n, offset, start, start_offset = 0, 0, 0, 0
    with open(path, "rb") as f:
        for line in f:
            if n == limit:
                break
            if n - start == part_rows:
                yield start, n - start, start_offset
                start, start_offset = n, offset
            n += 1
            offset += len(line)
    if n > start:
        yield start, n - start, start_offset


def parquet_spans(path: Path, part_rows: int, limit: float) -> Iterator[tuple[int, int, int]]:
    pq = pyarrow_parquet()
    try:
        meta = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for files that are not Parquet
        raise QualaError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in meta.schema_arrow.names]
    if missing:
        raise QualaError(f"{path}: no column {', '.join(map(repr, missing))} (columns: "
                         f"{', '.join(meta.schema_arrow.names)}); each row needs id, question and context")
    total = int(min(meta.metadata.num_rows, limit))
    for start in range(0, total, part_rows):
        yield start, min(part_rows, total - start), 0


def read_part(part: Part) -> list[Row]:
    return read_jsonl_part(part) if part.format == "jsonl" else read_parquet_part(part)


def read_jsonl_part(part: Part) -> list[Row]:
    rows = []
    with open(part.path, "rb") as f:
        f.seek(part.offset)
        for i in range(part.first_row, part.first_row + part.rows):
            rows.append(parse_jsonl_line(part.path, i, f.readline()))
    return rows


def parse_jsonl_line(path: str, i: int, line: bytes) -> Row:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Row(path, i, None, f"line {i + 1}: not UTF-8 text (byte {e.start})")
    if not text.strip():
        return Row(path, i, None, f"line {i + 1}: empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Row(path, i, None, f"line {i + 1}: malformed JSON at column {e.colno}: {e.msg}")
    if not isinstance(obj, dict):
        return Row(path, i, None, f"line {i + 1}: expected a JSON object, got {type(obj).__name__}")
    return Row(path, i, obj)


def read_parquet_part(part: Part) -> list[Row]:
    """The part's rows, reading only the row groups that hold them, a batch at a time."""
    pq = pyarrow_parquet()
    f = pq.ParquetFile(part.path)
    columns = [c for c in COLUMNS if c in f.schema_arrow.names]
    groups, group_start, skip = [], 0, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if group_start + n > part.first_row and group_start < part.first_row + part.rows:
            if not groups:
                skip = part.first_row - group_start
            groups.append(g)
        group_start += n
    rows: list[Row] = []
    i = part.first_row
    for batch in f.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip, part.rows - len(rows))
        skip = 0
        for values in batch.to_pylist():
            rows.append(Row(part.path, i, values))
            i += 1
        if len(rows) == part.rows:
            break
    return rows


def write_rows(path: str | os.PathLike, rows: list[dict], fmt: str, schema=None) -> None:
    """One part, written atomically: JSONL, or Parquet with the given pyarrow schema."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return
    pq = pyarrow_parquet()
    import pyarrow as pa
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every row of one output part (for counting, comparing and tests)."""
    path = Path(path)
    if file_format(path) == "parquet":
        return pyarrow_parquet().read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def count_rows(path: str | os.PathLike) -> int:
    path = Path(path)
    if file_format(path) == "parquet":
        return pyarrow_parquet().ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
