"""Batches of a split for training: a deterministic order per epoch, resumable mid-epoch.

The order of epoch e depends only on (seed, e), never on how many epochs ran before in this
process, so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import copy
import math
from typing import Iterator

import torch

from distill.data.batch import Batch, Encoded


class InMemoryLoader:
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
        for b in range(start, len(self)):
            yield self.data.batch(order[b * self.batch_size:(b + 1) * self.batch_size], names=self.features)


class GroupedLoader:
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
                yield self.data.batch(torch.arange(lo, hi), names=self.features)

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
        for groups in self._packing(epoch)[start:]:
            mine = self._share(groups)
            if len(mine) == 0:  # this rank drew nothing: one row that weighs nothing, to keep step with the others
                b = self.data.batch(self._rows(groups[:1])[:1], names=self.features)
                b.weight = torch.zeros(1)
                yield b
                continue
            yield self.data.batch(self._rows(mine), names=self.features)
