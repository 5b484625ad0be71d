"""The report's figures. Each function draws one PNG and returns the series it drew, so a test (or
a reader) can check the picture against the logs it came from.

matplotlib is imported inside the functions and used through its object API (`Figure`, rendered
by Agg): no pyplot, no global backend switch, and `import distill` stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError

# One colour per model and per loss term, the same in every figure.
COLORS = {"teacher": "#d95f02", "student": "#1b70c0", "baseline": "#7a7a7a",
          "L_t": "#d95f02", "L_s": "#1b70c0", "L_d": "#7b3294", "loss": "#222222"}
TERMS = ("L_t", "L_s", "L_d", "loss")
TERM_NAMES = {"L_t": "L_t (teacher, hard)", "L_s": "L_s (student, hard)", "L_d": "L_d (distillation)",
              "loss": "loss (what was minimised)"}


@dataclass
class Series:
    """One drawn line: `x` and `y` as plotted (`y` smoothed where the caption says so)."""

    panel: str
    label: str
    x: np.ndarray
    y: np.ndarray


def _figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.3, **kw: Any):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DistillError("the report needs matplotlib: pip install 'distill[report]' (or pass --no-report)") from None
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png")


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard's smoothing): the first points are
    not dragged towards zero."""
    if window <= 1 or len(y) < 3:
        return np.asarray(y, float)
    a = 1.0 - 2.0 / (window + 1)
    out = np.empty(len(y))
    s = 0.0
    for i, v in enumerate(y):
        s = a * s + (1 - a) * v
        out[i] = s / (1 - a ** (i + 1))
    return out


