"""The phases of a run, callable on their own from Python on models and data already loaded.

Each trains `Member`s in place (best validation weights restored) and returns the phase's summary
dict; the recipes (recipes.py) call them top to bottom, and a sweep calls them directly, reusing
what λ and T do not change: one data set, one teacher, one set of cached logits, one baseline.

    >>> cfg = load_config("config.yaml"); splits = load_splits(cfg)          # doctest: +SKIP
    >>> loader = InMemoryLoader(splits.train, cfg.train.batch_size, cfg.train.seed)
    >>> plan, label = Plan.from_config(cfg), splits.encoders.label
    >>> teacher = build_member(cfg, splits.encoders, "teacher")
    >>> fit_teacher(teacher, loader, splits.valid, label, plan)
    >>> logits = cache_teacher_logits(teacher, loader)                       # (N,) or (N, C), once
    >>> baseline = build_member(cfg, splits.encoders, "baseline")
    >>> fit_baseline(baseline, loader, splits.valid, label, plan)
    >>> for lam, T in [(0.3, 1.0), (0.6, 2.0)]:
    ...     student = build_member(cfg, splits.encoders, "student")           # the same init each time
    ...     fit_student(student, logits, loader, splits.valid, label, plan, lam=lam, temperature=T)

(`build_member` is distill.run's.) `valid` may be None: no early stopping, the last weights kept.
"""
from __future__ import annotations

from typing import Callable

import torch

from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.member import Member
from distill.training.asynchronous import cache_logits, from_cache
from distill.training.checkpoint import Checkpoints
from distill.training.common import RunLog
from distill.training.loop import Plan
from distill.training.single import train_single
from distill.training.sync import train_sync

Lambda = float | Callable[[int], float]  # λ, or λ as a function of the optimizer step (distill.schedules)


def fit_teacher(teacher: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
                log: RunLog | None = None, ckpt: Checkpoints | None = None, phase: str = "teacher") -> dict:
    """The teacher alone on the labels (async's first phase; one phase per teacher with `teachers:`)."""
    return train_single(teacher, loader, valid, label, plan, phase, log=log, ckpt=ckpt)


def cache_teacher_logits(teacher: Member, loader, *, precision: str = "fp32", log: RunLog | None = None) -> torch.Tensor:
    """Freeze the teacher and compute its logits on every training row: (N,) or (N, C), by row number,
    for `fit_student`. `log` shows it as a progress phase."""
    from distill import device
    return cache_logits(teacher, loader, log=log, precision=device.autocast(precision))


def fit_student(student: Member, soft: torch.Tensor | Callable[[Batch], torch.Tensor], loader,
                valid: Encoded | None, label: LabelEncoder, plan: Plan, *, lam: Lambda, temperature: float = 1.0,
                log: RunLog | None = None, ckpt: Checkpoints | None = None, phase: str = "student",
                each_teacher: dict[str, torch.Tensor] | None = None, hint=None) -> dict:
    """The student against given soft labels: `soft` is the cached logits of every training row
    (`cache_teacher_logits`) or a function of the batch (offline: `lambda batch: batch.soft`).
    `each_teacher` (several teachers, `soft` their mix): each one's cached logits, to log L_d:<name>."""
    soft_of = from_cache(soft) if isinstance(soft, torch.Tensor) else soft
    each = {n: from_cache(c) for n, c in each_teacher.items()} if each_teacher else None
    return train_single(student, loader, valid, label, plan, phase, soft=soft_of, lam=_schedule(lam),
                        temperature=temperature, log=log, ckpt=ckpt, each=each, hint=hint)


def fit_gate(ensemble: Member, caches: torch.Tensor, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
             log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """async with ensemble type gate: the gate alone, on the teachers' cached logits (K, N[, C]) and
    the hard labels; the teachers stay frozen (distill.ensemble)."""
    from distill.training.single import train_gate
    return train_gate(ensemble, caches, loader, valid, label, plan, log=log, ckpt=ckpt)


def fit_baseline(baseline: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
                 log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """The student's architecture on the labels alone: what distillation is measured against."""
    return train_single(baseline, loader, valid, label, plan, "baseline", log=log, ckpt=ckpt)


def fit_together(teacher: Member, student: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
                 lam: Lambda, temperature: float = 1.0, log: RunLog | None = None,
                 ckpt: Checkpoints | None = None, hint=None) -> dict:
    """Teacher and student in one loop, one optimizer step for both (sync). `hint`: distill.hints."""
    return train_sync(teacher, student, loader, valid, label, plan, _schedule(lam), temperature, log, ckpt, hint=hint)


def _schedule(lam: Lambda) -> Callable[[int], float]:
    if callable(lam):
        return lam
    value = float(lam)
    return lambda step: value


def train_single_each(student: Member, soft: Callable[[Batch], torch.Tensor], each: dict[str, Callable[[Batch], torch.Tensor]],
                      loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *, lam: Lambda,
                      temperature: float = 1.0, log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """offline with distillation.soft_labels: the student against the combined columns, each column's L_d logged."""
    return train_single(student, loader, valid, label, plan, "student", soft=soft, lam=_schedule(lam),
                        temperature=temperature, log=log, ckpt=ckpt, each=each)
