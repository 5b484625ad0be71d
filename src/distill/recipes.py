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
    if mode != "offline" and d.soft_labels:
        warnings.append(f"distillation.soft_labels is ignored in mode '{mode}'")
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


def _check_teachers(cfg: Config) -> list[str] | None:
    """Several teachers (`teachers:`): each one's features, the ensemble's weights. None with one teacher."""
    e = cfg.distillation.ensemble
    if cfg.teachers is None:
        if e.type != "mean" or e.weights:
            return ["distillation.ensemble is ignored with one teacher (name several under 'teachers:')"]
        return None
    for name in schema.teacher_sections(cfg):
        schema.model_features(cfg, name)
    if e.type == "weights":
        for n in cfg.teachers:
            if n not in e.weights:
                raise DistillError(f"distillation.ensemble.weights: no weight for teacher '{n}' (give one per name under 'teachers:')")
        for n, w in e.weights.items():
            if n not in cfg.teachers:
                raise DistillError(f"distillation.ensemble.weights: '{n}' is not a teacher (teachers: {', '.join(cfg.teachers)})")
            if w < 0:
                raise DistillError(f"distillation.ensemble.weights.{n}: must be at least 0, not {w}")
        if sum(e.weights.values()) <= 0:
            raise DistillError("distillation.ensemble.weights: at least one weight must be above 0")
    elif e.weights:
        raise DistillError(f"distillation.ensemble.weights: only ensemble type 'weights' uses them (the type is '{e.type}')")
    if e.fit_on != "train":
        if e.type != "gate":
            raise DistillError(f"distillation.ensemble.fit_on: only ensemble type 'gate' is fitted (the type is '{e.type}')")
        if cfg.distillation.mode != "async":
            raise DistillError("distillation.ensemble.fit_on: 'valid' needs mode 'async' (in sync the gate learns "
                               "alongside the teachers on the training rows)")
        if not cfg.data.valid:
            raise DistillError("distillation.ensemble.fit_on: 'valid' fits the gate on the validation split; set data.valid")
    if cfg.distillation.share_embeddings:
        raise DistillError("distillation.share_embeddings: with several teachers no table is shared (use one 'teacher:')")
    if cfg.distillation.hint is not None:
        raise DistillError("distillation.hint: pulls toward one teacher's hidden layer; with 'teachers:' it is not supported yet")
    if cfg.distillation.teacher_checkpoint:
        raise DistillError("distillation.teacher_checkpoint: starts from one trained teacher; with 'teachers:' each is trained here")
    return _refuse_others(cfg)


def check_sync(cfg: Config) -> list[str]:
    many = _check_teachers(cfg)
    if many is not None and cfg.teachers is not None:
        return many
    schema.model_features(cfg, "teacher")
    warnings = _refuse_others(cfg)
    if cfg.distillation.share_embeddings and cfg.teacher.embedding_dim != cfg.student.embedding_dim:
        raise DistillError(
            "distillation.share_embeddings: teacher.embedding_dim and student.embedding_dim differ "
            f"({cfg.teacher.embedding_dim} vs {cfg.student.embedding_dim}); shared tables need one size"
        )
    return (many or []) + warnings + schema.teacher_warnings(cfg)


def check_async(cfg: Config) -> list[str]:
    many = _check_teachers(cfg)
    if many is not None and cfg.teachers is not None:
        return many
    schema.model_features(cfg, "teacher")
    warnings = _refuse_others(cfg)
    if (cfg.distillation.cross_fit or 1) > 1:
        if cfg.distillation.teacher_checkpoint:
            raise DistillError("distillation.cross_fit: the teacher comes trained from distillation.teacher_checkpoint; "
                               "cross-fitting trains its own K teachers, so set one of the two")
        if cfg.data.streaming:
            raise DistillError("distillation.cross_fit: needs the training split in memory (data.streaming is on)")
    return (many or []) + warnings + schema.teacher_warnings(cfg)


def check_many_unsupported(cfg: Config) -> None:
    if cfg.teachers is not None:
        raise DistillError(f"teachers: mode '{cfg.distillation.mode}' trains no teacher (several teachers need mode sync or async)")


