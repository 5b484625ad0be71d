"""`distill tune` on public real data: PFD on the adult census data (benchmarks/pfd_adult.py).

    python -m benchmarks.tune_adult [--quick]

The task, features and models are pfd_adult's (income > 50K; privileged: marital-status,
relationship, log capital gain and loss; dnn 64-32 student and teacher; results/pfd_adult.md: no
variant gains more than 0.0005 AUC). `distill compare` of pfd_adult's "PFD async" config (λ 0.5,
delayed start after one epoch, T 1) over 3 seeds, then `distill tune` (its default space) for 20
trials on validation, its choice retrained over the same 3 seeds; both paired against the baseline
on test (pfd_adult's 10 epochs, early stopping on validation AUC, patience 2). Writes results/tune_adult.md and .csv. `--quick` (3,000 training rows,
2 epochs, 4 trials, 2 seeds) checks only that tune's choice is not worse than the baseline on test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common, pfd_adult

NAME = "tune_adult"
FULL = {"trials": 20, "seeds": 3, "epochs": 10, "max_train": None}
QUICK = {"trials": 4, "seeds": 2, "epochs": 2, "max_train": 3000}


def run(quick: bool, out: Path) -> dict[str, Any]:
    p = QUICK if quick else FULL

    def make(data: Path):
        tables = pfd_adult.prepared(p["max_train"])
        paths = common.write_parquet_splits(data, tables)
        delay = -(-tables["train"].num_rows // 256)  # one epoch of steps, as pfd_adult
        cfg = pfd_adult.config(paths, "PFD async", seed=0, epochs=p["epochs"], baseline=False, delay=delay)
        cfg.output = str(data.parent / "runs")
        return cfg
    return common.tune_benchmark(out, NAME, make, p["trials"], p["seeds"], markdown, quick)


def check(ev: dict[str, Any]) -> list[str]:
    return common.no_harm(ev["tune"])


def markdown(ev: dict[str, Any]) -> str:
    size = "3,000 training rows, 2 epochs (--quick)" if ev["quick"] else "all 48,842 rows (60 / 15 / 25 %), up to 10 epochs"
    return f"""# `distill tune` on adult (privileged-features distillation)

Command: `nice -n 5 python -m benchmarks.{NAME}`. Data, features and models: `benchmarks.pfd_adult` ({size}; privileged:
`marital-status`, `relationship`, log1p `capital-gain`, `capital-loss`; `dnn` 64-32 teacher and student, embeddings of 8;
Adam lr 1e-3, batches of 256, early stopping on validation AUC, patience 2).
- **compare's defaults**: `distill.compare(cfg, seeds={ev['seeds']})` on pfd_adult's "PFD async" config (async, λ 0.5,
  delayed start after one epoch, T 1).
- **tune**: `distill.tune(cfg, trials={ev['trials_asked']}, seeds={ev['seeds']})`, tune's default space (async, one cached
  teacher; λ ∈ [0, 0.95], T ∈ [1, 8] log, schedule constant / delayed / linear and its k), selection on validation AUC.
Both paired against the same baseline (student alone, same initialisation and data order per seed) on the test split;
95% t-interval over seeds.

{common.tune_findings(ev)}
{common.teacher_line(ev['defaults'])}

{common.tune_footer(ev)}"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
