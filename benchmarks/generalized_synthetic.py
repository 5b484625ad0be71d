"""Generalized distillation, synthetic experiments 1-3 (Lopez-Paz, Bottou, Schölkopf, Vapnik, ICLR 2016).

    python -m benchmarks.generalized_synthetic [--quick]

Each repetition draws α, 200 training and 10,000 test points (benchmarks/datasets.py), then one
`distill.train` call in mode `async` trains the three models the paper compares:
- teacher  = softmax regression on the privileged x* only (`teacher.features: privileged`),
- baseline = softmax regression on the regular x alone ("regular"),
- student  = the same, distilled from the teacher with λ = T = 1 ("distilled").
The task is `multiclass` with two classes, so every model is the paper's two-output softmax
regression (`hidden: []`), and at T = 1 distill's soft term is exactly the paper's CE(s, softmax(f_s(x))).
Training follows the authors' code where the paper is silent: RMSprop, no regularisation, a fixed
budget (no early stopping); see TRAIN below for the one deviation (full batch, fewer steps).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.datasets import lopez_paz_synthetic

NAME = "generalized_synthetic"
EXPERIMENTS = {1: "clean labels", 2: "clean features", 3: "relevant features"}
# The paper's Table (accuracy %, mean ± std over 100 repetitions): privileged, regular, distilled.
PAPER = {1: ((96, 0), (88, 1), (95, 1)), 2: ((90, 1), (68, 1), (70, 1)), 3: ((98, 0), (89, 1), (97, 1))}
# An independent re-run listed in shared/REFERENCES.md.
RERUN = {1: (95.3, 88.0, 95.3), 2: (89.6, 67.7, 67.9), 3: (97.9, 87.4, 97.4)}
ROLES = (("teacher", "privileged"), ("baseline", "regular"), ("student", "distilled"))
# The authors' code: Keras RMSprop (lr 1e-3), batch 128, 1000 epochs = 2000 steps on 200 points.
# RMSprop moves each weight by about lr per step, so full batches (200) for 250 epochs at lr 8e-3 cover
# the same distance in an eighth of the steps, which is what lets 300 repetitions x 3 models fit our CPU
# budget. On 6 repetitions per experiment, 500 epochs at 4e-3 gave the same means within 0.3 points.
TRAIN = {"epochs": 250, "batch_size": 200, "optimizer": "rmsprop", "lr": 8e-3}


def config(experiment: int, d_priv: int, d: int = 50, seed: int = 0, data: dict[str, str] | None = None):
    import distill
    feats = common.numeric_features("x", d) + common.numeric_features("p", d_priv, privileged=True)
    return distill.config_from_dict({
        "data": data or {"train": "in-memory"},
        "task": {"type": "multiclass", "label": "y"},
        "features": feats,
        "teacher": {"model": "dnn", "hidden": [], "features": "privileged"},
        "student": {"model": "dnn", "hidden": []},
        "distillation": {"mode": "async", "weight": 1.0, "temperature": 1.0},
        "train": {**TRAIN, "seed": seed, "early_stopping": None, "baseline": True, "log_every": 10 ** 9},
    }, source=f"{NAME} experiment {experiment}")


def tables(experiment: int, rep: int, n_test: int):
    data = lopez_paz_synthetic(experiment, 200, n_test, seed=1000 * experiment + rep)
    train = common.numeric_table({"x": data["x_train"], "p": data["xs_train"]}, data["y_train"])
    test = common.numeric_table({"x": data["x_test"], "p": data["xs_test"]}, data["y_test"])
    return train, test, data["xs_train"].shape[1]


def one_repetition(experiment: int, rep: int, n_test: int, workdir: Path) -> dict[str, float]:
    """Accuracy of teacher (privileged), baseline (regular) and student (distilled) on the test set."""
    import distill
    train, test, d_priv = tables(experiment, rep, n_test)
    cfg = config(experiment, d_priv, seed=rep)
    # The same data and config through the public API; splits= only skips writing Parquet.
    run = distill.train(cfg, output=workdir / f"e{experiment}_r{rep}", quiet=True,
                        splits=common.encode_splits(cfg, train, test=test))
    shutil.rmtree(run.path)
    return {role: run.metrics[role]["test"]["accuracy"] for role, _ in ROLES}


def parquet_repetition(experiment: int, rep: int, n_test: int, workdir: Path) -> dict[str, float]:
    """Repetition `rep` again, this time from Parquet files exactly as a user would run it."""
    import distill
    train, test, d_priv = tables(experiment, rep, n_test)
    paths = common.write_parquet_splits(workdir / f"pq_e{experiment}", {"train": train, "test": test})
    cfg = config(experiment, d_priv, seed=rep, data={"train": paths["train"], "test": paths["test"]})
    run = distill.train(cfg, output=workdir / f"pq_e{experiment}_run", quiet=True)
    return {role: run.metrics[role]["test"]["accuracy"] for role, _ in ROLES}


def run(quick: bool, out: Path) -> dict[str, Any]:
    reps, n_test = (8, 2000) if quick else (100, 10_000)
    experiments = (1,) if quick else (1, 2, 3)
    results: dict[int, dict[str, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    seconds: dict[int, float] = {}
    parquet_check: dict[int, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for e in experiments:
            results[e] = {role: [] for role, _ in ROLES}
            with common.Stopwatch() as w:
                for rep in range(reps):
                    acc = one_repetition(e, rep, n_test, Path(tmp))
                    for role, _ in ROLES:
                        results[e][role].append(acc[role])
                    rows.append({"experiment": e, "repetition": rep, **{label: acc[role] for role, label in ROLES}})
            seconds[e] = w.seconds
            if not quick:
                via_parquet = parquet_repetition(e, 0, n_test, Path(tmp))
                parquet_check[e] = all(abs(via_parquet[r] - results[e][r][0]) < 1e-9 for r, _ in ROLES)
    summary = {"reps": reps, "n_test": n_test, "results": results, "seconds": seconds, "parquet_check": parquet_check}
    common.write_results(out, NAME, markdown(summary), rows, figure(summary))
    return summary


def check(summary: dict[str, Any]) -> list[str]:
    """Experiment 1: the distilled student beats the student alone, and the teacher beats both."""
    r = summary["results"][1]
    problems = []
    if not np.mean(r["student"]) > np.mean(r["baseline"]) + 0.02:
        problems.append(f"experiment 1: distilled {np.mean(r['student']):.3f} does not beat regular {np.mean(r['baseline']):.3f} by 2 points")
    if not np.mean(r["teacher"]) > np.mean(r["baseline"]):
        problems.append("experiment 1: the privileged teacher does not beat the regular model")
    return problems


def markdown(s: dict[str, Any]) -> str:
    header = ["experiment", "model", "ours (%)", "paper (%)", "ours − paper", "re-run (%)"]
    rows = []
    worst = 0.0
    for e, r in s["results"].items():
        for k, (role, label) in enumerate(ROLES):
            m, sd = common.mean_std(np.asarray(r[role]) * 100)
            pm_, ps = PAPER[e][k]
            worst = max(worst, abs(m - pm_))
            rows.append([f"{e} {EXPERIMENTS[e]}", label, f"{m:.1f} ± {sd:.1f}", f"{pm_} ± {ps}", f"{m - pm_:+.1f}", f"{RERUN[e][k]:.1f}"])
    checks = "; ".join(f"experiment {e}: {'identical' if ok else 'DIFFERENT'}" for e, ok in s["parquet_check"].items())
    secs = ", ".join(f"experiment {e}: {t:.0f} s" for e, t in s["seconds"].items())
    return f"""# Generalized distillation: synthetic experiments 1–3

