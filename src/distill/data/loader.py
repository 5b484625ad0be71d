"""Batches of a split for training: a deterministic order per epoch, resumable mid-epoch.

The order of epoch e depends only on (seed, e), never on how many epochs ran before in this
process, so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would.

Where the rows live while a GPU trains (`placed`, decided by distill.device.place_data): on the
device (the split copied once, each batch an index_select there with the epoch's permutation moved
once), or in host memory with each batch gathered into pinned buffers and copied one batch ahead
(`Staging`). Either way the permutation is drawn on the CPU from (seed, epoch), so the batches hold
the same rows in the same order as on a CPU. Unplaced (the CPU), batches are plain slices.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Iterator

import torch

from distill.data.batch import Batch, Encoded
from distill.device import CPU, Placement, place_data, to_device


def placement_of(loader) -> Placement | None:
    """Where `loader`'s rows live on a GPU (None: unplaced, the CPU), through a ShardedLoader too."""
    while loader is not None:
        if getattr(loader, "place", None) is not None:
            return loader.place
        loader = getattr(loader, "inner", None)
    return None


def cache_home(loader, device: torch.device, nbytes: int) -> torch.device:
    """Where a per-row cache of `nbytes` (the async teacher's logits) lives while a model on `device`
    trains from `loader`: on the device (where its rows are gathered each step) when the split is
    there or the cache fits in train.device_memory_share of the free memory; else in host memory,
    its rows then gathered with the features' through the pinned staging buffers (`with_soft`)."""
    place = placement_of(loader)
    if device.type != "cuda" or place is None or place.where == "device":
        return device
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return device  # the ranks sum their parts of the cache, and NCCL sums only device tensors
    return device if place_data(nbytes, device, place.setting, place.share).where == "device" else CPU


class Placed:
    """What both in-memory loaders share: where their rows live on a GPU (`placed`), the cached
    soft labels as a column gathered with the rows (`with_soft`), and the batches of a list of row
    numbers on that placement (`_emit`). `place` None: today's CPU slices."""

    data: Encoded
    place: Placement | None = None

    def placed(self, place: Placement) -> "Placed":
        """The same batches, their rows on `place.device` ("device": the split copied there once;
        "pinned": staged one batch ahead; "cpu": unchanged)."""
        other = copy.copy(self)
        other.place = place if place.where != "cpu" else None
        if place.where == "device":
            other.data = self.data.to(place.device)
        return other

    def with_soft(self, soft: torch.Tensor) -> "Placed":
        """The same batches carrying `soft[rows]` as `batch.soft` (the async teacher's cached logits
        by row number), gathered by the same index as the features: on the device when the split
        is there, through the pinned staging buffers when the cache is in host memory."""
        other = copy.copy(self)
        if other.place is not None and other.place.where == "device":
            soft = soft.to(other.place.device)
        other.data = dataclasses.replace(self.data, soft=soft)
        return other

    def _emit(self, idxs: list[torch.Tensor], names: list[str] | None) -> Iterator[Batch]:
        """The batches of the row-number tensors `idxs` (on the CPU), in order, on the placement."""
        if self.place is None:
            for idx in idxs:
                yield self.data.batch(idx, names=names)
        elif self.place.where == "device":
            if not idxs:
                return
            # one copy of the epoch's row numbers, then every batch an index_select on the device
            flat = to_device(torch.cat(idxs), self.place.device)
            for idx in flat.split([len(i) for i in idxs]):
                yield self.data.batch(idx, names=names)
        else:
            yield from Staging(self.place.device).batches(self.data, idxs, names)


