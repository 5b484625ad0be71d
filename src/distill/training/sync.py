"""Synchronous distillation: teacher and student learn together, one optimizer step for both.

    loss = L_t(y, f_t(x, x*)) + (1 − λ)·L_s(y, f_s(x)) + λ·L_d(sg(f_t), f_s(x))

sg is the stop-gradient: L_d updates the student only, the teacher learns from L_t alone. With
`share_embeddings`, a table both models read is one module; it receives gradients from L_t through
the teacher and from (1 − λ)·L_s + λ·L_d through the student (see the README). λ follows the
schedule: an untrained teacher should not lead the student early (the PFD paper's delayed start).
The loop around the step (resume, evaluation, keep-the-best, checkpoints, logs) is loop.py's.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from distill import distributed
from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.losses import distill_loss, hard_loss
from distill.member import Member
from distill.training.checkpoint import Checkpoints
from distill.training.common import RunLog
from distill.training.ranking import DistillTerm
from distill.training.loop import Plan, Step, Watched, train_loop


class Pair(nn.Module):
    """Teacher and student as one module, so that under torchrun a single DDP wrapper reduces a
    shared embedding table once (two wrappers would each own, and reduce, the same parameter)."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, teacher_batch, student_batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher(teacher_batch), self.student(student_batch)


def sync_step(pair: nn.Module, teacher_features: list[str], student_features: list[str], task: str,
              amp: contextlib.AbstractContextManager, temperature: float, term: DistillTerm | None = None) -> Step:
    """`term`: L_d when it is not pointwise alone (training/ranking.py); None keeps distill_loss."""

    def step(batch: Batch, lam: float) -> dict[str, torch.Tensor]:
        # the teacher sees serving + privileged features, the student serving features only
        with amp:
            t_logits, s_logits = pair(batch.select(teacher_features), batch.select(student_features))
        t_logits, s_logits = t_logits.float(), s_logits.float()
        l_t = hard_loss(t_logits, batch.y, task, batch.weight)
        l_s = hard_loss(s_logits, batch.y, task, batch.weight)
        if term is None:
            l_d, parts = distill_loss(s_logits, t_logits.detach(), task, temperature, batch.weight), {}
        else:
            parts = term(s_logits, t_logits.detach(), batch)
            l_d = parts.pop("L_d")
        return {"L_s": l_s, "L_d": l_d, "L_t": l_t, **parts, "loss": l_t + (1.0 - lam) * l_s + lam * l_d}

    return step


def train_sync(teacher: Member, student: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan,
               lam: Callable[[int], float], temperature: float = 1.0, log: RunLog | None = None,
               ckpt: Checkpoints | None = None, term: DistillTerm | None = None, hint=None) -> dict:
    """`hint` (distill.hints.Hint): the hint term added to the step, its projection optimised with the student."""
    t, s = teacher.module, student.module
    # Each model keeps its own best weights; training stops when neither has improved for
    # `patience` evaluations (a teacher still improving keeps teaching). With shared tables the
    # student's best moment holds both models, so the tables they share stay consistent.
    shared = any(p is q for p in t.parameters() for q in s.parameters())
    watched = [Watched(teacher), Watched(student, [t, s] if shared else None)]
    opt = plan.optimizer(t, s) if hint is None else plan.optimizer(t, s, hint.projection)
    t.train()
    s.train()
    pair = distributed.wrap(Pair(t, s))  # under torchrun: DDP over both models at once
    step = sync_step(pair, teacher.features, student.features, label.task, plan.autocast(), temperature, term)
    if hint is not None:
        step, lam = hint.wrap(step), hint.track(lam)
    both = list(dict.fromkeys(teacher.features + student.features))
    summary = train_loop("sync", step, opt, loader.narrowed(both), watched, valid, label, plan, lam, log, ckpt)
    return summary | {"shared_tables": shared}