def check_offline(cfg: Config) -> list[str]:
    check_many_unsupported(cfg)
    d = cfg.distillation
    if d.hint is not None:
        raise DistillError("distillation.hint: mode 'offline' has scores, not a teacher's hidden layer (use sync or async)")
    if d.soft_labels is not None:  # several teachers' scores, one column each, combined by distillation.ensemble
        if d.soft_label:
            raise DistillError("distillation: set either 'soft_label' (one column) or 'soft_labels' (several), not both")
        if len(d.soft_labels) < 2:
            raise DistillError("distillation.soft_labels: name at least two columns (one is distillation.soft_label)")
        if cfg.data.streaming:
            raise DistillError("distillation.soft_labels: several score columns are read in memory only (data.streaming is on)")
        if d.ensemble.type == "gate":
            raise DistillError("distillation.ensemble.type: 'gate' needs teachers to train with; offline combines "
                               "score columns by 'mean' or 'weights'")
        if d.ensemble.type == "weights":
            for c in d.soft_labels:
                if c not in d.ensemble.weights:
                    raise DistillError(f"distillation.ensemble.weights: no weight for column '{c}' (one per soft_labels column)")
            if sum(d.ensemble.weights.values()) <= 0 or min(d.ensemble.weights.values()) < 0:
                raise DistillError("distillation.ensemble.weights: weights must be at least 0, and one above 0")
        return _refuse_others(cfg)
    if not cfg.distillation.soft_label:
        raise DistillError("distillation.soft_label: mode 'offline' needs the column that holds the teacher's score")
    return _refuse_others(cfg)


def check_none(cfg: Config) -> list[str]:
    check_many_unsupported(cfg)
    if cfg.distillation.hint is not None:
        raise DistillError("distillation.hint: mode 'none' has no teacher to take a hint from")
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
    if d.share_sequence_encoder:  # models/sequence.py: one din / self_attention module per sequence
        from distill.models.parts import share_sequence_encoders
        try:
            ctx.info["shared_sequence_encoders"] = share_sequence_encoders(t.module, s.module, common)
        except ValueError as e:
            raise DistillError(f"distillation.share_sequence_encoder: {e}") from None
        ctx.log.info(f"sharing sequence encoders: {', '.join(ctx.info['shared_sequence_encoders']) or 'none'}")


def teachers_of(ctx: Context) -> list[Member]:
    return [m for n, m in ctx.members.items() if n.startswith("teacher:")]


def train_sync_many(ctx: Context) -> None:
    """sync with `teachers:`: every teacher, the gate (if any) and the student in one loop (training/teachers.py)."""
    from distill.training.teachers import train_ensemble_sync
    ens, s = ctx.members["ensemble"], ctx.members["student"]
    ctx.phase("sync", lambda: train_ensemble_sync(teachers_of(ctx), ens.module, s, ctx.loader, ctx.valid, ctx.label,
                                                  ctx.plan, ctx.lam, ctx.cfg.distillation.temperature, ctx.log,
                                                  ctx.ckpt, ensemble_member=ens))
    train_baseline(ctx)


def train_async_many(ctx: Context) -> None:
    """async with `teachers:`: each teacher alone (a phase each), their logits cached, the gate (if
    any; a phase) on those or on held-out validation logits, then the student against the combined logits."""
    ens, s = ctx.members["ensemble"], ctx.members["student"]
    for t in teachers_of(ctx):
        ctx.log.info(f"async: training {t.name}")
        ctx.phase(t.name, lambda t=t: phases.fit_teacher(t, ctx.loader, ctx.valid, ctx.label, ctx.plan, log=ctx.log,
                                                          ckpt=ctx.ckpt, phase=t.name))

    def cached() -> torch.Tensor:
        return torch.stack([phases.cache_teacher_logits(t, ctx.loader, precision=ctx.cfg.train.precision, log=ctx.log)
                            for t in teachers_of(ctx)])  # (K, N[, C])

    def gate() -> dict:
        if ctx.cfg.distillation.ensemble.fit_on == "valid":
            ctx.log.info("async: training the gate over the teachers' logits on half the validation split")
            return phases.fit_gate_on_valid(ens, teachers_of(ctx), ctx.valid, ctx.label, ctx.plan,
                                            ctx.cfg.train.batch_size, ctx.cfg.train.seed, log=ctx.log)
        ctx.log.info("async: training the gate over the cached teacher logits")
        return phases.fit_gate(ens, cached(), ctx.loader, ctx.valid, ctx.label, ctx.plan, log=ctx.log)

    if ens.module.gate is not None:  # a phase of its own: a run resumed in the student's keeps the gate it had
        ctx.phase("gate", gate)

    def student() -> dict:
        t0 = time.perf_counter()
        caches = cached()
        with torch.no_grad():
            mixed = torch.cat([ens.module.mix(caches[:, i:i + 65536]) for i in range(0, caches.shape[1], 65536)])
        soft_seconds = time.perf_counter() - t0
        ctx.log.info(f"async: ensemble soft labels cached in {soft_seconds:.2f}s; training the student")
        each = {t.name.removeprefix("teacher:"): caches[k] for k, t in enumerate(teachers_of(ctx))}
        summary = phases.fit_student(s, mixed, ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                     temperature=ctx.cfg.distillation.temperature, log=ctx.log, ckpt=ctx.ckpt,
                                     each_teacher=each)
        return summary | {"soft_label_seconds": soft_seconds}

    ctx.phase("student", student)
    train_baseline(ctx)


