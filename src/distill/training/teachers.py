"""Synchronous distillation from several teachers: all of them and the student in one loop.

    loss = Σ_k L_t(y, f_k) + (1 − λ)·L_s(y, f_s) + λ·L_d(sg(z_ens), f_s) [+ L_gate(y, gate(sg(f_1..f_K)))]

Each teacher learns from its own L_t alone (sg: L_d reaches the student only); z_ens is the mean,
the weighted mean or the gated mix of the teachers' logits (distill.ensemble). The gate learns from
the hard labels on the detached logits, so it never moves a teacher. Logged: every term, and
L_d:<name>, the student's distance to each teacher on its own (not minimised; it shows which one it follows).
The loop around the step is loop.py's.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from distill import distributed
from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.ensemble import Ensemble
from distill.losses import distill_loss, hard_loss
from distill.member import Member
from distill.training.checkpoint import Checkpoints
from distill.training.common import RunLog
from distill.training.loop import Plan, Step, Watched, train_loop


class Group(nn.Module):
    """The teachers (with the gate) and the student as one module: one DDP wrapper under torchrun."""

    def __init__(self, ensemble: Ensemble, student: nn.Module):
        super().__init__()
        self.ensemble, self.student = ensemble, student

    def forward(self, batch: Batch, student_features: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ensemble.member_logits(batch), self.student(batch.select(student_features))


def ensemble_step(group: nn.Module, ensemble: Ensemble, student_features: list[str], task: str,
                  amp: contextlib.AbstractContextManager, temperature: float) -> Step:
    def step(batch: Batch, lam: float) -> dict[str, torch.Tensor]:
        with amp:
            t_logits, s_logits = group(batch, student_features)  # (K, B[, C]), (B[, C])
        s_logits = s_logits.float()
        out: dict[str, torch.Tensor] = {"L_s": hard_loss(s_logits, batch.y, task, batch.weight)}
        l_t = torch.zeros(())
        for name, z in zip(ensemble.names, t_logits):
            term = hard_loss(z, batch.y, task, batch.weight)
            out[f"L_t:{name.removeprefix('teacher:')}"] = term
            l_t = l_t + term
            with torch.no_grad():
                out[f"L_d:{name.removeprefix('teacher:')}"] = distill_loss(s_logits, z, task, temperature, batch.weight)
        mixed = ensemble.mix(t_logits.detach())  # the gate (if any) learns on detached teacher logits
        out["L_d"] = distill_loss(s_logits, mixed, task, temperature, batch.weight)
        out["L_t"] = l_t
        loss = l_t + (1.0 - lam) * out["L_s"] + lam * out["L_d"]
        if ensemble.gate is not None:
            out["L_gate"] = hard_loss(mixed, batch.y, task, batch.weight)
            loss = loss + out["L_gate"]
        out["loss"] = loss
        return out

    return step


def train_ensemble_sync(teachers: list[Member], ensemble: Ensemble, student: Member, loader, valid: Encoded | None,
                        label: LabelEncoder, plan: Plan, lam: Callable[[int], float], temperature: float = 1.0,
                        log: RunLog | None = None, ckpt: Checkpoints | None = None,
                        ensemble_member: Member | None = None) -> dict:
    # Every teacher and the student keep their own best weights; with a gate the ensemble is watched
    # too, so the gate's best moment (with the teachers' weights at it) is what is kept for it.
    watched = [Watched(t) for t in teachers] + [Watched(student)]
    if ensemble.gate is not None and ensemble_member is not None:
        watched.append(Watched(ensemble_member, [ensemble.gate]))
    opt = plan.optimizer(ensemble, student.module)
    ensemble.train()
    student.module.train()
    group = distributed.wrap(Group(ensemble, student.module))
    step = ensemble_step(group, ensemble, student.features, label.task, plan.autocast(), temperature)
    every = list(dict.fromkeys([n for t in teachers for n in t.features] + student.features))
    return train_loop("sync", step, opt, loader.narrowed(every), watched, valid, label, plan, lam, log, ckpt)
