"""Read a split (a file, a directory or a glob of Parquet or CSV files) into one Arrow table."""
from __future__ import annotations

import glob
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distill.errors import DistillError

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv"}


def resolve_files(spec: str, base: Path | None = None) -> list[Path]:
    """Expand a path, directory or glob into a sorted list of data files."""
    p = Path(spec)
    if base is not None and not p.is_absolute():
        p = base / p
    if any(c in spec for c in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(p)))]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES)
    elif p.exists():
        files = [p]
    else:
        raise DistillError(f"{p}: file not found")
    if not files:
        raise DistillError(f"{p}: no Parquet or CSV files there")
    return files


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    kind = SUFFIXES.get(path.suffix.lower()) or SUFFIXES.get(Path(path.stem).suffix.lower())  # x.csv.gz
    if kind is None:
        raise DistillError(f"{path}: cannot tell the format from the suffix; use .parquet or .csv (or set data.format)")
    return kind


def read_file(path: Path, fmt: str = "auto", columns: list[str] | None = None) -> pa.Table:
    kind = file_format(path, fmt)
    if path.stat().st_size == 0:
        raise DistillError(f"{path}: the file is empty")
    try:
        if kind == "parquet":
            table = pq.read_table(path)
        else:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{path}: cannot read as {kind}: {first}") from None
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DistillError(f"{path}: missing column '{missing[0]}' (it has: {', '.join(table.column_names[:20])})")
        table = table.select(columns)
    return table


def read_table(spec: str, fmt: str = "auto", columns: list[str] | None = None, base: Path | None = None) -> pa.Table:
    """All files of a split as one table; `columns` are required and selected in that order."""
    files = resolve_files(spec, base)
    tables = [read_file(f, fmt, columns) for f in files]
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # int64 in one file, string in another is a TypeError
        raise DistillError(_disagreement(spec, files, tables) or
                           f"{spec}: files of this split disagree on column types: {str(e).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise DistillError(f"{spec}: the split has no rows")
    return table


def _disagreement(spec: str, files: list[Path], tables: list[pa.Table]) -> str | None:
    """The first column whose type differs between two files of a split, said with both files."""
    first: dict[str, tuple[pa.DataType, Path]] = {}
    for f, t in zip(files, tables):
        for name, typ in zip(t.column_names, t.schema.types):
            seen, where = first.setdefault(name, (typ, f))
            if seen != typ and not _unifies(name, seen, typ):
                return (f"{spec}: column '{name}' is {seen} in {where.name} but {typ} in {f.name}; "
                        f"the files of a split must agree on each column's type")
    return None


def _unifies(name: str, a: pa.DataType, b: pa.DataType) -> bool:
    """Whether concat_tables' permissive promotion can join the two types (int32 and int64 can)."""
    try:
        pa.unify_schemas([pa.schema([(name, a)]), pa.schema([(name, b)])], promote_options="permissive")
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
