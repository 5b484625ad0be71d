"""Why distillation did or did not pay: named findings read off a finished run (or a compare directory).

Each check returns a `Finding` only when it applies; silence means the check looked and found nothing.

    >>> for f in diagnose("runs/demo/compare"):                # doctest: +SKIP
    ...     print(f.code, f.message, f.evidence)
    teacher_peaked_early  The teacher peaked early ... {'best_epoch': 2, 'evaluations': 6, ...}

The checks (thresholds are the module constants below; `noise` is explained under `noise`):
- `teacher_peaked_early`: the teacher's best validation evaluation is in the first half of its
  evaluations (at least 3 of them) and its last one is worse than the best by more than PEAK_DROP
  (relative for log-loss and other lower-is-better metrics). Early stopping keeps the best weights,
  but in `sync` the student learned from the overfitting teacher after the peak.
- `teacher_gain_between_groups`: the teacher beats the baseline on AUC by more than the noise, but
  not on GAUC (its GAUC gain is at most the noise). What it knows separates groups (which users
  click), not items within a group: within a group it has nothing to teach, and a student that
  cannot tell the groups apart from its serving features receives the rest as noise.
- `teacher_overconfident`: on a sample of at most SAMPLE_ROWS of its own training rows, the teacher's
  log-loss is lower than on validation by more than OVERCONFIDENT (relative). Its soft labels on
  the rows the student learns from are memorised answers, not what it would say on new rows. The
  baseline's gap (same rows, no privileged features) is given beside it: a time-ordered split makes
  validation harder for every model; a teacher gap far above the baseline's is memorisation. It
  scores the teacher that was kept (its best evaluation): the one an async student learns from; in
  sync the student also saw the later teacher, which `teacher_peaked_early` speaks for.
- `student_caught_up`: at some evaluation the student led the baseline on validation by more than
  the noise, and at the end (the weights each kept) its lead is at most the noise: distillation
  made the student learn faster but did not change where it ends up.

`privileged_importance` (the report's last diagnostics table): for each privileged feature, the
teacher's validation metric with that column shuffled across rows, post hoc, no retraining.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError
from distill.metrics import HIGHER_IS_BETTER

PEAK_DROP = 0.005  # the teacher's last evaluation is worse than its best by more than this (0.5 % if lower is better)
MARGIN = 0.003  # the noise of a difference between two models of one run (no seeds to measure it): 0.003 AUC
OVERCONFIDENT = 0.2  # training-row log-loss at least 20 % below validation log-loss
SAMPLE_ROWS = 20_000  # rows of a split scored post hoc (training rows for over-confidence, valid for importance)
# two-sided 97.5 % quantiles of Student's t by degrees of freedom (seeds − 1); 2.0 beyond the table
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass
class Finding:
    """One diagnosis: a stable `code`, a sentence for the user, and the numbers behind it."""

    code: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def noise(diffs: list[float]) -> float:
    """How large a paired difference must be to count: the half-width of its 95 % t-interval over
    seeds, never below MARGIN (one seed, or seeds that happen to agree, have no spread to measure)."""
    if len(diffs) < 2:
        return MARGIN
    sd = float(np.std(diffs, ddof=1))
    return max(MARGIN, T975.get(len(diffs) - 1, 2.0) * sd / math.sqrt(len(diffs)))


def _sign(metric: str) -> float:
    return 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0


# ----------------------------------------------------------------------------- the checks (pure functions)


def teacher_peaked_early(evals: list[dict[str, Any]], metric: str) -> Finding | None:
    """From one run's evals.jsonl records."""
    values = [(r.get("epoch", 0), r[metric]) for r in evals if r.get("model") == "teacher" and metric in r]
    if len(values) < 3:
        return None
    s = _sign(metric)
    best = max(range(len(values)), key=lambda k: (s * values[k][1], -k))  # the first of equal bests
    last = values[-1][1]
    drop = s * (values[best][1] - last)
    limit = PEAK_DROP if s > 0 else PEAK_DROP * abs(values[best][1])
    if best + 1 > len(values) / 2 or drop <= limit:
        return None
    epoch = values[best][0] + 1
    return Finding("teacher_peaked_early",
                   f"The teacher peaked early and then overfit: its best validation {metric} "
                   f"({values[best][1]:.4f}) was at evaluation {best + 1} of {len(values)} (epoch {epoch}); "
                   f"at the last it was {last:.4f}. Fewer teacher epochs, more dropout or weight decay, or an "
                   f"async teacher stopped at its best, give the student a better teacher to follow.",
                   {"metric": metric, "best": values[best][1], "best_evaluation": best + 1, "best_epoch": epoch,
                    "evaluations": len(values), "last": last, "drop": drop})


