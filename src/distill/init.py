"""`distill init DATA`: a commented starter config from a table's columns.

Types are guessed from the Arrow type, the name and the number of distinct values in a sample;
each feature line says why, so the user can check the guess. Nothing is marked privileged: only
the user knows which columns are missing at serving time.

    >>> g = guess(read_sample("train.parquet"))          # doctest: +SKIP
    >>> g.label, g.task, [(c.name, c.type) for c in g.columns]
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from distill.config import Config, config_from_dict
from distill.data.io import file_format, resolve_files
from distill.errors import DistillError

SAMPLE_ROWS = 100_000
# Label names, most specific first (a table with both `click` and `label` most likely means `click`).
LABEL_NAMES = ("click", "clicked", "is_click", "conversion", "converted", "is_conversion", "purchase",
               "purchased", "label", "target", "y", "outcome", "class")
ID_NAME = re.compile(r"(^|_)(id|uid|sid|key|code)$|_id$|^id_", re.I)
HISTORY_NAME = re.compile(r"(hist|seq|recent|prev|past|behav|clicked_|viewed|watched)", re.I)
COUNT_NAME = re.compile(r"(count|cnt|clicks|views|num_|n_|seconds|secs|duration|price|amount|revenue|rate|ratio|score|sum|avg|mean)", re.I)
FEW_VALUES = 50  # an integer column with at most this many distinct values is taken as a code
HASH_ABOVE = 100_000  # a categorical with more distinct values than this gets hashed
SEPARATORS = ("|", ";", ",", " ")
GROUP_NAMES = ("user_id", "uid", "userid", "user", "query_id", "session_id")


@dataclass
class ColumnGuess:
    name: str
    type: str | None  # categorical | numeric | multi_categorical | sequence | None (left out)
    why: str
    separator: str | None = None
    hash_buckets: int | None = None
    shares: str | None = None  # sequence: the categorical column whose ids it holds


@dataclass
class Guesses:
    label: str | None
    task: str | None
    task_why: str
    columns: list[ColumnGuess] = field(default_factory=list)
    group: str | None = None
    rows: int = 0  # rows sampled
    train_rows: int = 0  # rows in the whole training split, where the files say (Parquet), else the sample


def read_sample(spec: str, rows: int = SAMPLE_ROWS) -> pa.Table:
    """The first `rows` rows of the first file of `spec`: enough to guess types, cheap on big data."""
    path = resolve_files(spec)[0]
    kind = file_format(path)
    try:
        if kind == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=rows)
            first = next(batches, None)
            return pa.Table.from_batches([first]) if first is not None else pq.read_schema(path).empty_table()
        reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        got, n = [], 0
        for batch in reader:
            got.append(batch)
            n += batch.num_rows
            if n >= rows:
                break
        return pa.Table.from_batches(got, schema=reader.schema).slice(0, rows)
    except (pa.ArrowInvalid, OSError) as e:
        raise DistillError(f"{path}: cannot read as {kind}: {str(e).strip().splitlines()[0]}") from None


def count_rows(spec: str) -> int | None:
    """Rows of a Parquet split from the files' footers (no data read); None for CSV."""
    files = resolve_files(spec)
    if any(file_format(f) != "parquet" for f in files):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _distinct(col: pa.ChunkedArray) -> int:
    return len(pc.unique(col.drop_null()))


def _is_01(col: pa.ChunkedArray) -> bool:
    t = col.type
    if pa.types.is_boolean(t):
        return True
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)) or col.null_count:
        return False
    values = set(pc.unique(col).to_pylist())
    return bool(values) and values <= {0, 1}


