"""The one training loop: every mode's bookkeeping, none of its maths.

A mode (sync.py, single.py) writes a step function that takes a batch and λ and returns its named
losses, `"loss"` being the one to minimise; this loop does everything around it, the same way for
every mode:

    for each batch of each epoch (resumed mid-epoch from a checkpoint when there is one):
        losses = step(batch, λ(step))        # {"L_s": ..., "L_d": ..., "loss": ...}
        zero_grad; losses["loss"].backward(); optimizer.step()
        keep the terms on the device; every `log_every` steps (and before an evaluation, a
            checkpoint or the phase's end) read them in one host sync: stop on the first
            non-finite term, naming its step, and log the terms, λ and lr of the logged steps
        every `eval_every` steps: evaluate each watched model, keep its best weights, stop early
            when none of them improved for `patience` evaluations
        every `checkpoint_every` steps: checkpoint (optimizer, early-stopping state, RNG, position)
    evaluate once more if the last steps were not; restore each watched model's best weights

    >>> plan = Plan(epochs=2, metric="auc", patience=2)                 # doctest: +SKIP
    >>> train_loop("student", step, plan.optimizer(model), loader, [Watched(student)], valid, label, plan)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from distill import device as devices
from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.member import Member
from distill.training.checkpoint import Checkpoints
from distill.training.common import (KeepBest, RunLog, check_finite, evaluate, make_optimizer, stopping_metric,
                                     unique_parameters)

# step(batch, λ) -> named loss tensors; "loss" is minimised, every term is logged
Step = Callable[[Batch, float], dict[str, torch.Tensor]]


def no_distillation(step: int) -> float:
    """λ of a model trained on labels alone (logged as 0)."""
    return 0.0


@dataclass
class Plan:
    """How to train, whatever the mode: length, optimizer, evaluation cadence, early stopping,
    logging and precision. Built from a Config by a recipe (`Plan.from_config`); the loops and the
    phase functions take this, never the Config."""

    epochs: int
    metric: str  # the validation metric that early stopping and keep-the-best follow
    patience: int | None = None  # evaluations without progress before stopping (None: never stop early)
    eval_every: int | None = None  # steps; None: once per epoch
    log_every: int = 1
    optimizer_name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (see distill.device.autocast), already resolved
    device: torch.device = field(default_factory=devices.resolve)

    @classmethod
    def from_config(cls, cfg: Any) -> "Plan":
        t = cfg.train
        metric, patience = stopping_metric(cfg)
        device = devices.resolve(getattr(t, "device", None))
        precision, _ = devices.resolve_precision(t.precision, device)  # its warnings: recipes.check
        return cls(t.epochs, metric, patience, t.eval_every, t.log_every, t.optimizer, t.lr, t.weight_decay,
                   precision, device)

    def optimizer(self, *modules: nn.Module):
        """The configured optimizer over the parameters of `modules`, each once (SparseAdam for
        their sparse embedding tables)."""
        return make_optimizer(self.optimizer_name, self.lr, self.weight_decay, unique_parameters(*modules), modules)

    def autocast(self):
        return devices.autocast(self.precision, self.device)


@dataclass
class Watched:
    """A model evaluated on the validation split during training, whose best weights are kept.

    `keeps`: the modules whose weights that best moment saves and restores (default: the member's
    own). Models that share a table keep both in the later one's list, so the tables they share
    stay consistent; best weights are restored in list order, so the later one's moment wins."""

    member: Member
    keeps: list[nn.Module] | None = None

    def modules(self) -> list[nn.Module]:
        return self.keeps if self.keeps is not None else [self.member.module]