def teacher_gain_between_groups(per_seed: list[dict[str, Any]], split: str) -> Finding | None:
    """From the metrics.json of one run (a list of one) or of every seed of a compare."""
    try:
        auc = [m["teacher"][split]["auc"] - m["baseline"][split]["auc"] for m in per_seed]
        gauc = [m["teacher"][split]["gauc"] - m["baseline"][split]["gauc"] for m in per_seed]
    except (KeyError, TypeError):
        return None  # no teacher, no baseline, no groups, or not binary
    if not all(math.isfinite(x) for x in auc + gauc):
        return None
    a, g, na, ng = float(np.mean(auc)), float(np.mean(gauc)), noise(auc), noise(gauc)
    if a <= na or g > ng:
        return None
    return Finding("teacher_gain_between_groups",
                   f"The teacher beats the baseline on AUC ({a:+.4f} on {split}) but not on GAUC ({g:+.4f}, "
                   f"noise ±{ng:.4f}): what the privileged features tell it is which groups (users) click "
                   f"more, not which items a group prefers. Within a group it has nothing to teach, and a "
                   f"student that cannot tell those groups apart from its serving features takes the rest as noise.",
                   {"split": split, "seeds": len(per_seed), "auc_gain": a, "auc_noise": na, "gauc_gain": g, "gauc_noise": ng})


def teacher_overconfident(train_logloss: dict[str, float], valid_logloss: dict[str, float]) -> Finding | None:
    """`train_logloss` / `valid_logloss`: role → log-loss on the training-row sample / on validation."""
    if "teacher" not in train_logloss or "teacher" not in valid_logloss:
        return None
    t, v = train_logloss["teacher"], valid_logloss["teacher"]
    gap = (v - t) / v if v > 0 else 0.0
    if gap <= OVERCONFIDENT:
        return None
    evidence = {"train_logloss": t, "valid_logloss": v, "relative_gap": gap}
    base = ""
    if "baseline" in train_logloss and "baseline" in valid_logloss and valid_logloss["baseline"] > 0:
        bg = (valid_logloss["baseline"] - train_logloss["baseline"]) / valid_logloss["baseline"]
        evidence["baseline_relative_gap"] = bg
        base = f" (the baseline's gap: {100 * bg:.0f} %)"
    return Finding("teacher_overconfident",
                   f"The teacher is over-confident on its own training rows: log-loss {t:.4f} there against "
                   f"{v:.4f} on validation, {100 * gap:.0f} % lower{base}. The soft labels the student learns "
                   f"from are partly memorised answers; a smaller or more regularised teacher, or soft labels "
                   f"from a teacher that did not see the row, would teach what generalises.", evidence)


def student_caught_up(leads: list[dict[int, float]], final: list[float], metric: str) -> Finding | None:
    """`leads`: per seed, step → student − baseline on validation at that evaluation (better-is-positive);
    `final`: per seed, the same lead of the weights each model kept."""
    if not leads or not final:
        return None
    steps = sorted(set.intersection(*(set(lead) for lead in leads)))
    best_step, best_lead, best_noise = None, -math.inf, MARGIN
    for step in steps:
        d = [lead[step] for lead in leads]
        m = float(np.mean(d))
        if m - noise(d) > best_lead - best_noise:
            best_step, best_lead, best_noise = step, m, noise(d)
    end, end_noise = float(np.mean(final)), noise(final)
    if best_step is None or best_lead <= best_noise or end > end_noise or best_step == steps[-1]:
        return None
    return Finding("student_caught_up",
                   f"The student led the baseline early ({best_lead:+.4f} validation {metric} at step {best_step}) "
                   f"but the baseline caught up ({end:+.4f} at the end, noise ±{end_noise:.4f}): distillation sped "
                   f"learning up but did not change where it ends. Fewer epochs or a smaller budget keep the "
                   f"head start; more epochs give nothing.",
                   {"metric": metric, "seeds": len(leads), "best_step": best_step, "best_lead": best_lead,
                    "lead_noise": best_noise, "final_lead": end, "final_noise": end_noise})