class Staging:
    """Batches gathered on the host into pinned staging buffers and copied to `device` with
    non_blocking=True, one batch ahead: while the model trains on batch i (its kernels queued on the
    current stream), batch i+1 is gathered on the CPU and its copy queued on a side stream.

    Two sets of buffers alternate; before a set is written again, the host waits on the event
    recorded after its copies (two batches ago, long done in practice), so a buffer is never
    overwritten while its copy is in flight. The current stream waits on a batch's event before
    using it, and its device tensors are `record_stream`ed there so that the allocator does not
    reuse them while the step reads them. On a CPU (tests) the "copy" is a clone of the buffer.
    """

    def __init__(self, device: torch.device, slots: int = 2):
        self.device, self.cuda = device, device.type == "cuda"
        self.buffers: list[dict[int, torch.Tensor]] = [{} for _ in range(slots)]
        self.copied: list = [None] * slots  # per set: the event after its copies were queued
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        if self.stream is not None:  # what the current stream wrote before (a cached soft label) is there for the copies
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def _buffer(self, slot: int, key: object, t: torch.Tensor, rows: int) -> torch.Tensor:
        """Set `slot`'s buffer for `key` (the row numbers, or one of the split's own tensors, which
        live as long as the epoch), `rows` rows of `t`'s shape and dtype, pinned on a GPU machine."""
        buf = self.buffers[slot].get(key)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty((rows,) + tuple(t.shape[1:]), dtype=t.dtype, pin_memory=self.cuda)
            self.buffers[slot][key] = buf
        return buf[:rows]

    def _send(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.to(self.device, non_blocking=True) if self.cuda else buf.clone()

    def _stage(self, slot: int, data: Encoded, idx: torch.Tensor, names: list[str] | None):
        event = self.copied[slot]
        if event is not None:
            event.synchronize()  # this set's previous copies have left its buffers
        index = self._buffer(slot, "index", idx, len(idx))
        index.copy_(idx)
        with torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext():
            on_device = self._send(index)

            def take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                if t.device != CPU:  # already on the device (a cached soft label there)
                    return t.index_select(0, on_device)
                out = self._buffer(slot, id(t), t, len(rows))
                torch.index_select(t, 0, rows, out=out)
                return self._send(out)

            batch = data.batch(idx, names=names, take=take)
            batch.index = on_device
            if self.cuda:
                self.copied[slot] = torch.cuda.Event()
                self.copied[slot].record(self.stream)
        return batch, self.copied[slot]

    def _ready(self, staged) -> Batch:
        batch, event = staged
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in [*batch.features.values(), batch.y, batch.weight, batch.index, batch.soft]:
                if t is not None:
                    t.record_stream(current)
        return batch

    def batches(self, data: Encoded, idxs: list[torch.Tensor], names: list[str] | None) -> Iterator[Batch]:
        ahead = None
        for i, idx in enumerate(idxs):
            staged = self._stage(i % len(self.buffers), data, idx, names)
            if ahead is not None:
                yield self._ready(ahead)
            ahead = staged
        if ahead is not None:
            yield self._ready(ahead)


class InMemoryLoader(Placed):
    """Shuffled batches over an `Encoded` split held in memory (slices: no per-sample work)."""

    def __init__(self, data: Encoded, batch_size: int, seed: int, shuffle: bool = True):
        self.data, self.batch_size, self.seed, self.shuffle = data.pack(), batch_size, seed, shuffle
        self.features: list[str] | None = None  # gather only these (None: all)
        self.rows: torch.Tensor | None = None  # only these row numbers (None: all); see subset()

    def narrowed(self, names: list[str]) -> "InMemoryLoader":
        """The same batches carrying only the features `names` (what one phase's models read)."""
        other = copy.copy(self)
        other.features = list(names)
        return other

    def subset(self, rows: torch.Tensor) -> "InMemoryLoader":
        """The same split restricted to the row numbers `rows` (cross-fitting: a teacher that must
        not see one fold). Batches keep the rows' own numbers in `batch.index`; the order of epoch
        e is still a function of (seed, e) alone."""
        other = copy.copy(self)
        other.rows = torch.as_tensor(rows, dtype=torch.long).sort().values
        return other

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    @property
    def num_rows(self) -> int:
        return len(self.data) if self.rows is None else len(self.rows)

    def ordered(self, batch_size: int = 8192) -> Iterator[Batch]:
        """Every row once, in file order (for inference, e.g. caching a teacher's logits). Only for
        the whole split: a subset's row numbers are not 0..num_rows-1."""
        assert self.rows is None, "ordered() places rows by number: use the whole split"
        return self.data.batches(batch_size, names=self.features)

    def order(self, epoch: int) -> torch.Tensor:
        n = self.num_rows
        if not self.shuffle:
            return torch.arange(n) if self.rows is None else self.rows
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return perm if self.rows is None else self.rows[perm]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start` on."""
        order = self.order(epoch)
        if self.place is None:  # the CPU: slices of the permutation
            for b in range(start, len(self)):
                yield self.data.batch(order[b * self.batch_size:(b + 1) * self.batch_size], names=self.features)
            return
        yield from self._emit(list(order[start * self.batch_size:].split(self.batch_size)), self.features)


class GroupedLoader(Placed):
    """Batches of whole groups (`Encoded.ranking_groups`: distillation.group, else task.group), for the within-group distillation losses.

    Each epoch shuffles the order of the groups (from (seed, epoch) only) and packs them in that
    order into batches of about `batch_size` rows: a batch is closed when the next group would take
    it past `batch_size`, so a group larger than `batch_size` is a batch of its own (never cut:
    cutting it would lose its pairs), unless `max_group_rows` (distillation.max_group_rows) cuts
    every group into chunks of at most that many rows, packed as groups of their own. Rows of no group (id −1) are each a group of one. The number
    of batches can differ by a few between epochs; `len()` is epoch 0's (the loop uses it for the
    evaluation cadence and the progress bar only).

    With `rank`/`world` (torchrun), every rank packs the same global batches and takes its share of
    each by whole groups (contiguous groups, split where the cumulated rows cross r/world of the
    batch), so a group never spans two ranks; a rank left with no group gets one row of weight 0
    (and a group of one: no pair, no list), as distributed.ShardedLoader does.
    """

    def __init__(self, data: Encoded, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 max_group_rows: int | None = None):
        assert data.ranking_groups is not None, "GroupedLoader needs Encoded.group (or distill_group)"
        self.data, self.batch_size, self.seed, self.shuffle = data.pack(), batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.features: list[str] | None = None
        g = torch.as_tensor(data.ranking_groups, dtype=torch.int64)  # distillation.group, else task.group
        # no group (−1): each such row its own group, with ids after the real ones
        g = torch.where(g >= 0, g, int(g.max().clamp_min(0)) + 1 + torch.arange(len(g)))
        _, gid = torch.unique(g, return_inverse=True)
        if max_group_rows is not None:
            # a heavy group becomes chunks of at most max_group_rows rows (in file order), packed as
            # groups of their own: batches then mix more groups; pairs and lists stay within a chunk
            # (or several chunks of one group that happen to share a batch)
            rows = torch.argsort(gid, stable=True)
            size = torch.bincount(gid)
            pos = torch.empty_like(gid)
            pos[rows] = torch.arange(len(gid)) - (torch.cumsum(size, 0) - size)[gid[rows]]
            _, gid = torch.unique(gid * (int(size.max()) // max_group_rows + 1) + pos // max_group_rows, return_inverse=True)
        self.rows_by_group = torch.argsort(gid, stable=True)  # rows sorted by group, file order inside
        self.sizes = torch.bincount(gid)  # (G,)
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes
        self._len = len(self._packing(0))

    def narrowed(self, names: list[str]) -> "GroupedLoader":
        other = copy.copy(self)
        other.features = list(names)
        return other

    def for_rank(self, rank: int, world: int) -> "GroupedLoader":
        other = copy.copy(self)
        other.rank, other.world = rank, world
        return other

    def __len__(self) -> int:
        return self._len

    @property
    def num_rows(self) -> int:
        return len(self.data)

    def ordered(self, batch_size: int = 8192) -> Iterator[Batch]:
        """Every row once, in file order (inference needs no groups); under torchrun this rank's
        contiguous slice of each (as distributed.ShardedLoader.ordered: see distributed.sum_parts)."""
        n = len(self.data)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            lo, hi = start + self.rank * (stop - start) // self.world, start + (self.rank + 1) * (stop - start) // self.world
            if hi > lo:
                yield self.data.batch(torch.arange(lo, hi, device=self.data.device), names=self.features)

    def _packing(self, epoch: int) -> list[torch.Tensor]:
        """The groups of each batch of `epoch`, as tensors of group numbers."""
        n_groups = len(self.sizes)
        order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)) \
            if self.shuffle else torch.arange(n_groups)
        sizes = self.sizes[order].tolist()
        batches, start, rows = [], 0, 0
        for k, size in enumerate(sizes):  # a loop over groups, once per epoch (not per step)
            if rows and rows + size > self.batch_size:
                batches.append(order[start:k])
                start, rows = k, 0
            rows += size
        if start < n_groups:
            batches.append(order[start:])
        return batches

    def _rows(self, groups: torch.Tensor) -> torch.Tensor:
        if len(groups) == 0:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([self.rows_by_group[s:s + n] for s, n in zip(self.starts[groups].tolist(), self.sizes[groups].tolist())])

    def _share(self, groups: torch.Tensor) -> torch.Tensor:
        """This rank's groups of one global batch: contiguous, cut where the rows cross r/world."""
        if self.world == 1:
            return groups
        ends = torch.cumsum(self.sizes[groups], 0).double()  # rows up to and including each group
        mid = ends - self.sizes[groups].double() / 2  # a group goes to the rank its middle falls in
        owner = (mid * self.world / ends[-1]).floor().clamp_max(self.world - 1).long()
        return groups[owner == self.rank]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start` on."""
        if self.place is None:  # the CPU
            for groups in self._packing(epoch)[start:]:
                mine = self._share(groups)
                if len(mine) == 0:  # this rank drew nothing: one row that weighs nothing, to keep step with the others
                    b = self.data.batch(self._rows(groups[:1])[:1], names=self.features)
                    b.weight = torch.zeros(1)
                    yield b
                    continue
                yield self.data.batch(self._rows(mine), names=self.features)
            return
        idxs, empty = [], []  # on a GPU: the epoch's row numbers first, moved or staged as a whole
        for groups in self._packing(epoch)[start:]:
            mine = self._share(groups)
            empty.append(len(mine) == 0)
            idxs.append(self._rows(groups[:1])[:1] if len(mine) == 0 else self._rows(mine))
        for b, nothing in zip(self._emit(idxs, self.features), empty):
            if nothing:
                b.weight = torch.zeros(1, device=b.index.device)
            yield b