def guess_column(name: str, col: pa.ChunkedArray) -> ColumnGuess:
    t, rows = col.type, len(col)
    non_null = rows - col.null_count
    if non_null == 0:
        return ColumnGuess(name, None, "left out: every value is missing")
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ColumnGuess(name, "multi_categorical", f"{t}: a bag of values")
    n = _distinct(col)
    if n <= 1:
        return ColumnGuess(name, None, "left out: one value only, it carries no information")
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_temporal(t):
        return ColumnGuess(name, None, f"left out: {t} (derive hour / weekday columns from it if they matter)")
    if pa.types.is_boolean(t):
        return ColumnGuess(name, "categorical", "bool")
    unique_per_row = n == non_null and non_null >= 100
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        sep = _separator(col)
        if sep is not None:
            return ColumnGuess(name, "multi_categorical", f"strings of values separated by {sep!r}", separator=sep)
        if unique_per_row:
            return ColumnGuess(name, None, f"left out: {n:,} distinct strings in {non_null:,} rows (a row identifier or free text)")
        return _categorical(name, f"{t}, {n:,} distinct values", n)
    if pa.types.is_integer(t):
        if ID_NAME.search(name):
            if unique_per_row:
                return ColumnGuess(name, None, f"left out: an id unique to each row ({n:,} values)")
            return _categorical(name, f"{t}, {n:,} distinct values, named like an id", n)
        if COUNT_NAME.search(name):
            return ColumnGuess(name, "numeric", f"{t}, named like a count or amount")
        if n <= FEW_VALUES:
            return _categorical(name, f"{t}, {n} distinct values: a code", n)
        return ColumnGuess(name, "numeric", f"{t}, {n:,} distinct values")
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return ColumnGuess(name, "numeric", f"{t}")
    return ColumnGuess(name, None, f"left out: type {t} is not supported")


def _categorical(name: str, why: str, n: int) -> ColumnGuess:
    if n > HASH_ABOVE:
        buckets = 1 << (2 * n - 1).bit_length()  # a power of two, at least twice the values seen
        return ColumnGuess(name, "categorical", why + "; hashed, the vocabulary would be large", hash_buckets=buckets)
    return ColumnGuess(name, "categorical", why)


def _separator(col: pa.ChunkedArray) -> str | None:
    """A separator that splits many values into pieces that repeat across rows (tags, not prose)."""
    values = [v for v in col.drop_null().slice(0, 5000).to_pylist()]
    for sep in SEPARATORS:
        with_sep = [v for v in values if sep in v.strip()]
        if len(with_sep) < 0.1 * len(values):
            continue
        pieces = [p for v in values for p in v.split(sep) if p]
        # tags repeat a lot; words of free text or parts of numbers ("1,5") much less
        if pieces and len(set(pieces)) <= 0.2 * len(pieces) and max(len(v.split(sep)) for v in values) <= 64:
            return sep
    return None


def guess_task(name: str, col: pa.ChunkedArray) -> tuple[str, str]:
    t = col.type
    if _is_01(col):
        return "binary", "its values are 0 and 1"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t) or pa.types.is_boolean(t):
        return "multiclass", f"{_distinct(col)} distinct labels"
    n = _distinct(col)
    if pa.types.is_integer(t) and n <= FEW_VALUES:
        return "multiclass", f"{n} distinct integer labels"
    return "regression", f"{t} with {n:,} distinct values"


