"""Training data larger than memory: Parquet read row group by row group, never whole.

- Encoders are fitted in one streaming pass (vocabulary counts, numeric moments: the code that fits
  an in-memory split), with no vocabulary for hashed features (`hash_buckets`), which is what
  very large vocabularies should use.
- Shuffling is bounded: each epoch visits the row groups of all files in a random order (seeded by
  (seed, epoch)), fills a buffer of at least `data.shuffle_buffer` rows, shuffles the rows inside it
  and emits its batches; rows left over (less than a batch) carry into the next buffer. Every row is
  seen exactly once per epoch. Rows far apart in the files meet in a batch only if their row groups
  land in the same buffer: for a full shuffle, write the files shuffled or raise the buffer.
- Memory: about shuffle_buffer rows + `data.prefetch` row groups, encoded, whatever the file size.
- A background thread reads and encodes the next row groups while the model trains (Arrow and
  numpy release the GIL for the heavy parts).
- On a GPU (`placed`): each shuffle buffer is copied to the device once and its batches gathered
  there, when a buffer takes at most train.device_memory_share of the free GPU memory (decided at
  the first buffer, distill.device.place_data); otherwise its batches go through pinned staging
  buffers one ahead (data/loader.py, `Staging`). The shuffle is drawn on the CPU either way.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distill.config import Config
from distill.data.batch import Batch, Encoded
from distill.data.encoders import Encoders, fit_encoders
from distill.data.io import file_format, resolve_files
from distill.data.kinds import KINDS
from distill.data.loader import Staging
from distill.device import Placement, place_data, to_device
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
    """Fit the encoders in one pass over the training row groups (the code that fits an in-memory
    split, given one chunk per row group); also count filled values."""
    units = parquet_units(cfg.data.train, cfg.data.format)
    columns = [f.name for f in cfg.features] + [cfg.task.label]
    chunks = ((read_unit(u, columns), f"{u.path} (row group {u.group})") for u in units)
    return fit_encoders(cfg.features, cfg.task, chunks, cfg.data.train, workers=torch.get_num_threads())


def concat(chunks: list[Encoded], encoders: Encoders) -> Encoded:
    """Stack encoded chunks; an axis whose length varies by chunk (a bag's) is padded to the widest."""
    feats = {}
    for name in chunks[0].features:
        parts = [c.features[name] for c in chunks]
        for axis in KINDS[encoders.features[name].kind].varying_axes:
            width = max(p.shape[axis] for p in parts)
            # F.pad's sizes run from the last axis backwards: (before, after) for each
            parts = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 1 - axis) + (0, width - p.shape[axis])) for p in parts]
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
        self.target: dict | None = None  # on a GPU: {"device", "setting", "share", "on_place"} (see placed)
        self.decided: list[Placement] = []  # the placement, decided at the first buffer (shared by copies)
        self.soft: torch.Tensor | None = None  # cached soft labels by row number, gathered per buffer (with_soft)

    @property
    def place(self) -> Placement | None:
        return self.decided[0] if self.decided else None

    def placed(self, device: torch.device, setting: str = "auto", share: float = 0.5,
               on_place: Callable[[Placement], None] | None = None) -> "StreamingLoader":
        """The same batches on `device`: each shuffle buffer moved once when it fits (train.data_on_device,
        device_memory_share), else staged through pinned buffers. A CPU device changes nothing."""
        other = copy.copy(self)
        other.target = {"device": device, "setting": setting, "share": share, "on_place": on_place}
        other.decided = []
        return other

    def with_soft(self, soft: torch.Tensor) -> "StreamingLoader":
        """The same batches carrying `soft[rows]` as `batch.soft`, gathered with each buffer's rows."""
        other = copy.copy(self)
        other.soft = soft
        return other

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
            buf, rows = concat([c for c, _ in pending], self.encoders), torch.cat([r for _, r in pending])
            perm = torch.randperm(len(rows), generator=gen)
            full = len(rows) if exhausted else len(rows) // self.batch_size * self.batch_size
            if self.target is not None:  # a GPU (run.py places a loader only there)
                todo = [perm[s:s + self.batch_size] for k, s in enumerate(range(0, full, self.batch_size)) if b + k >= start]
                b += math.ceil(full / self.batch_size)
                if todo:  # (a resumed epoch skips the buffers it has done without moving them)
                    yield from self._on_device(buf, rows, todo)
            else:  # the CPU: today's slices
                for s in range(0, full, self.batch_size):
                    if b >= start:
                        idx = perm[s:s + self.batch_size]
                        batch = buf.batch(idx)
                        batch.index = rows[idx]
                        if self.soft is not None:
                            batch.soft = self.soft.index_select(0, batch.index.to(self.soft.device))
                        yield batch
                    b += 1
            rest = perm[full:]
            pending = [(buf.batch(rest).as_encoded(), rows[rest])] if len(rest) else []
            pending_rows = len(rest)
            if exhausted:
                break

    def _decide(self, buf: Encoded) -> Placement:
        if not self.decided:
            t = self.target
            self.decided.append(place_data(buf.nbytes(), t["device"], t["setting"], t["share"]))
            if t["on_place"] is not None:
                t["on_place"](self.decided[0])
        return self.decided[0]

    def _on_device(self, buf: Encoded, rows: torch.Tensor, idxs: list[torch.Tensor]) -> Iterator[Batch]:
        """One shuffle buffer's batches `idxs` (positions in the buffer) on the GPU: the buffer
        copied there once, or each batch staged through pinned buffers."""
        if self.soft is not None and self.soft.device.type == "cpu":
            buf = dataclasses.replace(buf, soft=self.soft.index_select(0, rows))  # its rows' soft labels ride along
        place = self._decide(buf)
        device = place.device
        on = to_device(rows, device)  # the buffer's row numbers, once per buffer
        if place.where == "device":
            buf = buf.to(device)
            flat = to_device(torch.cat(idxs), device) if idxs else None
            batches = (buf.batch(idx) for idx in (flat.split([len(i) for i in idxs]) if idxs else []))
        else:
            batches = Staging(device).batches(buf, idxs, None)
        for batch in batches:
            batch.index = on.index_select(0, batch.index)  # buffer positions -> row numbers in the split
            if self.soft is not None and batch.soft is None:
                batch.soft = self.soft.index_select(0, batch.index)  # a cache on the device
            yield batch

    def ordered(self, batch_size: int = 8192) -> Iterator[Batch]:
        for enc, rows in self._chunks(self.units):
            for s in range(0, len(rows), batch_size):
                idx = torch.arange(s, min(len(rows), s + batch_size))
                batch = enc.batch(idx)
                batch.index = rows[idx]
                yield batch
