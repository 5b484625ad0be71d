"""One recipe per distillation mode: which models it trains, its part of the config, its phases.

`distill.run.train` reads the data, builds the models a recipe declares, then calls its `train`,
which runs public phase functions (phases.py) top to bottom; each phase is checkpointed as a whole
(`Context.phase`), so a resumed run skips the phases already done. A new mode is one more recipe
here and, if its maths is new, one more step function in training/.

    sync     teacher + student in one loop (training/sync.py), then the baseline
    async    the teacher (or a trained one, distillation.teacher_checkpoint), its logits cached once,
             the student against them (training/asynchronous.py, single.py), then the baseline;
             with distillation.cross_fit K, a "cross_fit" phase between teacher and student trains
             K fold teachers and the student learns their out-of-fold logits instead
    offline  the student against a score column of the training data (single.py), then the baseline
    none     the baseline alone: the student's architecture on the labels

    >>> RECIPES["async"].models                      # doctest: +SKIP
    ('teacher', 'student')
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from distill import phases, schedules, schema
from distill.config import Config
from distill.data.encoders import LabelEncoder
from distill.errors import DistillError
from distill.member import Member
from distill.training.checkpoint import Checkpoints, atomic_write
from distill.training.common import RunLog
from distill.training import ranking
from distill.training.loop import Plan


@dataclass
class Context:
    """What `run.train` hands a recipe: the config, the built models, the data, where to log and
    checkpoint, and `info` (run.json) to add to."""

    cfg: Config
    members: dict[str, Member]  # by name, in build order
    loader: Any  # training batches (in memory, streamed, or sharded across ranks)
    valid: Any  # Encoded | None
    label: LabelEncoder
    log: RunLog
    ckpt: Checkpoints
    info: dict[str, Any] = field(default_factory=dict)
    build: Callable[[str, int], Member] | None = None  # (name, seed) -> a freshly initialised model (cross-fitting)

    @property
    def plan(self) -> Plan:
        return Plan.from_config(self.cfg)

    def lam(self, step: int) -> float:
        """λ at `step`, from distillation.weight and distillation.schedule."""
        d = self.cfg.distillation
        return schedules.lam(d.schedule.type, step, d.weight, d.schedule.steps)

    def phase(self, name: str, fn: Callable[[], dict]) -> None:
        """Run one training phase unless a checkpoint says it is already done."""
        if name not in self.ckpt.completed:
            t = time.perf_counter()
            summary = fn()
            summary["wall_seconds"] = time.perf_counter() - t
            self.ckpt.finish(name, summary)


@dataclass(frozen=True)
class Recipe:
    models: tuple[str, ...]  # the models it trains; the baseline is added when train.baseline is true
    check: Callable[[Config], list[str]]  # its part of the config: raises DistillError, returns warnings
    train: Callable[[Context], None]
    prepare: Callable[[Context], None] = lambda ctx: None  # after building, before resuming (sync: share tables)


# ----------------------------------------------------------------------------- checks


def _refuse_others(cfg: Config) -> list[str]:
    """The options that only one mode uses, set in another mode."""
    d, mode = cfg.distillation, cfg.distillation.mode
    warnings = [f"distillation.soft_label is ignored in mode '{mode}'"] if mode != "offline" and d.soft_label else []
    if d.teacher_checkpoint and mode != "async":
        raise DistillError("distillation.teacher_checkpoint: only mode 'async' starts from a trained teacher")
    if d.share_embeddings and mode != "sync":
        raise DistillError("distillation.share_embeddings: only mode 'sync' trains both models together and can share tables")
    if (d.cross_fit or 1) > 1 and mode != "async":
        why = {"sync": "mode 'sync' trains the teacher alongside the student on every row, so no teacher is held out",
               "offline": "mode 'offline' reads the teacher's scores from a column (distillation.soft_label); "
                          "distill trains no teacher there to cross-fit",
               }.get(mode, f"mode '{mode}' trains no teacher")
        raise DistillError(f"distillation.cross_fit: {why}; cross-fitting applies to mode 'async'")
    return warnings


def check_sync(cfg: Config) -> list[str]:
    schema.model_features(cfg, "teacher")
    warnings = _refuse_others(cfg)
    if cfg.distillation.share_embeddings and cfg.teacher.embedding_dim != cfg.student.embedding_dim:
        raise DistillError(
            "distillation.share_embeddings: teacher.embedding_dim and student.embedding_dim differ "
            f"({cfg.teacher.embedding_dim} vs {cfg.student.embedding_dim}); shared tables need one size"
        )
    return warnings + schema.teacher_warnings(cfg)


def check_async(cfg: Config) -> list[str]:
    schema.model_features(cfg, "teacher")
    warnings = _refuse_others(cfg)
    if (cfg.distillation.cross_fit or 1) > 1:
        if cfg.distillation.teacher_checkpoint:
            raise DistillError("distillation.cross_fit: the teacher comes trained from distillation.teacher_checkpoint; "
                               "cross-fitting trains its own K teachers, so set one of the two")
        if cfg.data.streaming:
            raise DistillError("distillation.cross_fit: needs the training split in memory (data.streaming is on)")
    return warnings + schema.teacher_warnings(cfg)


def check_offline(cfg: Config) -> list[str]:
    if not cfg.distillation.soft_label:
        raise DistillError("distillation.soft_label: mode 'offline' needs the column that holds the teacher's score")
    return _refuse_others(cfg)


def check_none(cfg: Config) -> list[str]:
    return _refuse_others(cfg)


# ----------------------------------------------------------------------------- recipes


def share(ctx: Context) -> None:
    """sync with distillation.share_embeddings: one table per feature both models read."""
    from distill.models.parts import share_tables
    d = ctx.cfg.distillation
    if not d.share_embeddings:
        return
    t, s = ctx.members["teacher"], ctx.members["student"]
    common = [n for n in s.features if n in t.features and n not in d.separate_embeddings]
    ctx.info["shared_tables"] = share_tables(t.module, s.module, common)
    ctx.log.info(f"sharing embedding tables: {', '.join(ctx.info['shared_tables']) or 'none'}")


def train_sync(ctx: Context) -> None:
    t, s = ctx.members["teacher"], ctx.members["student"]
    ctx.phase("sync", lambda: phases.fit_together(t, s, ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                                  temperature=ctx.cfg.distillation.temperature, log=ctx.log, ckpt=ctx.ckpt,
                                                  term=ranking.term_of(ctx.cfg, ctx.loader)))
    train_baseline(ctx)


def train_async(ctx: Context) -> None:
    t, s = ctx.members["teacher"], ctx.members["student"]
    if not ctx.cfg.distillation.teacher_checkpoint:
        ctx.log.info("async: training the teacher")
        ctx.phase("teacher", lambda: phases.fit_teacher(t, ctx.loader, ctx.valid, ctx.label, ctx.plan, log=ctx.log, ckpt=ctx.ckpt))

    k = ctx.cfg.distillation.cross_fit or 1
    held: dict[str, Any] = {}
    if k > 1:
        ctx.phase("cross_fit", lambda: cross_fit(ctx, held))

    def student() -> dict:
        t0 = time.perf_counter()
        if k > 1:  # the out-of-fold logits: this process's, or the interrupted run's, or (lost) again
            cache = held["logits"] if "logits" in held else _saved_cross_fit(ctx, held)
        else:
            cache = phases.cache_teacher_logits(t, ctx.loader, precision=ctx.cfg.train.precision, log=ctx.log)
        soft_seconds = time.perf_counter() - t0
        ctx.log.info(f"async: teacher soft labels cached in {soft_seconds:.2f}s; training the student")
        summary = phases.fit_student(s, cache, ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                     temperature=ctx.cfg.distillation.temperature, log=ctx.log, ckpt=ctx.ckpt,
                                     term=ranking.term_of(ctx.cfg, ctx.loader))
        return summary | {"soft_label_seconds": soft_seconds}

    ctx.phase("student", student)
    train_baseline(ctx)


CROSS_FIT_FILE = "cross_fit_logits.pt"  # beside the checkpoints, removed with them when the run completes


def cross_fit(ctx: Context, held: dict[str, Any]) -> dict:
    """async with distillation.cross_fit: K: the out-of-fold logits of K fold teachers (phases.py),
    kept in `held` and, when the run checkpoints, saved so that a resumed run's student reads the
    same soft labels. An interruption inside this phase redoes it from its first fold (the fold
    teachers are not checkpointed; each fold is a function of the seed, so the result is the same).
    The summary (run.json's phases.cross_fit) has each fold teacher's validation metrics and the
    mean training-row loss of the full teacher against the out-of-fold logits: how much of the full
    teacher's soft labels is memorised answers."""
    from distill.losses import hard_loss
    cfg, t = ctx.cfg, ctx.members["teacher"]
    if ctx.build is None or not hasattr(ctx.loader, "subset"):
        raise DistillError("distillation.cross_fit: needs the training split in memory in one process")
    k, seed = cfg.distillation.cross_fit, cfg.train.seed

    def make(i: int) -> Member:
        m = ctx.build("teacher", seed + 1000 * (i + 1))  # each fold's teacher its own init
        return Member(f"teacher_fold{i + 1}", "teacher", m.module, m.features)

    ctx.log.info(f"async: cross-fitting {k} teachers, each on {k - 1}/{k} of the training rows")
    oof = phases.cross_fit_teacher_logits(make, ctx.loader, ctx.valid, ctx.label, ctx.plan, k, seed, log=ctx.log)
    full = phases.cache_teacher_logits(t, ctx.loader, precision=cfg.train.precision)
    data = ctx.loader.data
    in_fold = hard_loss(full, data.y, ctx.label.task, data.weight).item()
    out_fold = hard_loss(oof.logits, data.y, ctx.label.task, data.weight).item()
    ctx.log.info(f"cross-fit: the full teacher's loss on its own training rows {in_fold:.4f}, "
                 f"the out-of-fold teachers' {out_fold:.4f}")
    held["logits"] = oof.logits
    if ctx.ckpt.every and ctx.ckpt.write:
        ctx.ckpt.directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(oof.logits, buf)
        atomic_write(ctx.ckpt.directory / CROSS_FIT_FILE, buf.getvalue())
    return {"k": k, "teachers": oof.teachers, "train_loss_full_teacher": in_fold, "train_loss_out_of_fold": out_fold}


def _saved_cross_fit(ctx: Context, held: dict[str, Any]) -> torch.Tensor:
    path = ctx.ckpt.directory / CROSS_FIT_FILE
    if path.is_file():
        return torch.load(path, weights_only=True)
    cross_fit(ctx, held)  # the file was lost: the same folds and seeds give the same logits
    return held["logits"]


def train_offline(ctx: Context) -> None:
    s = ctx.members["student"]
    ctx.phase("student", lambda: phases.fit_student(s, lambda batch: batch.soft, ctx.loader, ctx.valid, ctx.label,
                                                    ctx.plan, lam=ctx.lam, temperature=ctx.cfg.distillation.temperature,
                                                    log=ctx.log, ckpt=ctx.ckpt, term=ranking.term_of(ctx.cfg, ctx.loader)))
    train_baseline(ctx)


def train_baseline(ctx: Context) -> None:
    """The last phase of every mode (unless train.baseline is false), the only one of `none`."""
    if "baseline" in ctx.members:
        ctx.log.info("training the baseline: the same student without distillation")
        b = ctx.members["baseline"]
        ctx.phase("baseline", lambda: phases.fit_baseline(b, ctx.loader, ctx.valid, ctx.label, ctx.plan, log=ctx.log, ckpt=ctx.ckpt))


RECIPES: dict[str, Recipe] = {
    "sync": Recipe(("teacher", "student"), check_sync, train_sync, prepare=share),
    "async": Recipe(("teacher", "student"), check_async, train_async),
    "offline": Recipe(("student",), check_offline, train_offline),
    "none": Recipe(("baseline",), check_none, train_baseline),
}


def recipe(cfg: Config) -> Recipe:
    return RECIPES[cfg.distillation.mode]


def members(cfg: Config) -> list[str]:
    """The names of the models a run of `cfg` builds, in build order (teacher, student, baseline)."""
    names = list(recipe(cfg).models)
    if cfg.train.baseline and "baseline" not in names:
        names.append("baseline")
    return names


def role_of(name: str) -> str:
    """The config section a model is built from: the baseline is a student."""
    return "teacher" if name.startswith("teacher") else "student"


def check(cfg: Config) -> list[str]:
    """The schema's rules, then the mode's; returns the warnings."""
    from distill import device  # train.device, precision, sparse_embeddings under NCCL
    return schema.check(cfg) + recipe(cfg).check(cfg) + device.check(cfg.train) + ranking.check(cfg)
