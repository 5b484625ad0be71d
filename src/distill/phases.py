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

Out-of-fold soft labels (distillation.cross_fit), the full teacher still fitted as above:

    >>> make = lambda i: build_member(cfg, splits.encoders, "teacher", seed=1000 * (i + 1))   # doctest: +SKIP
    >>> oof = cross_fit_teacher_logits(make, loader, splits.valid, label, plan, k=5, seed=0)
    >>> fit_student(student, oof.logits, loader, splits.valid, label, plan, lam=0.5)

(`build_member` is distill.run's.) `valid` may be None: no early stopping, the last weights kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from distill.data.batch import Batch, Encoded
from distill.data.encoders import LabelEncoder
from distill.data.loader import placement_of
from distill.errors import DistillError
from distill.member import Member
from distill.training.asynchronous import cache_logits, from_cache
from distill.training.checkpoint import Checkpoints
from distill.training.common import RunLog
from distill.training.loop import Plan
from distill.training.ranking import DistillTerm
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
    from distill.inference import model_device
    where = model_device(teacher.module)  # autocast for the device the teacher is on; "auto" resolved there
    chosen, _ = device.resolve_precision(precision, where)
    return cache_logits(teacher, loader, log=log, precision=device.autocast(chosen, where))


def fit_student(student: Member, soft: torch.Tensor | Callable[[Batch], torch.Tensor], loader,
                valid: Encoded | None, label: LabelEncoder, plan: Plan, *, lam: Lambda, temperature: float = 1.0,
                log: RunLog | None = None, ckpt: Checkpoints | None = None, phase: str = "student",
                term: DistillTerm | None = None, each_teacher: dict[str, torch.Tensor] | None = None,
                hint=None) -> dict:
    """The student against given soft labels: `soft` is the cached logits of every training row
    (`cache_teacher_logits`) or a function of the batch (offline: `lambda batch: batch.soft`).
    `term`: a within-group distillation term (training/ranking.py term_of); None: pointwise.
    `each_teacher` (several teachers, `soft` their mix): each one's cached logits, to log L_d:<name>."""
    soft_of = from_cache(soft) if isinstance(soft, torch.Tensor) else soft
    if isinstance(soft, torch.Tensor) and soft.device.type == "cpu" and placement_of(loader) is not None \
            and hasattr(loader, "with_soft"):
        # on a GPU with the cache in host memory (too large for the device): its rows are gathered
        # with the features', by the same index, through the pinned staging buffers
        loader, soft_of = loader.with_soft(soft), (lambda batch: batch.soft)
    each = {n: from_cache(c) for n, c in each_teacher.items()} if each_teacher else None
    return train_single(student, loader, valid, label, plan, phase, soft=soft_of, lam=_schedule(lam),
                        temperature=temperature, log=log, ckpt=ckpt, term=term, each=each, hint=hint)


def fit_gate(ensemble: Member, caches: torch.Tensor, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
             log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """async with ensemble type gate: the gate alone, on the teachers' cached logits (K, N[, C]) and
    the hard labels; the teachers stay frozen (distill.ensemble)."""
    from distill.training.single import train_gate
    return train_gate(ensemble, caches, loader, valid, label, plan, log=log, ckpt=ckpt)


def fit_gate_on_valid(ensemble: Member, teachers: list[Member], valid: Encoded, label: LabelEncoder, plan: Plan,
                      batch_size: int, seed: int, *, log: RunLog | None = None) -> dict:
    """async with ensemble type gate and fit_on valid: the gate on held-out teacher logits. The
    validation rows are dealt (seeded) into two halves: the gate learns on the frozen teachers'
    logits of the first, and early-stops on the second. In-sample logits (fit_gate on the training
    rows) are over-confident where a teacher memorised, so a gate fitted there learns to trust the
    most over-fitted teacher: the stacking problem. Every rank of a torchrun job fits the same gate
    on the same rows (the gate is not wrapped: no collective but validation's)."""
    from distill.data.loader import InMemoryLoader
    from distill.training.single import train_gate
    n = len(valid)
    if n < 2:
        raise DistillError("distillation.ensemble.fit_on: 'valid' needs at least 2 validation rows")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit_rows, stop_rows = perm[: n // 2], perm[n // 2:].sort().values
    caches = torch.stack([_predict_rows(t, InMemoryLoader(valid, batch_size, seed), torch.arange(n), plan)
                          for t in teachers])  # (K, n[, C]) by validation row number
    stop = valid.batch(stop_rows).as_encoded()
    stop.group = valid.group[stop_rows.numpy()] if valid.group is not None else None
    loader = InMemoryLoader(valid, batch_size, seed).subset(fit_rows)
    summary = train_gate(ensemble, caches, loader, stop, label, plan, log=log)
    return summary | {"fit_on": "valid", "fit_rows": len(fit_rows), "stop_rows": len(stop_rows)}


def fit_baseline(baseline: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
                 log: RunLog | None = None, ckpt: Checkpoints | None = None) -> dict:
    """The student's architecture on the labels alone: what distillation is measured against."""
    return train_single(baseline, loader, valid, label, plan, "baseline", log=log, ckpt=ckpt)


def fit_together(teacher: Member, student: Member, loader, valid: Encoded | None, label: LabelEncoder, plan: Plan, *,
                 lam: Lambda, temperature: float = 1.0, log: RunLog | None = None,
                 ckpt: Checkpoints | None = None, term: DistillTerm | None = None, hint=None) -> dict:
    """Teacher and student in one loop, one optimizer step for both (sync). `hint`: distill.hints."""
    return train_sync(teacher, student, loader, valid, label, plan, _schedule(lam), temperature, log, ckpt, term,
                      hint=hint)


@dataclass
class OutOfFold:
    """What `cross_fit_teacher_logits` returns: the out-of-fold logits by training-row number (the
    layout of `cache_teacher_logits`), each row's fold, and one summary per fold's teacher."""

    logits: torch.Tensor  # (N,) or (N, C)
    fold: torch.Tensor  # (N,) int64: the fold each row was held out in
    teachers: list[dict] = field(default_factory=list)  # per fold: rows trained on, validation metrics, steps


def folds(n: int, k: int, seed: int) -> torch.Tensor:
    """The fold (0..k-1) of each of `n` rows: a seeded random permutation dealt into k parts whose
    sizes differ by at most one."""
    if k < 2 or k > n:
        raise DistillError(f"distillation.cross_fit: {k} folds need 2 ≤ K ≤ the training rows ({n:,})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(n, dtype=torch.long)
    fold[perm] = torch.arange(n) % k
    return fold


def cross_fit_teacher_logits(make_teacher: Callable[[int], Member], loader, valid: Encoded | None, label: LabelEncoder,
                             plan: Plan, k: int, seed: int, *, log: RunLog | None = None) -> OutOfFold:
    """Out-of-fold soft labels: for each fold i of `folds(N, k, seed)`, a fresh teacher
    `make_teacher(i)` (its own seeded init) learns on the other rows with the same `plan` (early
    stopping on the same `valid`), and its logits on fold i become those rows' soft labels. So
    no training row's soft label comes from a teacher that saw its label. `loader` is an
    `InMemoryLoader` over the whole training split; the full teacher is trained separately
    (`fit_teacher`) and still scores validation and test. The torch RNG is left as it was found,
    so what runs after does not depend on K. `log` gets one line per fold."""
    from distill.training.common import evaluate
    fold = folds(loader.num_rows, k, seed)
    rng = torch.get_rng_state()
    out: torch.Tensor | None = None
    teachers = []
    try:
        for i in range(k):
            train_rows, held = (fold != i).nonzero().squeeze(1), (fold == i).nonzero().squeeze(1)
            teacher = make_teacher(i)
            if log is not None:
                log.info(f"cross-fit teacher {i + 1}/{k} on {len(train_rows):,} rows")
            summary = train_single(teacher, loader.subset(train_rows), valid, label, plan, f"cross_fit_{i + 1}")
            z = _predict_rows(teacher, loader, held, plan)
            if out is None:
                out = torch.zeros((loader.num_rows,) + tuple(z.shape[1:]), dtype=z.dtype)
            out[held] = z
            scores = evaluate(teacher.module, valid, teacher.features, label) if valid is not None else {}
            teachers.append({"fold": i + 1, "train_rows": len(train_rows), "held_out_rows": len(held),
                             "steps": summary["steps"], "epochs": summary["epochs"], "valid": scores})
            if log is not None and scores:
                log.info(f"cross-fit teacher {i + 1}/{k}: valid " + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()))
    finally:
        torch.set_rng_state(rng)
    assert out is not None
    return OutOfFold(out, fold, teachers)


def _predict_rows(member: Member, loader, rows: torch.Tensor, plan: Plan, batch_size: int = 8192) -> torch.Tensor:
    """The member's logits on training rows `rows`, in that order, frozen."""
    member.module.eval()
    parts = []
    with torch.no_grad():
        for b in loader.data.batches(batch_size, order=rows, names=member.features):
            with plan.autocast():
                parts.append(member.module(b.to(plan.device)).float().cpu())
    return torch.cat(parts)


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
