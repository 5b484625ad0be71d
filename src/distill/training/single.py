"""One model trained alone, optionally pulled towards fixed soft labels.

Serves three modes: `none` (the baseline: L_s only), `offline` (soft labels from a data column) and
both phases of `async` (the teacher alone, then the student against the teacher's cached logits).

    loss = (1 − λ)·L_s(y, f(x)) + λ·L_d(soft, f(x))      (λ = 0 without soft labels)
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from distill import distributed, schedules
from distill.config import Config
from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.data.loader import InMemoryLoader
from distill.losses import distill_loss, hard_loss
from distill.training.checkpoint import Checkpoints
from distill.training.common import (KeepBest, RunLog, autocast, check_finite, eval_points, evaluate, make_optimizer,
                                     stopping_metric, unique_parameters)


def train_single(cfg: Config, model: nn.Module, features: list[str], loader: InMemoryLoader, valid: Encoded | None,
                 label: LabelEncoder, log: RunLog, phase: str,
                 soft: Callable[[Batch], torch.Tensor] | None = None, ckpt: Checkpoints | None = None) -> dict:
    """Train `model` in place (best validation weights restored); returns a summary dict.

    `soft(batch)` gives the teacher's logits for the batch's rows (async: the cached teacher;
    offline: the data column); without it the model learns from the labels alone.
    """
    task, d = cfg.task.type, cfg.distillation
    every = eval_points(cfg, len(loader))
    metric, patience = stopping_metric(cfg)
    keep = KeepBest(metric, patience, [model]) if valid is not None else None
    opt = make_optimizer(cfg, unique_parameters(model), (model,))
    step, first_epoch, start, stop, t0 = 0, 0, 0, False, time.perf_counter()
    resume = ckpt.resume_for(phase) if ckpt else None
    if resume:  # continue exactly where the checkpoint left off
        step, first_epoch, start = resume["step"], resume["epoch"], resume["batch"]
        opt.load_state_dict(resume["optimizer"])
        if keep is not None:
            keep.load_state(resume["keep"])
        torch.set_rng_state(resume["rng"])
        log.info(f"[{phase}] resuming at step {step} (epoch {first_epoch}, batch {start})")
    model.train()
    amp = autocast(cfg)
    net = distributed.wrap(model)  # under torchrun: DDP, gradients averaged across ranks in backward
    log.phase(phase, cfg.train.epochs * len(loader), cfg.train.batch_size, epochs=cfg.train.epochs, start=step)
    epoch = first_epoch
    for epoch in range(first_epoch, cfg.train.epochs):
        for b, batch in enumerate(loader.epoch(epoch, start if epoch == first_epoch else 0),
                                  start=start if epoch == first_epoch else 0):
            with amp:
                logits = net(batch.select(features)).float()  # (B,) or (B, C)
            l_s = hard_loss(logits, batch.y, task, batch.weight)
            terms = {"L_s": l_s}
            lam = 0.0
            if soft is not None:
                lam = schedules.lam(d.schedule.type, step, d.weight, d.schedule.steps)
                terms["L_d"] = distill_loss(logits, soft(batch), task, d.temperature, batch.weight)
                loss = (1.0 - lam) * l_s + lam * terms["L_d"]
            else:
                loss = l_s
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            values = {k: v.item() for k, v in terms.items()} | {"loss": loss.item()}
            check_finite(step, values)
            if step % cfg.train.log_every == 0:
                log.step({"phase": phase, "step": step, "epoch": epoch, "lambda": lam, "lr": opt.param_groups[0]["lr"], **values})
            step += 1
            if keep is not None and step % every == 0:
                scores = evaluate(model, valid, features, label)
                log.evaluation({"phase": phase, "model": phase, "epoch": epoch, "step": step, **scores})
                stop = keep.update(scores)
                if stop:
                    break
            if ckpt:
                ckpt.maybe_save(phase, step, lambda: {
                    "epoch": epoch, "batch": b + 1, "optimizer": opt.state_dict(),
                    "keep": keep.state() if keep else None, "rng": torch.get_rng_state()})
        if stop:
            break
    if keep is not None:
        if step % every != 0:  # the last steps were not evaluated yet
            scores = evaluate(model, valid, features, label)
            log.evaluation({"phase": phase, "model": phase, "epoch": epoch, "step": step, **scores})
            keep.update(scores)
        keep.restore()
    return {"steps": step, "epochs": epoch + 1, "stopped_early": stop, "seconds": time.perf_counter() - t0,
            "best_valid": None if keep is None else {metric: keep.best}}
