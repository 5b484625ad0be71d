"""Synchronous distillation: teacher and student learn together, one optimizer step for both.

    loss = L_t(y, f_t(x, x*)) + (1 − λ)·L_s(y, f_s(x)) + λ·L_d(sg(f_t), f_s(x))

sg is the stop-gradient: L_d updates the student only, the teacher learns from L_t alone. With
`share_embeddings`, a table both models read is one module; it receives gradients from L_t through
the teacher and from (1 − λ)·L_s + λ·L_d through the student (see the README). λ follows the
schedule: an untrained teacher should not lead the student early (the PFD paper's delayed start).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from distill import distributed, schedules
from distill.config import Config
from distill.data.batch import Encoded
from distill.data.encoders import LabelEncoder
from distill.data.loader import InMemoryLoader
from distill.losses import distill_loss, hard_loss
from distill.training.checkpoint import Checkpoints
from distill.training.common import (KeepBest, RunLog, autocast, check_finite, eval_points, evaluate, make_optimizer,
                                     stopping_metric, unique_parameters)


class Pair(nn.Module):
    """Teacher and student as one module, so that under torchrun a single DDP wrapper reduces a
    shared embedding table once (two wrappers would each own, and reduce, the same parameter)."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, teacher_batch, student_batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher(teacher_batch), self.student(student_batch)


def train_sync(cfg: Config, teacher: nn.Module, student: nn.Module, teacher_features: list[str],
               student_features: list[str], loader: InMemoryLoader, valid: Encoded | None, label: LabelEncoder,
               log: RunLog, ckpt: Checkpoints | None = None) -> dict:
    task, d = cfg.task.type, cfg.distillation
    every = eval_points(cfg, len(loader))
    metric, patience = stopping_metric(cfg)
    # Each model keeps its own best weights; training stops when neither has improved for
    # `patience` evaluations (a teacher still improving keeps teaching). With shared tables the
    # student's best moment holds both models, so the tables they share stay consistent.
    shared = any(p is q for p in teacher.parameters() for q in student.parameters())
    keep = None
    if valid is not None:
        keep = (KeepBest(metric, patience, [teacher]), KeepBest(metric, patience, [teacher, student] if shared else [student]))
    opt = make_optimizer(cfg, unique_parameters(teacher, student), (teacher, student))
    step, first_epoch, start, stop, t0 = 0, 0, 0, False, time.perf_counter()
    resume = ckpt.resume_for("sync") if ckpt else None
    if resume:  # continue exactly where the checkpoint left off
        step, first_epoch, start = resume["step"], resume["epoch"], resume["batch"]
        opt.load_state_dict(resume["optimizer"])
        if keep is not None:
            keep[0].load_state(resume["keep"][0])
            keep[1].load_state(resume["keep"][1])
        torch.set_rng_state(resume["rng"])
        log.info(f"[sync] resuming at step {step} (epoch {first_epoch}, batch {start})")
    teacher.train()
    student.train()
    amp = autocast(cfg)
    pair = distributed.wrap(Pair(teacher, student))  # under torchrun: DDP over both models at once
    log.phase("sync", cfg.train.epochs * len(loader), cfg.train.batch_size, epochs=cfg.train.epochs, start=step)
    epoch = first_epoch
    for epoch in range(first_epoch, cfg.train.epochs):
        for b, batch in enumerate(loader.epoch(epoch, start if epoch == first_epoch else 0),
                                  start=start if epoch == first_epoch else 0):
            # the teacher sees serving + privileged features, the student serving features only
            with amp:
                t_logits, s_logits = pair(batch.select(teacher_features), batch.select(student_features))
            t_logits, s_logits = t_logits.float(), s_logits.float()
            lam = schedules.lam(d.schedule.type, step, d.weight, d.schedule.steps)
            l_t = hard_loss(t_logits, batch.y, task, batch.weight)
            l_s = hard_loss(s_logits, batch.y, task, batch.weight)
            l_d = distill_loss(s_logits, t_logits.detach(), task, d.temperature, batch.weight)
            loss = l_t + (1.0 - lam) * l_s + lam * l_d
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            values = {"L_s": l_s.item(), "L_d": l_d.item(), "L_t": l_t.item(), "loss": loss.item()}
            check_finite(step, values)
            if step % cfg.train.log_every == 0:
                log.step({"phase": "sync", "step": step, "epoch": epoch, "lambda": lam, "lr": opt.param_groups[0]["lr"], **values})
            step += 1
            if keep is not None and step % every == 0:
                stop = _validate(keep, teacher, student, teacher_features, student_features, valid, label, log, epoch, step)
                if stop:
                    break
            if ckpt:
                ckpt.maybe_save("sync", step, lambda: {
                    "epoch": epoch, "batch": b + 1, "optimizer": opt.state_dict(),
                    "keep": [k.state() for k in keep] if keep else None, "rng": torch.get_rng_state()})
        if stop:
            break
    if keep is not None:
        if step % every != 0:
            _validate(keep, teacher, student, teacher_features, student_features, valid, label, log, epoch, step)
        if not shared:
            keep[0].restore()
        keep[1].restore()
    return {"steps": step, "epochs": epoch + 1, "stopped_early": stop, "seconds": time.perf_counter() - t0,
            "shared_tables": shared,
            "best_valid": None if keep is None else {"teacher": {metric: keep[0].best}, "student": {metric: keep[1].best}}}


def _validate(keep: tuple[KeepBest, KeepBest], teacher, student, tf, sf, valid, label, log: RunLog,
              epoch: int, step: int) -> bool:
    t_scores = evaluate(teacher, valid, tf, label)
    log.evaluation({"phase": "sync", "model": "teacher", "epoch": epoch, "step": step, **t_scores})
    s_scores = evaluate(student, valid, sf, label)
    log.evaluation({"phase": "sync", "model": "student", "epoch": epoch, "step": step, **s_scores})
    t_done, s_done = keep[0].update(t_scores), keep[1].update(s_scores)
    return t_done and s_done
