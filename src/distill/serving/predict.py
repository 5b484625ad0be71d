"""Batch scoring: Parquet or CSV in, Parquet out, streamed in chunks so the input may be larger
than memory. Only the serving columns (and `keep` columns) are read; the output appears whole or
not at all.

    >>> score("runs/demo/export-onnx", "impressions.parquet", "scores.parquet", keep=["user_id"])  # doctest: +SKIP
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distill.data.io import file_format, resolve_files
from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.outputs import no_space
from distill.serving.exported import ExportedModel

CSV_BLOCK_BYTES = 16 << 20


@dataclass
class ScoreSummary:
    rows: int = 0
    chunks: int = 0
    ignored: list[str] = field(default_factory=list)  # input columns the student does not read
    ignored_privileged: list[str] = field(default_factory=list)


def _columns_of(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16),
                            parse_options=_csv_parse(path))
    names = reader.schema.names
    reader.close()
    return names


def require_columns(path: Path, kind: str, needed: dict[str, str]) -> list[str]:
    """The column names of `path`; refused in one line when it cannot be read as `kind` or lacks a
    column of `needed` (column -> what it is for, as the line names it), checked in `needed`'s order."""
    try:
        have = _columns_of(path, kind)
    except (pa.ArrowInvalid, OSError) as e:
        raise DistillError(f"{path}: cannot read as {kind}: {str(e).strip().splitlines()[0]}") from None
    for c, what in needed.items():
        if c not in have:
            raise DistillError(f"{path}: missing {what} '{c}'")
    return have


def _csv_parse(path: Path) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def check_output(out: Path) -> None:
    """Refuse an output path that cannot be written before any row is scored, not after."""
    if out.is_dir() or not out.name or out.name in (".", ".."):
        raise DistillError(f"{out}: is a directory; -o takes the Parquet file to write, e.g. {out / 'scores.parquet'}")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise DistillError(f"{out}: cannot write there: {parent} {what}")


def iter_chunks(path: Path, kind: str, columns: list[str], types: dict[str, pa.DataType],
                chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` from one file, never the whole file at once."""
    try:
        yield from _chunks(path, kind, columns, types, chunk_rows)
    except OSError as e:  # e.g. "File too short": the file was truncated while it was read
        raise DistillError(f"{path}: cannot read as {kind}: {str(e).strip().splitlines()[0]}") from None


def _chunks(path: Path, kind: str, columns: list[str], types: dict[str, pa.DataType],
            chunk_rows: int) -> Iterator[pa.RecordBatch]:
    if kind == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns)
        return
    # Serving columns get fixed types: a CSV's type inference looks at the first block only, and
    # a category column that turns from numbers to strings later on would otherwise fail mid-file.
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                            parse_options=_csv_parse(path),
                            convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types))
    for batch in reader:
        for start in range(0, batch.num_rows, chunk_rows):
            yield batch.slice(start, chunk_rows)


def score(model: ExportedModel, data: str | Path, out: str | Path, keep: list[str] | None = None,
          chunk_rows: int = 65_536, fmt: str = "auto", on_ignored: Callable[[ScoreSummary], None] | None = None) -> ScoreSummary:
    """Predict every row of `data` (a file, directory or glob) and write `out` (Parquet): the `keep`
    columns, then prob | prob_<class>... | value."""
    keep = list(keep or [])
    out = Path(out)
    check_output(out)
    files = resolve_files(str(data))
    _check_output(out, files)
    summary = ScoreSummary()
    with whole_or_nothing(out, "the predictions", f"{data}: no rows to score") as write:
        for path in files:
            kind = file_format(path, fmt)
            needed = {c: "serving feature" if c in model.names else "--keep column" for c in model.names + keep}
            have = require_columns(path, kind, needed)
            for c, what in needed.items():
                if have.count(c) > 1:
                    raise DistillError(f"{path}: {have.count(c)} columns are named '{c}' (a {what}); rename or drop the extra ones")
            if not summary.chunks and not summary.ignored:
                summary.ignored = [c for c in have if c not in model.names and c not in keep]
                summary.ignored_privileged = [c for c in summary.ignored if c in model.privileged]
                if summary.ignored and on_ignored:
                    on_ignored(summary)  # said once, not once per chunk
            columns = list(dict.fromkeys(model.names + keep))
            # (a kept column keeps the type the file gives it, even when the student reads it too)
            types = {n: KINDS[model.kinds[n]].csv_type for n in model.names if n not in keep}
            try:
                for batch in iter_chunks(path, kind, columns, types, chunk_rows):
                    table = pa.Table.from_batches([batch])
                    cols = {k: table.column(k) for k in keep}
                    if table.num_rows:
                        pred = model.predict(table, where=str(path))
                        cols.update({k: pa.array(v) for k, v in model.columns(pred).items()})
                    else:
                        cols.update({k: pa.array([], pa.float32()) for k in model.outputs})
                    chunk = pa.table(cols)
                    write(chunk)
                    summary.rows += chunk.num_rows
                    summary.chunks += 1
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise DistillError(f"{path}: {str(e).strip().splitlines()[0]}") from None
    return summary


@contextmanager
def whole_or_nothing(out: Path, what: str, empty: str) -> Iterator[Callable[[pa.Table], None]]:
    """`with whole_or_nothing(out, ...) as write:` then `write(chunk)` per Parquet chunk. The chunks
    go to `<out>.partial`, renamed to `out` only when the block ends without an error; on any error
    (SIGTERM too, as SystemExit) `out` stays as it was and no partial file stays. `empty`: the
    error when no chunk was written; `what` names the output in the full-disk line. (`score` and
    `embed` both write through it.)"""
    tmp = out.with_name(out.name + ".partial")
    writer: pq.ParquetWriter | None = None

    def write(chunk: pa.Table) -> None:
        nonlocal writer
        if writer is None:
            writer = pq.ParquetWriter(tmp, chunk.schema)
        writer.write_table(chunk.cast(writer.schema))
    try:
        yield write
        if writer is None:
            raise DistillError(empty)
        writer.close()
        writer = None
        os.replace(tmp, out)
    except OSError as e:
        if no_space(e):  # the partial file goes in `finally`
            raise DistillError(f"{out}: no space left on device while writing {what}; nothing was written") from None
        raise
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()


def _check_output(out: Path, inputs: list[Path]) -> None:
    """Replace a Parquet file at `out`, never an input, a directory or a file of another kind."""
    if out.is_dir():
        raise DistillError(f"--output {out}: is a directory; give the Parquet file to write")
    if out.exists() and any(os.path.realpath(out) == os.path.realpath(p) for p in inputs):
        raise DistillError(f"--output {out}: is an input file; write the predictions elsewhere")
    if out.is_file():
        with open(out, "rb") as f:
            if f.read(4) != b"PAR1":
                raise DistillError(f"--output {out}: exists and is not a Parquet file; distill will not replace it")