# ----------------------------------------------------------------------------- reading runs


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise DistillError(f"{path}: a line is not JSON (the file is corrupt)") from None


def run_dirs(path: Path) -> list[Path]:
    """The run directories of `path`: itself, or the seed_* runs of a compare directory."""
    path = Path(path)
    if (path / "compare.json").is_file():
        return sorted((p for p in path.glob("seed_*") if (p / "metrics.json").is_file()), key=lambda p: p.name)
    if (path / "metrics.json").is_file():
        return [path]
    raise DistillError(f"{path}: neither a run directory (no metrics.json) nor a compare directory (no compare.json)")


def _lead(run_dir: Path, metric: str) -> tuple[dict[int, float], float | None]:
    """Student − baseline (better-is-positive) on validation at every shared evaluation step, and at the end."""
    evals = _jsonl(run_dir / "evals.jsonl")
    by_step = {role: {r["step"]: r[metric] for r in evals if r.get("model") == role and metric in r} for role in ("student", "baseline")}
    s = _sign(metric)
    lead = {k: s * (v - by_step["baseline"][k]) for k, v in by_step["student"].items() if k in by_step["baseline"]}
    m = _metrics(run_dir)
    try:
        return lead, s * (m["student"]["valid"][metric] - m["baseline"]["valid"][metric])
    except KeyError:
        return lead, None


def _sample(table: Any, rows: int, seed: int = 0) -> Any:
    if table.num_rows <= rows:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False)))


def _evaluate_here(model: Any, data: Any, features: list[str], label: Any) -> dict[str, float]:
    """Metrics of `model` on `data` in this process alone: the diagnostics run on rank 0 after
    training, when the other ranks of a torchrun job may be gone (no collective may be entered)."""
    from distill import metrics
    from distill.training.common import label_values, predict_logits, to_output
    pred = to_output(predict_logits(model, data, features), label)
    return metrics.compute(label.task, label_values(data, label), pred, data.group)


def _overconfidence(run: Any, train_table: Any) -> Finding | None:
    evaluate = _evaluate_here
    cfg = run.config
    enc_where = f"{cfg.data.train} (diagnostics sample)"
    train_ll, valid_ll = {}, {}
    for role in ("teacher", "baseline"):
        if role not in run.models or "logloss" not in run.metrics.get(role, {}).get("valid", {}):
            continue
        enc = run.encoders.encode(cfg, train_table, enc_where, features=run.features[role])
        train_ll[role] = evaluate(run.models[role], enc, run.features[role], run.encoders.label)["logloss"]
        valid_ll[role] = run.metrics[role]["valid"]["logloss"]
    return teacher_overconfident(train_ll, valid_ll)


def _train_sample(cfg: Any) -> Any:
    """Up to SAMPLE_ROWS training rows, or None when they cannot be scored here: a streamed split is
    not read whole, a teacher from `teacher_checkpoint` learned on another run's rows, and the file
    may be gone since the run."""
    from distill.data.io import read_table
    if cfg.data.streaming or cfg.distillation.teacher_checkpoint or cfg.task.type == "regression":
        return None
    try:
        return _sample(read_table(cfg.data.train, cfg.data.format), SAMPLE_ROWS)
    except DistillError:  # the training file moved since: this check is skipped, the others still speak
        return None


