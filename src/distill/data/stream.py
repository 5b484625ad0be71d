"""Training data larger than memory: Parquet read row group by row group, never whole.

- Encoders are fitted in one streaming pass (vocabulary counts, numeric sums), or not at all for
  hashed features (`hash_buckets`), which is what very large vocabularies should use.
- Shuffling is bounded: each epoch visits the row groups of all files in a random order (seeded by
  (seed, epoch)), fills a buffer of at least `data.shuffle_buffer` rows, shuffles the rows inside it
  and emits its batches; rows left over (less than a batch) carry into the next buffer. Every row is
  seen exactly once per epoch. Rows far apart in the files meet in a batch only if their row groups
  land in the same buffer: for a full shuffle, write the files shuffled or raise the buffer.
- Memory: about shuffle_buffer rows + `data.prefetch` row groups, encoded, whatever the file size.
- A background thread reads and encodes the next row groups while the model trains (Arrow and
  numpy release the GIL for the heavy parts).
"""
from __future__ import annotations

import copy
import math
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from distill.config import Config
from distill.data.batch import Batch, Encoded
from distill.data.dataset import Encoders
from distill.data.encoders import CategoryIndex, FeatureEncoder, LabelEncoder, _as_strings, _bags, _categories, _numbers
from distill.data.io import file_format, resolve_files
from distill.errors import DistillError


@dataclass(frozen=True)
class Unit:
    """One row group of one file: the unit of reading and of shuffling."""

    path: Path
    group: int
    rows: int
    offset: int  # row number of its first row in the whole split


def parquet_units(spec: str, fmt: str) -> list[Unit]:
    units, offset = [], 0
    for f in resolve_files(spec):
        if file_format(f, fmt) != "parquet":
            raise DistillError(f"{f}: data.streaming reads Parquet (row groups); convert CSV files to Parquet first")
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise DistillError(f"{f}: cannot read as parquet: {str(e).splitlines()[0]}") from None
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                units.append(Unit(f, g, n, offset))
                offset += n
    if not units:
        raise DistillError(f"{spec}: the split has no rows")
    return units


def read_unit(unit: Unit, columns: list[str]) -> pa.Table:
    table = pq.ParquetFile(unit.path).read_row_group(unit.group)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DistillError(f"{unit.path}: missing column '{missing[0]}'")
    return table.select(columns)


def fit_streaming(cfg: Config) -> tuple[Encoders, dict[str, int]]:
    """Fit the encoders in one pass over the training row groups; also count filled values."""
    units = parquet_units(cfg.data.train, cfg.data.format)
    columns = [f.name for f in cfg.features] + [cfg.task.label]
    counts: dict[str, Counter] = {f.name: Counter() for f in cfg.features if f.type != "numeric" and not f.hash_buckets}
    sums: dict[str, list[float]] = {f.name: [0.0, 0.0, 0.0] for f in cfg.features if f.type == "numeric"}
    missing: Counter = Counter()
    classes: set[str] = set()
    label_sums = [0.0, 0.0, 0.0]
    for unit in units:
        table = read_unit(unit, columns)
        where = f"{unit.path} (row group {unit.group})"
        for f in cfg.features:
            col = table.column(f.name)
            if f.type == "numeric":
                x, bad = _numbers(col, f.name, where)
                good = x[~bad]
                s = sums[f.name]
                s[0] += good.size
                s[1] += float(good.sum())
                s[2] += float((good * good).sum())
                missing[f.name] += int(bad.sum())
            elif f.name in counts:
                values = _categories(col, f.name, where) if f.type == "categorical" else pc.list_flatten(_bags(col, f.name, where, f.separator))
                vc = pc.value_counts(values.drop_null())
                counts[f.name].update(dict(zip(map(str, vc.field("values").to_pylist()), vc.field("counts").to_pylist())))
        label = table.column(cfg.task.label)
        if cfg.task.type == "multiclass":
            classes.update(v for v in pc.unique(_as_strings(label, cfg.task.label, where)).to_pylist() if v is not None)
        elif cfg.task.type == "regression":
            y, _ = _numbers(label, cfg.task.label, where)
            label_sums[0] += y.size
            label_sums[1] += float(y.sum())
            label_sums[2] += float((y * y).sum())
    feats = {}
    for f in cfg.features:
        enc = FeatureEncoder(f.name, f.type, max_len=f.max_len, separator=f.separator)
        if f.type == "numeric":
            n, s1, s2 = sums[f.name]
            if n:
                enc.mean = s1 / n
                enc.std = math.sqrt(max(s2 / n - enc.mean ** 2, 0.0)) or 1.0
        else:
            vocab = None if f.hash_buckets else sorted(v for v, c in counts[f.name].items() if c >= f.min_count)
            enc.index = CategoryIndex(vocab=vocab, hash_buckets=f.hash_buckets)
        feats[f.name] = enc
    label_enc = LabelEncoder(cfg.task.type)
    if cfg.task.type == "multiclass":
        label_enc.classes = sorted(classes)
        if len(label_enc.classes) < 2:
            raise DistillError(f"{cfg.data.train}: label '{cfg.task.label}' has fewer than 2 classes")
    elif cfg.task.type == "regression":
        n, s1, s2 = label_sums
        label_enc.mean = s1 / n
        label_enc.std = math.sqrt(max(s2 / n - label_enc.mean ** 2, 0.0)) or 1.0
    return Encoders(feats, label_enc), {k: v for k, v in missing.items() if v}


