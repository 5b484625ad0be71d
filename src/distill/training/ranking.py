"""The distillation term when it is not pointwise alone: ranking distillation within groups.

`distillation.loss: pairwise | listwise` transfers the teacher's order within each group of
`distillation.group` (default: `task.group`, the column GAUC is computed over; the two differ when,
e.g., GAUC is per user and the lists are per request) (losses.pairwise_distill_loss,
losses.listwise_distill_loss); `loss_weights` mixes
terms, e.g. {pointwise: 1.0, listwise: 0.5}. With the default (`pointwise`, no weights) no term is
built and the steps call losses.distill_loss exactly as before, so default results are unchanged.

The step finds a batch's group ids from its row positions (`batch.index`) in the training split
(on the batch's device: no host read per step). With `distillation.group_batches: whole` (default)
the grouped loader (data/loader.py GroupedLoader) keeps each group whole inside one batch, so every
pair and every list of a group is seen together; with `in_batch` the batches are the ordinary
shuffled ones (those of pointwise distillation, run.make_loader) and the term is taken over the
rows of each group that share a batch (a group with one row there adds nothing). The term is per
batch either way, so under torchrun each rank's shard of a batch is its own set of in-batch groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.config import Config
from distill.data.batch import Batch
from distill.errors import DistillError
from distill.losses import mixed_distill_loss


def wants_groups(cfg: Config) -> bool:
    """True when the configured distillation term needs the group of each row."""
    d = cfg.distillation
    weights = d.loss_weights or {d.loss: 1.0}
    return cfg.distillation.mode in ("sync", "async", "offline") and any(
        n != "pointwise" and w > 0 for n, w in weights.items())


def check(cfg: Config) -> list[str]:
    """The config's part for within-group losses: raises DistillError, returns warnings."""
    d = cfg.distillation
    if not wants_groups(cfg):
        warnings = [f"distillation.group is ignored: distillation.loss '{d.loss}' uses no groups"] if d.group else []
        if d.group_batches != "whole":
            warnings.append(f"distillation.group_batches is ignored: distillation.loss '{d.loss}' uses no groups")
        if d.mode == "none" and (d.loss != "pointwise" or d.loss_weights):
            return [f"distillation.loss is ignored in mode 'none'"] + warnings
        return warnings
    if not (d.group or cfg.task.group):
        raise DistillError(f"distillation.loss: '{d.loss}' orders rows within groups; set task.group (or distillation.group) to the group column")
    if cfg.task.type == "multiclass":
        raise DistillError(f"distillation.loss: '{d.loss}' ranks one score per row; task.type 'multiclass' has several")
    if cfg.data.streaming and d.group_batches == "in_batch":
        raise DistillError(f"distillation.loss: '{d.loss}' reads the group of each training row from memory; data.streaming does not keep the split there (set it to false)")
    if cfg.data.streaming:
        raise DistillError(f"distillation.loss: '{d.loss}' needs whole groups per batch; data.streaming cannot keep them (set it to false)")
    if d.group_batches == "in_batch" and d.max_group_rows is not None:
        return ["distillation.max_group_rows is ignored: distillation.group_batches 'in_batch' uses the ordinary batches"]
    return []


@dataclass
class DistillTerm:
    """L_d of a batch as the weighted sum of its terms (and each term, for the log)."""

    task: str
    temperature: float
    weights: dict[str, float]
    groups: torch.Tensor  # (N,) int64: the group id of each training row (−1: none)
    max_pairs: int | None = None
    seed: int = 0

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        device = student_logits.device
        if self.groups.device != device:  # once: the group ids then live where the batches are
            self.groups = self.groups.to(device)
        # no host read on the step path: the batch's row numbers select group ids on the device, and
        # sampled pairs are drawn by a hash of their row numbers and the seed (a resumed run draws the same)
        group_ids = self.groups.index_select(0, batch.index.to(device))  # (B,)
        return mixed_distill_loss(student_logits, teacher_logits, self.task, group_ids, self.weights,
                                  self.temperature, batch.weight, self.max_pairs,
                                  row_ids=batch.index.to(device) if self.max_pairs is not None else None,
                                  seed=self.seed)


def term_of(cfg: Config, loader) -> DistillTerm | None:
    """The configured term, or None for plain pointwise distillation (the existing code path)."""
    d = cfg.distillation
    weights = dict(d.loss_weights or {d.loss: 1.0})
    if weights == {"pointwise": 1.0}:
        return None
    data = getattr(loader, "data", None)
    if not wants_groups(cfg):  # pointwise alone with another weight: no group is read
        groups = torch.full((loader.num_rows,), -1, dtype=torch.int64)
    elif data is None or data.ranking_groups is None:
        key = "distillation.group" if d.group else "task.group"
        raise DistillError(f"distillation.loss: '{d.loss}' needs the training split's {key} column in memory")
    else:
        groups = torch.as_tensor(data.ranking_groups, dtype=torch.int64)  # distillation.group, else task.group
    return DistillTerm(cfg.task.type, d.temperature, weights, groups, d.max_pairs, cfg.train.seed)
