"""The distillation term when it is not pointwise alone: ranking distillation within groups.

`distillation.loss: pairwise | listwise` transfers the teacher's order within each group of
`distillation.group` (default: `task.group`, the column GAUC is computed over; the two differ when,
e.g., GAUC is per user and the lists are per request) (losses.pairwise_distill_loss,
losses.listwise_distill_loss); `loss_weights` mixes
terms, e.g. {pointwise: 1.0, listwise: 0.5}. With the default (`pointwise`, no weights) no term is
built and the steps call losses.distill_loss exactly as before, so default results are unchanged.

The step finds a batch's group ids from its row positions (`batch.index`) in the training split;
the grouped loader (data/loader.py GroupedLoader) keeps each group whole inside one batch, so every
pair and every list of a group is seen together.
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
        if d.mode == "none" and (d.loss != "pointwise" or d.loss_weights):
            return [f"distillation.loss is ignored in mode 'none'"] + warnings
        return warnings
    if not (d.group or cfg.task.group):
        raise DistillError(f"distillation.loss: '{d.loss}' orders rows within groups; set task.group (or distillation.group) to the group column")
    if cfg.task.type == "multiclass":
        raise DistillError(f"distillation.loss: '{d.loss}' ranks one score per row; task.type 'multiclass' has several")
    if cfg.data.streaming:
        raise DistillError(f"distillation.loss: '{d.loss}' needs whole groups per batch; data.streaming cannot keep them (set it to false)")
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
        group_ids = self.groups.index_select(0, batch.index.cpu()).to(student_logits.device)  # (B,)
        generator = None
        if self.max_pairs is not None:
            # pairs drawn from the batch's own rows and the seed: a resumed run draws the same ones
            first = int(batch.index[0]) if len(batch.index) else 0
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + first * 7919 + len(batch.index))
        return mixed_distill_loss(student_logits, teacher_logits, self.task, group_ids, self.weights,
                                  self.temperature, batch.weight, self.max_pairs, generator)


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
