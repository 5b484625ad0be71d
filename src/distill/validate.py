"""`distill validate CONFIG`: check the config and the data against each other, train nothing.

Runs what `train` runs before its first step (schema checks, reading and encoding every split,
building teacher and student, sharing tables) and says what would be trained. A problem raises
DistillError with the file, column or key, exactly as `train` would, only without the wait.

    >>> v = validate(load_config("config.yaml"))          # doctest: +SKIP
    >>> [(m.role, len(m.features), m.parameters) for m in v.models]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distill import schema
from distill.config import Config
from distill.errors import DistillError


@dataclass
class ModelSummary:
    role: str
    model: str
    features: list[str]
    privileged: list[str]
    parameters: int
    towers: dict[str, list[str]] | None = None  # a two_tower model: its user and item features


@dataclass
class Validation:
    warnings: list[str]
    rows: dict[str, int]  # per split
    filled: dict[str, dict[str, int]]  # per split: feature -> values filled (missing or non-finite)
    models: list[ModelSummary]
    shared_tables: list[str] = field(default_factory=list)
    steps_per_epoch: int = 0
    label: dict[str, Any] = field(default_factory=dict)  # classes, or the positive rate per split


def validate(cfg: Config) -> Validation:
    import torch

    from distill.data.dataset import load_splits
    from distill.models.parts import share_tables
    from distill import recipes
    from distill.run import _params, _teacher_run, build, make_loader

    warnings = recipes.check(cfg)
    mode = cfg.distillation.mode
    teacher_run = _teacher_run(cfg) if cfg.distillation.teacher_checkpoint else None
    splits = load_splits(cfg, encoders=teacher_run.encoders if teacher_run else None)
    loader = make_loader(cfg, splits)  # streamed or in memory, as train would read it
    parts = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    present = {k: v for k, v in parts.items() if v is not None}  # a streamed train split is not held
    rows = {"train": loader.num_rows} | {k: len(v) for k, v in present.items() if k != "train"}
    filled = {k: dict(v.missing) for k, v in present.items() if v.missing and k != "train"}
    if splits.train_missing:
        filled = {"train": dict(splits.train_missing)} | filled
    if splits.valid is None:
        warnings.append("data.valid is not set: no early stopping, no validation curves, the last weights are kept")
    label_info = _label_info(splits.encoders.label, present)
    if cfg.task.type == "binary":
        for split, rate in label_info.items():
            if rate in (0.0, 1.0):
                warnings.append(f"the {split} split holds one class only (positive rate {rate:.0%}): AUC is undefined there")

    priv = {f.name for f in schema.privileged(cfg)}
    models: list[ModelSummary] = []
    built: dict[str, Any] = {}
    for role in recipes.members(cfg):  # what train would build, as its recipe declares
        if role == "teacher" and teacher_run is not None:
            model, names = teacher_run.models["teacher"], teacher_run.features["teacher"]
        else:
            model, names = build(cfg, splits.encoders, role, cfg.train.seed)
        built[role] = model
        from distill.models.two_tower import tower_split
        # each member's own section: teacher:<name> is teachers.<name>, the baseline is the student
        models.append(ModelSummary(role, schema.section_of(cfg, role)[1].model, names, [n for n in names if n in priv], _params(model),
                                   tower_split(model, names)))
    shared: list[str] = []
    if mode == "sync" and cfg.distillation.share_embeddings:
        student_names = next(m.features for m in models if m.role == "student")
        teacher_names = next(m.features for m in models if m.role == "teacher")
        common = [n for n in student_names if n in teacher_names and n not in cfg.distillation.separate_embeddings]
        try:
            shared = share_tables(built["teacher"], built["student"], common)
        except ValueError as e:
            raise DistillError(f"distillation.share_embeddings: {e}") from None
    sample = next(iter(loader.ordered(8)))
    with torch.no_grad():  # one forward pass each: a model that cannot read its inputs fails here, not at step 0
        for m in models:
            try:
                built[m.role](sample.select(m.features))
            except Exception as e:  # a user's `module:` model can raise anything
                raise DistillError(f"{m.role}: the model fails on a batch of the training data: {str(e).splitlines()[0]}") from None
    d, total = cfg.distillation, cfg.train.epochs * len(loader)
    if mode != "none" and d.schedule.type != "constant" and d.schedule.steps >= total:
        warnings.append(f"distillation.schedule.steps is {d.schedule.steps} but training has {total} steps: "
                        f"λ never reaches its target {d.weight}")
    from distill.init import separator_warnings
    warnings += separator_warnings(cfg)
    return Validation(warnings, rows, filled, models, shared, len(loader), label_info)


def _label_info(label: Any, parts: dict[str, Any]) -> dict[str, Any]:
    if label.task == "binary":
        return {k: float(v.y.float().mean()) for k, v in parts.items()}
    if label.task == "multiclass":
        return {"classes": len(label.classes)}
    return {"mean": label.mean, "std": label.std}


def render(v: Validation, cfg: Config, console: Any) -> None:
    """Print what would be trained (a rich Console)."""
    from rich.markup import escape  # names and messages print literally: a [bracket] is not markup
    from rich.table import Table

    d, t = cfg.distillation, cfg.train
    console.print(f"task [bold]{cfg.task.type}[/] on '{escape(cfg.task.label)}'" + (f", GAUC over '{escape(cfg.task.group)}'" if cfg.task.group else ""),
                  highlight=False)
    console.print("rows: " + ", ".join(f"{k} {n:,}" for k, n in v.rows.items()), highlight=False)
    if cfg.task.type == "binary":
        console.print("positive rate: " + ", ".join(f"{k} {r:.2%}" for k, r in v.label.items()), highlight=False)
    elif cfg.task.type == "multiclass":
        console.print(f"classes: {v.label['classes']}", highlight=False)
    for split, cols in v.filled.items():
        console.print(f"filled in {split} (missing or non-finite, flagged): "
                      + ", ".join(f"{c} {n:,}" for c, n in cols.items()), highlight=False, markup=False)
    # Features as rows, models as columns: who reads what is visible at a glance.
    feats = Table(title="features", title_justify="left")
    readers = [m for m in v.models if m.role != "baseline"] or v.models  # the baseline reads what the student reads
    feats.add_column("feature", min_width=min(40, max(len(f.name) for f in cfg.features)), no_wrap=True)
    feats.add_column("type", min_width=17, no_wrap=True)
    feats.add_column("privileged")
    for m in readers:
        feats.add_column(m.role, justify="center")
    for f in cfg.features:
        kind = f.type if f.type != "sequence" else (f"sequence, side of {f.side_of}" if f.side_of else f"sequence, {f.encoder or 'mean'}") \
            + (f", ids of {f.shares}" if f.shares else "")
        feats.add_row(escape(f.name), escape(kind), "[bold]yes[/]" if f.privileged else "",
                      *["✓" if f.name in m.features else "" for m in readers])
    console.print(feats)
    models = Table(title="what would be trained", title_justify="left")
    for col in ("model", "architecture", "features", "privileged", "parameters"):
        models.add_column(col, justify="right" if col in ("features", "privileged", "parameters") else "left")
    for m in v.models:
        models.add_row(m.role, escape(m.model), str(len(m.features)), str(len(m.privileged)), f"{m.parameters:,}")
    console.print(models)
    for m in v.models:
        if m.towers:
            console.print(f"{m.role} towers: user [{', '.join(m.towers['user'])}], item [{', '.join(m.towers['item'])}]",
                          highlight=False, markup=False, soft_wrap=True)
    if d.mode != "none":
        sched = d.schedule.type + (f" over {d.schedule.steps} steps" if d.schedule.steps else "")
        console.print(f"distillation: mode [bold]{d.mode}[/], λ = {d.weight} ({sched}), temperature {d.temperature}", highlight=False)
    if v.shared_tables:
        console.print("shared embedding tables: " + ", ".join(v.shared_tables), highlight=False, markup=False)
    from distill.training.common import stopping_metric
    metric, patience = stopping_metric(cfg)
    console.print(f"training: {t.epochs} epoch(s) × {v.steps_per_epoch:,} steps of {t.batch_size:,} rows = "
                  f"{t.epochs * v.steps_per_epoch:,} steps per model; keeping the best validation {metric}"
                  + (f", stopping after {patience} evaluation(s) without progress" if patience else ""), highlight=False)
    for w in v.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