def concat(chunks: list[Encoded]) -> Encoded:
    """Stack encoded chunks; multi-valued features are padded to the widest chunk."""
    feats = {}
    for name in chunks[0].features:
        parts = [c.features[name] for c in chunks]
        if parts[0].dtype == torch.int64 and parts[0].dim() == 2:  # multi_categorical (N, L)
            width = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
        feats[name] = torch.cat(parts)
    cat = lambda attr: None if getattr(chunks[0], attr) is None else torch.cat([getattr(c, attr) for c in chunks])  # noqa: E731
    return Encoded(feats, cat("y"), cat("weight"), None, cat("soft"))


class StreamingLoader:
    """Batches streamed from Parquet row groups with a bounded shuffle buffer (see module doc)."""

    def __init__(self, cfg: Config, encoders: Encoders, soft_label: str | None = None):
        self.cfg, self.encoders, self.soft_label = cfg, encoders, soft_label
        self.batch_size, self.seed = cfg.train.batch_size, cfg.train.seed
        self.buffer_rows, self.prefetch = cfg.data.shuffle_buffer, cfg.data.prefetch
        self.units = parquet_units(cfg.data.train, cfg.data.format)
        self.num_rows = sum(u.rows for u in self.units)
        self.features: list[str] | None = None  # encode only these (None: all)
        self.columns = self._columns()

    def _columns(self) -> list[str]:
        names = self.features if self.features is not None else [f.name for f in self.cfg.features]
        return names + [self.cfg.task.label] + [c for c in (self.cfg.task.weight, self.soft_label) if c]

    def narrowed(self, names: list[str]) -> "StreamingLoader":
        """The same batches, reading and encoding only the features `names`."""
        other = copy.copy(self)
        other.features = list(names)
        other.columns = other._columns()
        return other

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def _encode(self, unit: Unit) -> tuple[Encoded, torch.Tensor]:
        table = read_unit(unit, self.columns)
        enc = self.encoders.encode(self.cfg, table, f"{unit.path} (row group {unit.group})", features=self.features,
                                   soft_label=self.soft_label)
        return enc, torch.arange(unit.offset, unit.offset + unit.rows)

    def _chunks(self, units: list[Unit]) -> Iterator[tuple[Encoded, torch.Tensor]]:
        """Encoded row groups in `units` order, read `prefetch` ahead on a background thread."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-read") as pool:
            ahead: deque = deque()
            todo = iter(units)
            for unit in todo:
                ahead.append(pool.submit(self._encode, unit))
                if len(ahead) > self.prefetch:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed * 1_000_003 + epoch)
        order = [self.units[i] for i in rng.permutation(len(self.units))]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        pending: list[tuple[Encoded, torch.Tensor]] = []
        pending_rows, b = 0, 0
        chunks = self._chunks(order)
        exhausted = False
        while not exhausted or pending_rows:
            for chunk in chunks:
                pending.append(chunk)
                pending_rows += len(chunk[1])
                if pending_rows >= self.buffer_rows:
                    break
            else:
                exhausted = True
            if not pending:
                break
            buf, rows = concat([c for c, _ in pending]), torch.cat([r for _, r in pending])
            perm = torch.randperm(len(rows), generator=gen)
            full = len(rows) if exhausted else len(rows) // self.batch_size * self.batch_size
            for s in range(0, full, self.batch_size):
                if b >= start:
                    idx = perm[s:s + self.batch_size]
                    batch = buf.batch(idx)
                    batch.index = rows[idx]
                    yield batch
                b += 1
            rest = perm[full:]
            pending = [(buf.batch(rest).as_encoded(), rows[rest])] if len(rest) else []
            pending_rows = len(rest)
            if exhausted:
                break

    def ordered(self, batch_size: int = 8192) -> Iterator[Batch]:
        for enc, rows in self._chunks(self.units):
            for s in range(0, len(rows), batch_size):
                idx = torch.arange(s, min(len(rows), s + batch_size))
                batch = enc.batch(idx)
                batch.index = rows[idx]
                yield batch