def guess(table: pa.Table, label: str | None = None, ask: Callable[[list[str]], str] | None = None,
          where: str = "data") -> Guesses:
    """Guess the label (unless given), the task and each column's feature type."""
    names = table.column_names
    why_label = "given"
    if label is not None and label not in names:
        close = difflib.get_close_matches(label, names, n=1)
        raise DistillError(f"--label: '{label}' is not a column of {where}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if label is None:
        label, why_label = _guess_label(table)
    if label is None:
        if ask is None:
            raise DistillError(f"{where}: cannot tell which column is the label; pass --label COLUMN "
                               f"(columns: {', '.join(names[:30])})")
        label, why_label = ask(names), "chosen"
        if label not in names:
            raise DistillError(f"'{label}' is not a column of {where}")
    task, why_task = guess_task(label, table.column(label))
    columns = [guess_column(n, table.column(n)) for n in names if n != label]
    _guess_sequences(table, columns)
    if not any(c.type for c in columns):
        raise DistillError(f"{where}: no column besides the label '{label}' looks usable as a feature")
    lower = {n.lower(): n for n in names if n != label}
    group = next((lower[g] for g in GROUP_NAMES if g in lower), None)
    return Guesses(label, task, f"label {why_label}; {task}: {why_task}", columns, group, table.num_rows)


def _guess_sequences(table: pa.Table, columns: list[ColumnGuess]) -> None:
    """A list column whose values are mostly the values of a categorical column is that column's
    history: a sequence sharing its ids (data/kinds/sequence.py); a list column named like a
    history is a sequence of its own ids. Other list columns stay bags. A string column of tokens
    joined by a separator ("12 7 33", "12|7|33") whose tokens are mostly another column's values is a
    sequence too; otherwise it stays a bag (a string is not guessed a history from its name alone)."""
    cats = [c.name for c in columns if c.type == "categorical"]
    for c in columns:
        t = table.column(c.name).type
        joined = c.type == "multi_categorical" and c.separator is not None
        if c.type != "multi_categorical" or not (joined or pa.types.is_list(t) or pa.types.is_large_list(t)):
            continue
        try:
            flat = pc.split_pattern(table.column(c.name), c.separator) if joined else table.column(c.name)
            values = set(pc.unique(pc.cast(pc.list_flatten(flat), pa.string())).to_pylist()) - {None, ""}
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        best, share = 0.0, None
        for name in cats:
            other = set(pc.unique(pc.cast(table.column(name), pa.string())).to_pylist()) - {None}
            overlap = len(values & other) / max(1, len(values | other))  # Jaccard: a wider id column is a worse match
            if overlap > best:
                best, share = overlap, name
        if best >= 0.5:
            c.type, c.shares = "sequence", share
            what = f"strings of values of '{share}' separated by {c.separator!r}" if joined else f"{t}: a list of the values of '{share}'"
            c.why = f"{what} ({best:.0%} overlap): its history, most recent first?"
        elif HISTORY_NAME.search(c.name) and not joined:
            c.type, c.why = "sequence", f"{t}: a list named like a history (most recent first?)"


def _guess_label(table: pa.Table) -> tuple[str | None, str]:
    lower = {n.lower(): n for n in table.column_names}
    for name in LABEL_NAMES:
        if name in lower:
            return lower[name], "guessed from its name"
    binary = [n for n in table.column_names if _is_01(table.column(n))]
    if len(binary) == 1:
        return binary[0], "the only 0/1 column"
    return None, ""


# ----------------------------------------------------------------------------- the YAML


def _y(value: str) -> str:
    """A YAML scalar: bare when safe, else a JSON string (valid YAML)."""
    if re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./\-]*", value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _sibling(train: str, split: str) -> str | None:
    """valid.parquet / test.parquet beside train.parquet, when they exist."""
    p = Path(train)
    if "train" not in p.name:
        return None
    for word in {"valid": ("valid", "validation", "val", "dev"), "test": ("test",)}[split]:
        candidate = p.with_name(p.name.replace("train", word))
        if candidate.exists():
            return str(candidate)
    return None


def render(g: Guesses, data: str, config_path: str) -> str:
    metric = {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}[g.task or "binary"]
    # steps of one epoch at batch_size 1024; no floor above that, or a small file's 2 epochs end before
    # λ reaches its target (validate then warns about the config init just wrote)
    ramp = max(1, math.ceil(max(g.train_rows, g.rows) / 1024))
    valid, test = _sibling(data, "valid"), _sibling(data, "test")
    used = [c for c in g.columns if c.type]
    width = max(len(_feature(c)) for c in used) + 2
    lines = [
        f"# distill config written by `distill init` from {data} ({g.rows:,} rows sampled).",
        "# Every type below is a guess with its reason beside it: check them, then mark the privileged",
        "# features (see `features`).   Check without training:  distill validate " + config_path,
        "#                               Train:                    distill train " + config_path,
        "",
        "data:",
        _c(f"  train: {_y(data)}", "a file, a directory or a glob of Parquet / CSV files"),
        _c(f"  valid: {_y(valid)}" if valid else "  # valid: path/to/valid.parquet", "early stopping and the validation curves"),
        _c(f"  test: {_y(test)}" if test else "  # test: path/to/test.parquet", "the final metrics and the report's calibration plot"),
        "",
        "task:",
        _c(f"  type: {g.task}", f"binary | multiclass | regression ({g.task_why})"),
        _c(f"  label: {_y(g.label or '')}", ""),
        _c(f"  # group: {_y(g.group)}" if g.group else "  # group: user_id",
           "uncomment for GAUC: the AUC per group (e.g. per user), weighted by rows"),
        _c("  # weight: row_weight", "a column of per-row weights"),
        "",
        "# One entry per input column. categorical: ids and codes, an embedding per value; numeric:",
        "# standardised, a missing value is filled and flagged; multi_categorical: a bag of values (a list",
        "# column or a string with a separator), embeddings averaged; sequence: the ids seen before this row,",
        "# most recent first (shares: the candidate's column; encoder: mean | din | self_attention).",
        "# privileged: true marks a column that is in the training logs but NOT available when serving",
        "# (post-click signals such as dwell time, user x item statistics a two-tower model cannot use).",
        "# Only the teacher reads it; the student never can. Nothing is privileged until you say so, and",
        "# privileged-features distillation needs at least one.",
        "features:",
    ]
    for c in g.columns:
        if c.type:
            lines.append(f"  {_feature(c):<{width}}# {c.why}")
    for c in g.columns:
        if not c.type:
            lines.append(f"  # - {{name: {_y(c.name)}}}    # {c.why}")
    lines += [
        "",
        "# The teacher may be bigger and reads every feature (privileged ones included); the student reads",
        "# the serving features only and is what you deploy. Models: dnn | wide_deep | deepfm | dcn_v2 | two_tower | din.",
        "teacher:",
        "  model: dnn",
        "  hidden: [512, 256, 128]",
        "  embedding_dim: 16",
        "student:",
        "  model: dnn",
        "  hidden: [256, 128]",
        "  embedding_dim: 16",
        "",
        "distillation:",
        "  mode: sync    # sync: teacher and student together | async: teacher first | offline: a score column | none",
        "  weight: 0.5    # λ: student loss = (1 − λ)·L_s (hard labels) + λ·L_d (the teacher's soft labels)",
        f"  schedule: {{type: linear, steps: {ramp}}}    # ramp λ up from 0 over about the first epoch, while the teacher is still untrained",
        "  temperature: 1.0",
        "",
        "train:",
        "  epochs: 2",
        "  batch_size: 1024",
        "  lr: 0.001",
        "  seed: 0",
        f"  early_stopping: {{metric: {metric}, patience: 2}}    # on the valid split; the best weights are kept",
        "",
        f"output: runs/{_y(Path(config_path).stem)}    # the run directory",
    ]
    return "\n".join(lines) + "\n"


