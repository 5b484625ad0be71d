"""The `Batch` every model reads, and `Encoded`, a whole split as tensors.

A model asks a batch for its features by name. The student's batch is made with `select` from the
serving features only, so a model that asks it for a privileged feature fails loudly here instead
of silently reading a column it will not have in production.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from distill.errors import MissingFeatureError


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # categorical (B,) int64 | numeric (B, 2) float32 | multi (B, L) int64
    y: torch.Tensor | None = None  # (B,) float32 (binary, regression) or int64 (multiclass)
    weight: torch.Tensor | None = None  # (B,)
    index: torch.Tensor | None = None  # (B,) row positions in the split (for cached soft labels)
    soft: torch.Tensor | None = None  # (B,) or (B, C) offline mode: the teacher's score as logits

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.features[name]
        except KeyError:
            raise MissingFeatureError(
                f"feature '{name}' is not in this batch (it carries: {', '.join(sorted(self.features))}); "
                "privileged features never reach the student"
            ) from None

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def as_encoded(self) -> "Encoded":
        return Encoded(dict(self.features), self.y, self.weight, None, self.soft)

    def select(self, names: list[str]) -> "Batch":
        """The same rows with only `names` as features: the view one model is allowed to see."""
        return Batch({n: self.features[n] for n in names}, self.y, self.weight, self.index, self.soft)

    def to(self, device: torch.device) -> "Batch":
        """Every tensor of the batch on `device` (see distill.device); itself when already there."""
        tensors = [*self.features.values(), self.y, self.weight, self.index, self.soft]
        if all(t is None or t.device == device for t in tensors):
            return self  # the CPU case: no copy, no new object per step

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch({n: t.to(device, non_blocking=True) for n, t in self.features.items()},
                     move(self.y), move(self.weight), move(self.index), move(self.soft))


@dataclass
class Encoded:
    """A whole split, encoded once; batches are slices of it (no per-sample work in the loop)."""

    features: dict[str, torch.Tensor]
    y: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    group: np.ndarray | None = None  # (N,) int64 group ids for GAUC
    soft: torch.Tensor | None = None  # offline mode: the teacher's score as logits
    missing: dict[str, int] = field(default_factory=dict)  # filled values per feature
    packs: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)  # see pack()
    # (N,) int64 ids of distillation.group, when the within-group losses group by another column
    # than task.group (GAUC's); None: they use `group`
    distill_group: np.ndarray | None = None

    @property
    def ranking_groups(self) -> np.ndarray | None:
        """The groups the within-group distillation losses and the grouped loader use."""
        return self.distill_group if self.distill_group is not None else self.group

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def pack(self) -> "Encoded":
        """Stack the columns of each kind (same dtype and row shape) into one (N, k, ...) tensor and
        keep every column as a view of it, so that a training batch is one row gather per kind
        instead of one gather per feature (26 column gathers took 8x longer than one row gather
        of a (N, 26) tensor here). Memory is unchanged once the old columns are freed."""
        if self.packs:
            return self  # already packed
        groups: dict[tuple, list[str]] = {}
        for n, t in self.features.items():
            groups.setdefault((t.dtype, tuple(t.shape[1:])), []).append(n)
        for names in groups.values():
            if len(names) > 1:
                stacked = torch.stack([self.features[n] for n in names], dim=1)
                self.features.update({n: stacked[:, j] for j, n in enumerate(names)})
                self.packs.append((names, stacked))
        return self

    @property
    def device(self) -> torch.device:
        """Where the split's tensors are (all on one device: see `to`)."""
        return next(iter(self.features.values())).device

    def nbytes(self) -> int:
        """The bytes `to(device)` copies: each pack once, the unpacked columns, labels, weights, soft labels."""
        packed = {n for names, _ in self.packs for n in names}
        tensors = [s for _, s in self.packs] + [t for n, t in self.features.items() if n not in packed]
        return sum(t.numel() * t.element_size() for t in [*tensors, self.y, self.weight, self.soft] if t is not None)

    def to(self, device: torch.device) -> "Encoded":
        """The split on `device`: each pack copied once and its columns rebuilt as views of the copy
        (moving the columns one by one would copy a pack once per column). Itself when already there."""
        if self.device == device and all(t is None or t.device == device for t in (self.y, self.weight, self.soft)):
            return self
        feats: dict[str, torch.Tensor] = {}
        packs = []
        for names, stacked in self.packs:
            moved = stacked.to(device)
            packs.append((names, moved))
            feats.update({n: moved.select(1, j) for j, n in enumerate(names)})
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Encoded({n: feats[n] if n in feats else move(t) for n, t in self.features.items()}, move(self.y),
                       move(self.weight), self.group, move(self.soft), dict(self.missing), packs)

    def batch(self, idx: torch.Tensor, names: list[str] | None = None,
              take: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Batch:
        """Rows `idx` of the features `names` (default all). Gathering only what a model reads keeps
        a step's cost independent of how many other columns the split holds. `take(t, idx)` gathers
        one tensor's rows (default `t.index_select(0, idx)`; the pinned staging path gathers into its
        buffers and returns the device copy)."""
        names = list(self.features) if names is None else names
        take = take or _index_select
        feats: dict[str, torch.Tensor] = {}
        wanted = set(names)
        for pack_names, stacked in self.packs:
            hit = [j for j, n in enumerate(pack_names) if n in wanted]
            if 2 * len(hit) > len(pack_names):  # most of a pack: one gather beats one per column
                rows = take(stacked, idx)
                feats.update({pack_names[j]: rows.select(1, j) for j in hit})

        def opt(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else take(t, idx)

        return Batch({n: feats[n] if n in feats else take(self.features[n], idx) for n in names},
                     opt(self.y), opt(self.weight), idx, opt(self.soft))

    def batches(self, batch_size: int, order: torch.Tensor | None = None, names: list[str] | None = None):
        """Yield batches in `order` (a permutation) or in row order; the row numbers are made (or
        moved, once) where the split is, so a split on a GPU is gathered there."""
        n, where = len(self), self.device
        if order is not None:
            order = order.to(where)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else torch.arange(start, min(n, start + batch_size), device=where)
            yield self.batch(idx, names=names)


def _index_select(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx)  # index_select: faster than t[idx]