def _config(run_dir: Path) -> Any:
    import yaml

    from distill.config import config_from_dict
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise DistillError(f"{run_dir}: not a distill run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()), source=str(path))


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DistillError(f"{run_dir / 'metrics.json'}: cannot read it ({e})") from None


def diagnose(path: str | Path) -> list[Finding]:
    """All findings that apply to a run directory, or to a compare directory's seeds together.

    Reads config.yaml, metrics.json and evals.jsonl; only the over-confidence check loads the
    models (and only when teacher.safetensors is there). Over several seeds, `teacher_peaked_early`
    and `teacher_overconfident` are reported when they hold in at least half of the seeds (the
    evidence of the first such seed, plus how many); the between-groups and caught-up checks use
    the seeds' spread as their noise.
    """
    from distill.training.common import stopping_metric

    dirs = run_dirs(Path(path))
    if not dirs:
        return []
    cfg = _config(dirs[0])
    metric, _ = stopping_metric(cfg)
    findings: list[Finding] = []

    def majority(found: list[Finding | None]) -> None:
        hits = [f for f in found if f is not None]
        if hits and 2 * len(hits) >= len(found):
            f = hits[0]
            if len(found) > 1:
                f.evidence["seeds_where_it_holds"] = f"{len(hits)} of {len(found)}"
                f.message += f" (In {len(hits)} of {len(found)} seeds; the numbers are the first's.)"
            findings.append(f)

    majority([teacher_peaked_early(_jsonl(d / "evals.jsonl"), metric) for d in dirs])
    per_seed = [_metrics(d) for d in dirs]
    split = "test" if "test" in per_seed[0].get("teacher", {}) else "valid"
    f = teacher_gain_between_groups(per_seed, split)
    if f is not None:
        findings.append(f)
    with_teacher = [d for d in dirs if (d / "teacher.safetensors").is_file()]
    if with_teacher:
        sample = _train_sample(cfg)
        if sample is not None:
            from distill.run import load_run
            majority([_overconfidence(load_run(d), sample) for d in with_teacher])
    leads = [_lead(d, metric) for d in dirs]
    if all(end is not None and lead for lead, end in leads):
        f = student_caught_up([lead for lead, _ in leads], [end for _, end in leads], metric)
        if f is not None:
            findings.append(f)
    return findings


def privileged_importance(path: str | Path, rows: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The teacher's validation metric with each privileged column shuffled (first seed of a compare):
    [{"feature", "metric", "intact", "shuffled", "drop"}], largest drop first; [] without a teacher,
    privileged features or a validation split."""
    import pyarrow as pa

    from distill.data.io import read_table
    from distill.run import load_run
    from distill.training.common import stopping_metric
    evaluate = _evaluate_here

    dirs = run_dirs(Path(path))
    if not dirs or not (dirs[0] / "teacher.safetensors").is_file():
        return []
    run = load_run(dirs[0])
    cfg = run.config
    priv = [n for n in run.features.get("teacher", []) if n in {f["name"] for f in run.schema.get("privileged", [])}]
    if not priv or not cfg.data.valid:
        return []
    metric, _ = stopping_metric(cfg)
    table = _sample(read_table(cfg.data.valid, cfg.data.format), rows)
    names = run.features["teacher"]

    def score(t: Any) -> float:
        return evaluate(run.models["teacher"], run.encoders.encode(cfg, t, cfg.data.valid, features=names),
                        names, run.encoders.label)[metric]

    intact, out = score(table), []
    perm = pa.array(np.random.default_rng(0).permutation(table.num_rows))
    for n in priv:
        k = table.column_names.index(n)
        shuffled = score(table.set_column(k, n, table.column(n).take(perm)))
        out.append({"feature": n, "metric": metric, "intact": intact, "shuffled": shuffled,
                    "drop": _sign(metric) * (intact - shuffled)})
    return sorted(out, key=lambda r: -r["drop"])


# ----------------------------------------------------------------------------- where the user meets them


def lines(findings: list[Finding]) -> list[str]:
    return [f"{f.code}: {f.message}" for f in findings]


def report_section(doc: Any, path: str | Path) -> None:
    """The report's "Why: diagnostics" section (`doc` is report.Doc): the findings, then how much each
    privileged feature adds to the teacher."""
    doc.h2("Why: diagnostics")
    try:
        findings = diagnose(path)
        importance = privileged_importance(path)
    except DistillError as e:
        doc.p(f"(diagnostics skipped: {e}.)")
        return
    for f in findings:
        doc.p(f"**{f.code}**: {f.message}")
    if not findings:
        doc.p("None of the checks applies: the teacher did not peak early, its gain over the baseline is not only "
              "between groups, it is not over-confident on its training rows, and the student did not lead the "
              "baseline early only to be caught up.")
    if importance:
        doc.p(f"How much each privileged feature adds to the teacher: its validation {importance[0]['metric']} with "
              f"that column shuffled across rows (at most {SAMPLE_ROWS:,} rows, no retraining).")
        doc.table(["privileged feature", "intact", "shuffled", "drop"],
                  [[f"`{r['feature']}`", f"{r['intact']:.4f}", f"{r['shuffled']:.4f}", f"{r['drop']:+.4f}"] for r in importance])
