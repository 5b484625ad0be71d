"""Which features each model sees. Specs are data: nothing here owns a tensor or a table.

The student's feature list is *derived* from the schema and can only hold serving features, so a
student can never be configured to read a privileged one.
"""
from __future__ import annotations

import difflib

from distill.config import Config, FeatureConfig, ModelConfig
from distill.errors import DistillError


def serving(cfg: Config) -> list[FeatureConfig]:
    return [f for f in cfg.features if not f.privileged]


def privileged(cfg: Config) -> list[FeatureConfig]:
    return [f for f in cfg.features if f.privileged]


def teacher_sections(cfg: Config) -> dict[str, ModelConfig]:
    """The teachers by member name: {"teacher": cfg.teacher}, or {"teacher:<name>": ...} for each of
    `teachers:` (README, "Several teachers")."""
    if cfg.teachers is None:
        return {"teacher": cfg.teacher}
    return {f"teacher:{n}": mc for n, mc in cfg.teachers.items()}


def section_of(cfg: Config, name: str) -> tuple[str, ModelConfig]:
    """(the key to name in messages, the model section) of member `name`: teacher, teacher:<n>, student, baseline."""
    if name.startswith("teacher:"):
        return f"teachers.{name.removeprefix('teacher:')}", cfg.teachers[name.removeprefix("teacher:")]
    role = "teacher" if name == "teacher" else "student"
    return role, getattr(cfg, role)


def model_features(cfg: Config, role: str) -> list[FeatureConfig]:
    """The features `role` ("teacher", "teacher:<name>" or "student") reads, in schema order."""
    key, mc = section_of(cfg, role)
    is_teacher = role.startswith("teacher")
    role = key
    by_name = {f.name: f for f in cfg.features}
    sel = mc.features
    if sel is None:
        sel = "all" if is_teacher else "serving"
    if sel == "all":
        names = [f.name for f in cfg.features]
    elif sel == "serving":
        names = [f.name for f in serving(cfg)]
    elif sel == "privileged":
        names = [f.name for f in privileged(cfg)]
    else:
        for n in sel:
            if n not in by_name:
                close = difflib.get_close_matches(n, list(by_name), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DistillError(f"{role}.features: '{n}' is not a feature in the schema{hint}")
        names = [f.name for f in cfg.features if f.name in set(sel)]
    chosen = [by_name[n] for n in names]
    if role == "student":
        leaked = [f.name for f in chosen if f.privileged]
        if leaked:
            raise DistillError(
                f"student.features: '{leaked[0]}' is privileged: the student serves without it "
                "(remove it from student.features or set privileged: false)"
            )
    if not chosen:
        raise DistillError(f"{role}.features: selects no feature")
    if mc.user_features is not None:
        for n in mc.user_features:
            if n in names:
                continue
            if n in by_name and by_name[n].privileged and role == "student":
                raise DistillError(f"student.user_features: '{n}' is privileged: the student serves without it")
            close = difflib.get_close_matches(n, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DistillError(f"{role}.user_features: '{n}' is not among the {role}'s features{hint}")
    return chosen


def check(cfg: Config) -> list[str]:
    """Validate the cross-field rules every mode shares; return warnings (things that run but are
    probably not meant). Each mode's own rules are its recipe's check (recipes.py; `recipes.check`
    runs both)."""
    warnings: list[str] = []
    model_features(cfg, "student")
    for role in ("teacher", "student"):
        mc: ModelConfig = getattr(cfg, role)
        if mc.model == "two_tower":
            if cfg.task.type == "multiclass":
                raise DistillError(f"{role}.model: two_tower scores one user-item pair; it does not do multiclass")
            if not mc.user_features:
                raise DistillError(f"{role}.user_features: two_tower needs the user tower's features (the rest form the item tower)")
    names = {f.name for f in cfg.features}
    for n in cfg.distillation.separate_embeddings:
        if n not in names:
            raise DistillError(f"distillation.separate_embeddings: '{n}' is not a feature in the schema")
    return warnings


def teacher_warnings(cfg: Config) -> list[str]:
    """A teacher that has nothing to transfer, or ignores the privileged features (modes with a teacher)."""
    warnings: list[str] = []
    teacher, student = model_features(cfg, "teacher"), model_features(cfg, "student")
    extra = {f.name for f in teacher} - {f.name for f in student}
    same_model = cfg.teacher.model_dump(exclude={"features", "user_features"}) == cfg.student.model_dump(exclude={"features", "user_features"})
    if not extra and same_model:
        warnings.append(
            "the teacher sees no feature the student does not and has the same architecture: "
            "distillation has nothing to transfer (declare privileged features or make the teacher bigger)"
        )
    if not any(f.privileged for f in teacher) and privileged(cfg):
        warnings.append("the schema declares privileged features but the teacher does not read them")
    return warnings