def train_loop(phase: str, step: Step, opt, loader, watched: list[Watched], valid: Encoded | None,
               label: LabelEncoder, plan: Plan, lam: Callable[[int], float] = no_distillation,
               log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict[str, Any]:
    """Run `step` over `plan.epochs` epochs of `loader`; returns the phase's summary.

    The models are trained in place and end with their best validation weights (the last ones
    without a validation split). `ckpt` makes the phase resumable; its payload is this loop's.
    """
    log = log or RunLog(None, quiet=True)
    scaler = devices.grad_scaler(plan.precision, plan.device)  # fp16 only
    pending = Pending(phase, plan.log_every)
    every = plan.eval_every or len(loader)
    keep = [KeepBest(plan.metric, plan.patience, w.modules()) for w in watched] if valid is not None else None
    step_no, first_epoch, start, stop, t0 = 0, 0, 0, False, time.perf_counter()
    resume = ckpt.resume_for(phase) if ckpt else None
    if resume:  # continue exactly where the checkpoint left off
        step_no, first_epoch, start = resume["step"], resume["epoch"], resume["batch"]
        opt.load_state_dict(resume["optimizer"])
        if keep is not None:
            for k, state in zip(keep, resume["keep"]):
                k.load_state(state)
        devices.set_rng_state(resume["rng"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        log.info(f"[{phase}] resuming at step {step_no} (epoch {first_epoch}, batch {start})")
    log.phase(phase, plan.epochs * len(loader), loader.batch_size, epochs=plan.epochs, start=step_no)
    epoch = first_epoch
    for epoch in range(first_epoch, plan.epochs):
        first = start if epoch == first_epoch else 0
        for b, batch in enumerate(loader.epoch(epoch, first), start=first):
            lam_now = lam(step_no)
            losses = step(batch.to(plan.device), lam_now)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                losses["loss"].backward()
                opt.step()
            else:  # fp16: scaled loss, unscaled gradients, a step skipped when they overflowed
                scaler.scale(losses["loss"]).backward()
                for part in getattr(opt, "parts", [opt]):  # the sparse + dense pair: each stepped by the scaler
                    scaler.step(part)
                scaler.update()

            pending.add(step_no, epoch, lam_now, opt.param_groups[0]["lr"], losses)
            if step_no % plan.log_every == 0:
                pending.flush(log)
            step_no += 1
            if keep is not None and step_no % every == 0:
                pending.flush(log)  # a diverged model is never evaluated or kept as the best
                stop = _validate(phase, watched, keep, valid, label, log, epoch, step_no)
                if stop:
                    break
            if ckpt:
                if ckpt.every and step_no % ckpt.every == 0:
                    pending.flush(log)  # a checkpoint never holds weights from after a divergence
                ckpt.maybe_save(phase, step_no, lambda: {
                    "epoch": epoch, "batch": b + 1, "optimizer": opt.state_dict(),
                    "keep": [k.state() for k in keep] if keep else None, "rng": devices.rng_state(),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {})})
        if stop:
            break
    pending.flush(log)  # the phase's last steps, before its last evaluation and its end
    if keep is not None:
        if step_no % every != 0:  # the last steps were not evaluated yet
            _validate(phase, watched, keep, valid, label, log, epoch, step_no)
        for k in keep:
            k.restore()
    return {"steps": step_no, "epochs": epoch + 1, "stopped_early": stop, "seconds": time.perf_counter() - t0,
            "best_valid": None if keep is None else {w.member.name: {plan.metric: k.best} for w, k in zip(watched, keep)}}


class Pending:
    """The loss terms of the steps not read yet, kept on the device: reading a tensor's value waits
    for the GPU to finish (a host sync), so the loop reads them once per `log_every` steps, all at
    once, instead of once per term per step. On the CPU the values and the logs are the same."""

    def __init__(self, phase: str, log_every: int):
        self.phase, self.log_every = phase, log_every
        self.steps: list[tuple[int, int, float, float, tuple[str, ...]]] = []
        self.terms: list[torch.Tensor] = []

    def add(self, step: int, epoch: int, lam: float, lr: float, losses: dict[str, torch.Tensor]) -> None:
        # float64 holds every float32 / bf16 / fp16 value exactly: the logged numbers are .item()'s
        self.steps.append((step, epoch, lam, lr, tuple(losses)))
        self.terms.append(torch.stack([v.detach().to(torch.float64) for v in losses.values()]))

    def flush(self, log: RunLog) -> None:
        """Read every pending step (one host sync); raise on the first non-finite term, naming its
        step; log the steps `log_every` selects."""
        if not self.steps:
            return
        rows = torch.stack(self.terms).cpu().tolist()
        steps, self.steps, self.terms = self.steps, [], []
        for (step, epoch, lam, lr, names), row in zip(steps, rows):
            values = dict(zip(names, row))
            check_finite(step, values)
            if step % self.log_every == 0:
                log.step({"phase": self.phase, "step": step, "epoch": epoch, "lambda": lam, "lr": lr, **values})


def _validate(phase: str, watched: list[Watched], keep: list[KeepBest], valid: Encoded, label: LabelEncoder,
              log: RunLog, epoch: int, step: int) -> bool:
    """Evaluate every watched model; True when all of them have run out of patience (a teacher
    still improving keeps teaching)."""
    scores = []
    for w in watched:
        m = w.member
        scores.append(evaluate(m.module, valid, m.features, label))
        log.evaluation({"phase": phase, "model": m.name, "epoch": epoch, "step": step, **scores[-1]})
    done = [k.update(s) for k, s in zip(keep, scores)]
    return all(done)