Lopez-Paz, Bottou, Schölkopf, Vapnik, *Unifying distillation and privileged information*, ICLR 2016, Section 5.
Command: `python -m benchmarks.{NAME}`. {s['reps']} repetitions, 200 training and {s['n_test']:,} test points each,
d = 50, softmax regression for every model, λ = T = 1. Accuracy on the test points, mean ± std over repetitions
(ours: sample std; the paper's code: population std, both rounded the same way).

{common.md_table(header, rows)}
Largest |ours − paper|: **{worst:.1f} points** (goal: within 2).

The shortened training budget (below) costs about a point where the regular model is fitted to separable data:
on repetitions 0–9 of experiment 3, the authors' budget (batches of 128, 1000 epochs, lr 1e-3, 8× the CPU time) gave
privileged / regular / distilled 98.1 / 88.3 / 97.7 against 98.0 / 87.2 / 96.7 with ours. The 2.8-point miss of
experiment 3 "regular" is mostly that; a full run at the authors' budget did not fit the CPU time available.

How it is run, through distill's public API (one `distill.train` call per repetition, mode `async`):
- teacher = `dnn` with `hidden: []` on `teacher.features: privileged` (x* only), trained first, then frozen;
- "regular" = the baseline distill trains beside every run (the student alone, same initialisation and data order);
- "distilled" = the student with `distillation: {{weight: 1.0, temperature: 1.0}}`, i.e. trained on the teacher's soft labels alone.
- `task.type: multiclass` with two classes, so each model is the paper's two-output softmax regression and
  distill's soft term at T = 1 is exactly CE(softmax(f_t(x*)), softmax(f_s(x))).
- Data: benchmarks/datasets.py `lopez_paz_synthetic(experiment, 200, {s['n_test']}, seed=1000·experiment + repetition)`;
  x and x* standardised on the training split, as in the authors' code (distill standardises numeric features again: a no-op).
- Training: RMSprop, no regularisation, no early stopping, {TRAIN['epochs']} epochs of full batches at lr {TRAIN['lr']}.
  The authors' code runs Keras RMSprop at lr 1e-3 for 1000 epochs of batches of 128 (2000 steps); RMSprop moves each
  weight about lr per step, so 250 full-batch steps at 8× the rate cover about the same distance at an eighth of the
  CPU time (500 full-batch steps at 4× gave the same means within 0.3 points on 6 repetitions per experiment; the
  authors' minibatch budget differs by about a point on experiment 3, see above).
- The data reach `distill.train` as in-memory tables (`splits=`) instead of Parquet files, to save 300 file round trips.
  The first repetition of each experiment was run again from Parquet files with a plain `distill.train(cfg)`:
  {checks or 'not run in --quick'}.

Wall time: {secs}. {common.environment_note()}

![accuracy per experiment]({NAME}.png)
"""


def figure(s: dict[str, Any]):
    plt = common.pyplot()
    exps = list(s["results"])
    fig, axes = plt.subplots(1, len(exps), figsize=(4.2 * len(exps), 3.6), squeeze=False)
    for ax, e in zip(axes[0], exps):
        labels = [label for _, label in ROLES]
        ours = [np.asarray(s["results"][e][role]) * 100 for role, _ in ROLES]
        x = np.arange(3)
        ax.bar(x - 0.2, [o.mean() for o in ours], 0.4, yerr=[o.std(ddof=1) for o in ours], capsize=3, label="distill")
        ax.bar(x + 0.2, [PAPER[e][k][0] for k in range(3)], 0.4, yerr=[PAPER[e][k][1] for k in range(3)],
               capsize=3, label="paper", color="tab:gray")
        ax.set_xticks(x, labels)
        lo = min(min(o.mean() for o in ours), min(p[0] for p in PAPER[e])) - 8
        ax.set_ylim(max(0, lo), 100)
        ax.set_title(f"{e}: {EXPERIMENTS[e]}")
        ax.set_ylabel("test accuracy (%)")
    axes[0][0].legend(loc="lower left")
    fig.suptitle(f"Generalized distillation, synthetic (mean ± std over {s['reps']} repetitions)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