def _c(line: str, comment: str, width: int = 44) -> str:
    """`line` with its comment in a column, so the reasons read as one list."""
    return f"{line:<{width - 2}}  # {comment}" if comment else line  # YAML needs the space before '#'


def _feature(c: ColumnGuess) -> str:
    extra = (f", separator: {json.dumps(c.separator)}" if c.separator and c.separator != " " else "") + \
            (f", hash_buckets: {c.hash_buckets}" if c.hash_buckets else "") + \
            (f", shares: {_y(c.shares)}" if c.shares else "")
    return f"- {{name: {_y(c.name)}, type: {c.type}{extra}, privileged: false}}"


def init_config(data: str, output: str | Path = "config.yaml", label: str | None = None, force: bool = False,
                ask: Callable[[list[str]], str] | None = None) -> Guesses:
    """Guess, write `output` (refusing to replace a file unless `force`), and return the guesses."""
    output = Path(output)
    if output.exists() and not force:
        raise DistillError(f"{output}: exists; pass --force to replace it or -o to write elsewhere")
    g = guess(read_sample(data), label, ask, where=data)
    g.train_rows = count_rows(data) or g.rows
    text = render(g, data, str(output))
    config_from_dict(yaml.safe_load(text), source=f"the config for {data}")  # never write one that does not load
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, output)
    return g


def separator_warnings(cfg: Config) -> list[str]:
    """A bag or sequence given as strings whose `separator` is not the one the values use: each whole
    string would be one (unseen) id, which trains without an error. Checked on the first rows of train."""
    strings = [f for f in cfg.features if f.type in ("multi_categorical", "sequence")]
    if not strings:
        return []
    sample = read_sample(cfg.data.train)
    out = []
    for f in strings:
        if f.name not in sample.column_names or not (pa.types.is_string(sample.column(f.name).type)
                                                     or pa.types.is_large_string(sample.column(f.name).type)):
            continue
        values = [v for v in sample.column(f.name).drop_null().to_pylist() if v.strip()]
        found = _separator(sample.column(f.name))
        if values and found not in (None, f.separator) and not any(f.separator in v.strip() for v in values):
            share = sum(found in v for v in values) / len(values)
            out.append(f"feature '{f.name}': none of the first {sample.num_rows:,} rows of train holds its separator "
                       f"{f.separator!r} but {share:.0%} hold {found!r}: set separator: {found!r}, or each whole string "
                       f"is read as one id")
    return out