def _by_phase(steps: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in steps:
        out.setdefault(r.get("phase", "train"), []).append(r)
    return out


def plot_losses(steps: list[dict], path: Path) -> list[Series]:
    """One panel per training phase with its loss terms over steps (raw faint, smoothed solid)."""
    phases = _by_phase(steps)
    if not phases:
        return []
    fig, axes = _figure(len(phases), sharey=True)
    drawn: list[Series] = []
    for ax, (phase, records) in zip(axes[0], phases.items()):
        x = np.array([r["step"] for r in records], float)
        window = max(1, len(x) // 40)
        for term in TERMS:
            if term not in records[0] or (term == "loss" and sum(t in records[0] for t in TERMS) == 2):
                continue  # a lone L_s equals the loss: draw it once
            y = np.array([r[term] for r in records], float)
            ys = smooth(y, window)
            style = {"linestyle": "--", "linewidth": 1.0} if term == "loss" else {"linewidth": 1.6}
            ax.plot(x, y, color=COLORS[term], alpha=0.18, linewidth=0.7)
            ax.plot(x, ys, color=COLORS[term], label=TERM_NAMES[term], **style)
            drawn.append(Series(phase, term, x, ys))
        ax.set_title(f"phase: {phase}", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.legend(fontsize=7.5, frameon=False)
    axes[0][0].set_ylabel("loss (smoothed)", fontsize=9)
    _save(fig, path)
    return drawn


def plot_lambda(steps: list[dict], path: Path) -> list[Series]:
    """λ (the weight of the distillation term) and the learning rate over steps, per phase."""
    phases = _by_phase(steps)
    with_lam = {p: r for p, r in phases.items() if "L_d" in r[0]}
    with_lr = {p: r for p, r in phases.items() if "lr" in r[0]}
    panels = [("λ (weight of L_d)", "lambda", with_lam), ("learning rate", "lr", with_lr)]
    panels = [p for p in panels if p[2]]
    if not panels:
        return []
    fig, axes = _figure(len(panels), width=4.4, height=2.8)
    drawn: list[Series] = []
    for ax, (title, key, phases_) in zip(axes[0], panels):
        for i, (phase, records) in enumerate(phases_.items()):
            x = np.array([r["step"] for r in records], float)
            y = np.array([r[key] for r in records], float)
            color = COLORS.get(phase, COLORS["student"] if phase == "sync" else None)
            # phases often share one constant learning rate: dashes keep every line visible
            ax.plot(x, y, label=phase, color=color, linewidth=1.6, linestyle=("-", "--", ":", "-.")[i % 4])
            drawn.append(Series(key, phase, x, y))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        if key == "lambda":
            ax.set_ylim(-0.03, 1.03)
        else:  # from zero, so a constant rate reads as a flat line, not as noise around an offset
            top = max(float(np.max([r[key] for r in recs])) for recs in phases_.values())
            ax.set_ylim(0, 1.25 * top if top > 0 else 1)
        ax.legend(fontsize=7.5, frameon=False)
    _save(fig, path)
    return drawn


def plot_validation(evals: list[dict], metric: str, higher_is_better: bool, path: Path) -> list[Series]:
    """The stopping metric on the validation split, one line per model; a ring marks each model's
    best evaluation (the weights the run kept). A second panel zooms on student − baseline at the
    steps both were evaluated: next to the teacher the two lines often look the same."""
    models = [m for m in ("teacher", "student", "baseline") if any(r.get("model") == m and metric in r for r in evals)]
    if not models:
        return []
    curves = {}
    for m in models:
        rs = [r for r in evals if r.get("model") == m and metric in r]
        curves[m] = (np.array([r["step"] for r in rs], float), np.array([r[metric] for r in rs], float))
    gain = None
    if "student" in curves and "baseline" in curves:
        (xs, ys), (xb, yb) = curves["student"], curves["baseline"]
        common = np.intersect1d(xs, xb)
        if len(common):
            gain = (common, ys[np.searchsorted(xs, common)] - yb[np.searchsorted(xb, common)])
    fig, axes = _figure(2 if gain is not None else 1, width=5.0, height=3.5)
    ax = axes[0][0]
    drawn: list[Series] = []
    for m, (x, y) in curves.items():
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.6, color=COLORS[m], label=m)
        best = int(np.nanargmax(y) if higher_is_better else np.nanargmin(y))
        ax.plot(x[best], y[best], marker="o", markersize=9, markerfacecolor="none", color=COLORS[m])
        drawn.append(Series(metric, m, x, y))
    ax.set_xlabel("step (of each model's own training)", fontsize=9)
    ax.set_ylabel(f"validation {metric} ({'higher' if higher_is_better else 'lower'} is better)", fontsize=9)
    ax.set_title(f"validation {metric}; rings: the kept (best) weights", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if gain is not None:
        g = axes[0][1]
        better = gain[1] * (1 if higher_is_better else -1) >= 0
        g.axhline(0, color="#999999", linewidth=1)
        g.plot(gain[0], gain[1], color=COLORS["student"], linewidth=1.6)
        g.scatter(gain[0], gain[1], c=np.where(better, "#1a9850", "#d73027"), s=22, zorder=3)
        g.set_title(f"student − baseline ({'above' if higher_is_better else 'below'} 0: distillation helped)", fontsize=10)
        g.set_xlabel("step", fontsize=9)
        g.set_ylabel(f"Δ validation {metric}", fontsize=9)
        drawn.append(Series("gain", "student - baseline", gain[0], gain[1]))
    _save(fig, path)
    return drawn


@dataclass
class Calibration:
    """Per bin of the model's own predictions (equal-count bins): mean predicted and observed."""

    predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the row-weighted mean gap between predicted and observed."""
        return float((self.count * np.abs(self.predicted - self.observed)).sum() / max(self.count.sum(), 1))


def calibration(y: np.ndarray, pred: np.ndarray, task: str, bins: int = 10) -> Calibration:
    """binary: P(y=1) vs the click rate; multiclass: top-class confidence vs accuracy; regression:
    the predicted value vs the mean observed value."""
    if task == "multiclass":
        score = pred.max(1)
        hit = (pred.argmax(1) == y).astype(float)
    else:
        score, hit = np.asarray(pred, float).reshape(-1), np.asarray(y, float).reshape(-1)
    # Equal-count bins: CTR-like predictions crowd near the base rate, equal-width bins would be empty.
    order = np.argsort(score, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)]
    return Calibration(np.array([score[p].mean() for p in parts]), np.array([hit[p].mean() for p in parts]),
                       np.array([len(p) for p in parts], float))


def plot_calibration(curves: dict[str, Calibration], scores: dict[str, np.ndarray], task: str, split: str,
                     path: Path) -> list[Series]:
    """Reliability diagram (predicted vs observed per bin) above a histogram of the predictions."""
    if not curves:
        return []
    fig, axes = _figure(1, 2, width=5.6, height=2.2, sharex=True, gridspec_kw={"height_ratios": [2.6, 1]})
    top, bottom = axes[0][0], axes[1][0]
    xlabel, ylabel = {"binary": ("predicted probability", "observed rate of y = 1"),
                      "multiclass": ("confidence (top class probability)", "accuracy"),
                      "regression": ("predicted value", "mean observed value")}[task]
    lo = min(min(c.predicted.min(), c.observed.min()) for c in curves.values())
    hi = max(max(c.predicted.max(), c.observed.max()) for c in curves.values())
    if task != "regression":
        lo, hi = max(0.0, lo - 0.02), min(1.0, hi + 0.02)
    top.plot([lo, hi], [lo, hi], color="#bbbbbb", linewidth=1, linestyle=":", label="perfectly calibrated")
    drawn: list[Series] = []
    for m, c in curves.items():
        label = m if task == "regression" else f"{m} (ECE {c.ece:.4f})"
        top.plot(c.predicted, c.observed, marker="o", markersize=4, linewidth=1.6, color=COLORS.get(m), label=label)
        drawn.append(Series("calibration", m, c.predicted, c.observed))
        s = scores[m]
        bottom.hist(s, bins=40, range=(lo, hi), histtype="step", color=COLORS.get(m), linewidth=1.2)
    top.set_ylabel(ylabel, fontsize=9)
    top.set_title(f"calibration on the {split} split ({len(curves)} models, {int(next(iter(curves.values())).count.sum()):,} rows, "
                  "equal-count bins)", fontsize=10)
    top.legend(fontsize=7.5, frameon=False)
    bottom.set_xlabel(xlabel, fontsize=9)
    bottom.set_ylabel("rows", fontsize=9)
    bottom.set_xlim(lo, hi)
    _save(fig, path)
    return drawn