def train_sync(ctx: Context) -> None:
    if "ensemble" in ctx.members:
        return train_sync_many(ctx)
    t, s = ctx.members["teacher"], ctx.members["student"]

    def together() -> dict:
        hint = sync_hint(ctx, t, s)
        try:
            return phases.fit_together(t, s, ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                       temperature=ctx.cfg.distillation.temperature, log=ctx.log, ckpt=ctx.ckpt, hint=hint,
                                       term=ranking.term_of(ctx.cfg, ctx.loader))
        finally:
            if hint is not None:
                hint.close()  # the hooks go: the models served later run exactly their own forward

    ctx.phase("sync", together)
    train_baseline(ctx)


def _probe(ctx: Context, m: Member):
    """One training batch with `m`'s features (sizes the hint's projection)."""
    return next(iter(ctx.loader.narrowed(m.features).ordered())).select(m.features)


def sync_hint(ctx: Context, t: Member, s: Member):
    """distillation.hint in sync: h_t is read live from the teacher's forward in the same step."""
    h = ctx.cfg.distillation.hint
    if h is None:
        return None
    from distill import hints
    dim = hints.teacher_dim(t.module, h.teacher_layer, _probe(ctx, t))
    t_capture = hints.Capture(t.module, h.teacher_layer, "distillation.hint.teacher_layer")
    hint = hints.make(ctx.cfg, s.module, dim, _probe(ctx, s), lambda batch: t_capture.value)
    hint.teacher_capture = t_capture
    return hint


def async_hint(ctx: Context, t: Member, s: Member):
    """distillation.hint in async: h_t of every training row cached once from the frozen teacher."""
    h = ctx.cfg.distillation.hint
    if h is None:
        return None
    from distill import hints
    from distill.training.asynchronous import from_cache
    cache = hints.cache_hidden(t.module, h.teacher_layer, ctx.loader, t.features)  # (N, H_t)
    return hints.make(ctx.cfg, s.module, cache.shape[1], _probe(ctx, s), from_cache(cache))


def train_async(ctx: Context) -> None:
    if "ensemble" in ctx.members:
        return train_async_many(ctx)
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
        hint = async_hint(ctx, t, s)
        try:
            summary = phases.fit_student(s, cache, ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                         temperature=ctx.cfg.distillation.temperature, log=ctx.log, ckpt=ctx.ckpt,
                                         term=ranking.term_of(ctx.cfg, ctx.loader), hint=hint)
        finally:
            if hint is not None:
                hint.close()
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
    on = data.y.device  # the split may be on the GPU (train.data_on_device), the out-of-fold logits on the host
    in_fold = hard_loss(full.to(on), data.y, ctx.label.task, data.weight).item()
    out_fold = hard_loss(oof.logits.to(on), data.y, ctx.label.task, data.weight).item()
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
    cols = ctx.cfg.distillation.soft_labels
    if cols:  # several score columns: their logits combined as several teachers' are (distill.ensemble)
        from distill.ensemble import combine
        e = ctx.cfg.distillation.ensemble
        w = torch.tensor([float(e.weights[c]) if e.type == "weights" else 1.0 for c in cols])
        w = w / w.sum()
        each = {c: (lambda batch, k=k: batch.soft[:, k]) for k, c in enumerate(cols)}
        ctx.phase("student", lambda: phases.train_single_each(s, lambda batch: combine(batch.soft.movedim(1, 0), w), each,
                                                              ctx.loader, ctx.valid, ctx.label, ctx.plan, lam=ctx.lam,
                                                              temperature=ctx.cfg.distillation.temperature,
                                                              log=ctx.log, ckpt=ctx.ckpt))
        return train_baseline(ctx)
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
    if cfg.teachers is not None and "teacher" in names:  # several teachers: teacher:<name> each, in config order
        at = names.index("teacher")
        names[at:at + 1] = list(schema.teacher_sections(cfg))
    if cfg.train.baseline and "baseline" not in names:
        names.append("baseline")
    return names


def role_of(name: str) -> str:
    """The config section a model is built from: the baseline is a student."""
    return "teacher" if name.startswith("teacher") else "student"


def check(cfg: Config) -> list[str]:
    """The schema's rules, then the mode's; returns the warnings."""
    from distill import device  # train.device, precision, sparse_embeddings under NCCL
    if cfg.teachers is not None:  # the several-teacher paths make a pointwise L_d from in-memory cached logits
        if cfg.distillation.loss != "pointwise" or cfg.distillation.loss_weights:
            raise DistillError("distillation.loss: within-group losses work with one teacher; with `teachers:` use pointwise")
        if (cfg.distillation.cross_fit or 1) > 1:
            raise DistillError("distillation.cross_fit: works with one teacher; with `teachers:` leave it unset")
    return schema.check(cfg) + recipe(cfg).check(cfg) + device.check(cfg.train) + ranking.check(cfg)
