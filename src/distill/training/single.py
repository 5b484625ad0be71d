"""One model trained alone, optionally pulled towards fixed soft labels.

Serves three modes: `none` (the baseline: L_s only), `offline` (soft labels from a data column) and
both phases of `async` (the teacher alone, then the student against the teacher's cached logits,
asynchronous.py).

    loss = (1 − λ)·L_s(y, f(x)) + λ·L_d(soft, f(x))      (λ = 0 without soft labels)

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
from distill.training.loop import Plan, Step, Watched, no_distillation, train_loop


def single_step(net: nn.Module, features: list[str], task: str, amp: contextlib.AbstractContextManager,
                soft: Callable[[Batch], torch.Tensor] | None = None, temperature: float = 1.0,
                term: DistillTerm | None = None,
                each: dict[str, Callable[[Batch], torch.Tensor]] | None = None) -> Step:
    """The step of one model: L_s, and with `soft(batch)` (the teacher's logits for the batch's
    rows) the distillation term L_d weighted by λ; `term` makes L_d when it is not pointwise alone
    (training/ranking.py). `each` (several teachers, `soft` their mix): each teacher's logits,
    logged as L_d:<name>, not minimised."""

    def step(batch: Batch, lam: float) -> dict[str, torch.Tensor]:
        with amp:
            logits = net(batch.select(features)).float()  # (B,) or (B, C)
        l_s = hard_loss(logits, batch.y, task, batch.weight)
        if soft is None:
            return {"L_s": l_s, "loss": l_s}
        if term is None:
            l_d, parts = distill_loss(logits, soft(batch), task, temperature, batch.weight), {}
        else:
            parts = term(logits, soft(batch), batch)
            l_d = parts.pop("L_d")
        out = {"L_s": l_s, "L_d": l_d, **parts, "loss": (1.0 - lam) * l_s + lam * l_d}
        for name, of in (each or {}).items():
            with torch.no_grad():
                out[f"L_d:{name}"] = distill_loss(logits, of(batch), task, temperature, batch.weight)
        return out

    return step


def train_single(member: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan,
                 phase: str, soft: Callable[[Batch], torch.Tensor] | None = None,
                 lam: Callable[[int], float] = no_distillation, temperature: float = 1.0,
                 log: RunLog | None = None, ckpt: Checkpoints | None = None, term: DistillTerm | None = None,
                 each: dict[str, Callable[[Batch], torch.Tensor]] | None = None, hint=None) -> dict:
    """Train `member` in place (best validation weights restored); returns the phase's summary.

    `soft(batch)` gives the teacher's logits for the batch's rows (async: the cached teacher;
    offline: the data column); without it the model learns from the labels alone and λ is 0.
    """
    model = member.module
    opt = plan.optimizer(model) if hint is None else plan.optimizer(model, hint.projection)  # P learns with the student
    model.train()
    net = distributed.wrap(model)  # under torchrun: DDP, gradients averaged across ranks in backward
    step = single_step(net, member.features, label.task, plan.autocast(), soft, temperature, term, each)
    lam = lam if soft is not None else no_distillation
    if hint is not None:  # distill.hints: + w·L_hint(P(h_s), h_t)
        step, lam = hint.wrap(step), hint.track(lam)
    return train_loop(phase, step, opt, loader.narrowed(member.features), [Watched(member)], valid, label, plan,
                      lam, log, ckpt)


def train_gate(ensemble: Member, caches: torch.Tensor, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan,
               log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """The gate of a frozen ensemble on the teachers' cached logits (K, N[, C]) and the labels:

        L_gate = L(y, Σ_k g_k(z) z_k),  z = the cached logits of the batch's rows

    The ensemble is watched (evaluated with its teachers), so the gate's best weights are kept."""
    from distill.ensemble import combine
    gate = ensemble.module.gate
    opt = plan.optimizer(gate)
    gate.train()
    task = label.task
    net = distributed.wrap(gate)  # under torchrun: the ranks' gradients averaged, one gate for all

    def step(batch: Batch, lam: float) -> dict[str, torch.Tensor]:
        on = batch.index.device  # caches too large for the GPU stay in host memory: gathered there (a host read a step)
        z = caches.index_select(1, batch.index if caches.device == on else batch.index.cpu()).to(on)  # (K, B[, C])
        l_gate = hard_loss(combine(z, net(z)), batch.y, task, batch.weight)  # = ensemble.mix(z)
        return {"L_gate": l_gate, "loss": l_gate}

    keep_first = ensemble.features[:1]  # the step reads labels and row numbers only
    summary = train_loop("gate", step, opt, loader.narrowed(keep_first), [Watched(ensemble, [gate])], valid, label,
                         plan, no_distillation, log, ckpt)
    gate.eval()
    return summary