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
