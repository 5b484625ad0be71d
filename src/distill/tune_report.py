"""tune.md and tune.html: the trial table, four pictures and the final paired comparison.

    history.png      each trial's validation metric, the best so far, the baseline as a dashed line
    lambda.png       the metric against λ (trials in mode order), baseline dashed
    temperature.png  the metric against T
    importance.png   Optuna's parameter importances (needs two finished trials with varying parameters)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from distill import plots, results
from distill.report import Doc


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _lines(ax, higher: bool, metric: str, baseline: float | None) -> None:
    if baseline is not None:
        ax.axhline(baseline, color=plots.COLORS["baseline"], linestyle="--", linewidth=1.2, label="baseline (λ = 0)")
    ax.set_ylabel(f"validation {metric} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)


def _save(fig, path: Path) -> None:
    """Whole or not at all: several tune processes on one output may draw at the same time."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    plots._save(fig, tmp)
    os.replace(tmp, path)


def write_report(study, summary: dict[str, Any], output: Path) -> list[str]:
    """Draw the pictures and write tune.md and tune.html into `output`; returns the PNG names drawn."""
    import optuna
    s = optuna.trial.TrialState
    metric, higher = summary["metric"], summary["direction"] == "maximize"
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == s.COMPLETE]
    baseline = summary.get("baseline_valid")
    drawn: list[str] = []

    x = np.array([t.number for t in done], float)
    y = np.array([t.value for t in done], float)
    fig, axes = plots._figure(1, width=6.0, height=3.6)
    ax = axes[0][0]
    ax.scatter(x, y, s=22, color=plots.COLORS["student"], label="finished trial", zorder=3)
    run = np.maximum.accumulate(y) if higher else np.minimum.accumulate(y)
    ax.step(x, run, where="post", color="#222222", linewidth=1.4, label="best so far")
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state == s.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter(*zip(*pruned), s=22, marker="x", color="#999999", label="pruned (its last evaluation)", zorder=2)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial", fontsize=9)
    ax.set_title("optimisation history", fontsize=10)
    _lines(ax, higher, metric, baseline)
    _save(fig, output / "history.png")
    drawn.append("history.png")

    for param, name, title in (("weight", "lambda.png", "λ (weight of the distillation term)"),
                               ("temperature", "temperature.png", "temperature T")):
        pts = [(t.params[param], t.value, t.params.get("schedule", "constant")) for t in done if param in t.params]
        if not pts:
            continue
        fig, axes = plots._figure(1, width=5.0, height=3.5)
        ax = axes[0][0]
        for sched, color in zip(("constant", "delayed", "linear", "cosine"), ("#1b70c0", "#7b3294", "#1a9850", "#d95f02")):
            p = [(a, b) for a, b, c in pts if c == sched]
            if p:
                ax.scatter(*zip(*p), s=24, color=color, label=f"schedule {sched}", zorder=3)
        if param == "temperature":
            ax.set_xscale("log")
        ax.set_xlabel(title, fontsize=9)
        ax.set_title(f"validation {metric} against {title.split(' (')[0]}", fontsize=10)
        _lines(ax, higher, metric, baseline)
        _save(fig, output / name)
        drawn.append(name)

    importances: dict[str, float] = {}
    import warnings
    try:
        with warnings.catch_warnings():  # "some regimes have fewer than 2 trials": true of a short study, said below
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study) if len(done) >= 2 else {}
    except (ValueError, RuntimeError):  # too few trials or no parameter varied among them
        importances = {}
    if importances:
        fig, axes = plots._figure(1, width=5.0, height=0.5 + 0.45 * len(importances))
        ax = axes[0][0]
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color=plots.COLORS["student"])
        ax.set_xlabel("importance (Optuna's default evaluator; sums to 1)", fontsize=9)
        ax.set_title("parameter importances", fontsize=10)
        _save(fig, output / "importance.png")
        drawn.append("importance.png")

    doc = Doc()
    doc.h1("distill tune")
    best = summary["best"]
    verdict = (summary.get("compare") or {}).get("verdict")
    if best["baseline"]:
        doc.p("**No distillation setting beat the baseline on validation; the student to ship is the baseline.**")
    else:
        gain = best["value"] - baseline if baseline is not None else math.nan
        doc.p(f"**Best: trial {best['number']}**, validation {metric} {best['value']:.5f} "
              f"(baseline {_fmt(baseline)}, {gain:+.5f}) with `{_params(best['params'])}`. "
              "`distill train best.yaml` retrains it.")
    if verdict:
        doc.p(f"On test, over {summary['compare']['seeds']} seeds, paired against the baseline: **{verdict['headline']}**")
    doc.p(f"Study `{summary['study']}`: {len(done)} finished, "
          f"{sum(t.state == s.PRUNED for t in trials)} pruned, {sum(t.state == s.FAIL for t in trials)} failed "
          f"(a failed trial is one whose process was killed; it is run again). Selection is on validation only.")
    if summary.get("compare"):
        doc.h2("The choice against the baseline, on test")
        header, rows = results.summary_rows(summary["compare"])
        doc.table(header, rows)
    if summary.get("explain") is not None:
        explain_section(doc, summary["explain"])
    doc.h2("Pictures")
    for name, alt in (("history.png", "each trial's validation metric and the best so far"),
                      ("lambda.png", "validation metric against λ"), ("temperature.png", "validation metric against T"),
                      ("importance.png", "parameter importances")):
        if name in drawn:
            doc.img(name, alt)
    if "importance.png" not in drawn:
        doc.p("Parameter importances need at least two finished trials whose parameters vary.")
    doc.h2("Trials")
    keys = sorted({k for t in trials for k in t.params}, key=lambda k: ["mode", "weight", "temperature", "schedule",
                                                                         "schedule_steps", "lr", "epochs"].index(k)
                  if k in ("mode", "weight", "temperature", "schedule", "schedule_steps", "lr", "epochs") else 99)
    rows = [[str(t.number), t.state.name.lower() + (" (baseline)" if t.params.get("weight") == 0.0 else ""),
             _fmt(t.value) if t.value is not None else ""] + [_fmt(t.params.get(k)) for k in keys] for t in trials]
    doc.table(["trial", "state", f"valid {metric}"] + keys, rows)
    from distill.outputs import write_atomic as _atomic
    _atomic(output / "tune.md", lambda p: p.write_text(doc.markdown()))
    _atomic(output / "tune.html", lambda p: p.write_text(doc.html(output, "distill tune")))
    return drawn


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in p.items())


def explain_section(doc: Doc, rows: list[dict[str, Any]]) -> None:
    """--explain: permutation importance of each privileged feature for the teacher (tune.explain)."""
    doc.h2("What each privileged feature adds to the teacher")
    if not rows:
        doc.p("The teacher reads no privileged feature.")
        return
    r0 = rows[0]
    doc.p(f"Permutation importance on the validation split: the search's teacher (validation {r0['metric']} "
          f"{r0['intact']:.4f}) scores it with one privileged feature's column shuffled across rows, {r0['repeats']} "
          "shuffles each; drop = intact − shuffled (positive: the teacher uses the feature), mean and 95% interval "
          "over the shuffles. No retraining: features that carry the same signal share the credit.")
    doc.table(["feature", f"drop in validation {r0['metric']}", "95% interval"],
              [[r["feature"], f"{r['drop']:+.4f}", "" if r["low"] is None else f"[{r['low']:+.4f}, {r['high']:+.4f}]"]
               for r in rows])
