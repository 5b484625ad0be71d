"""`distill tune` on the data `distill demo` writes: compare's defaults vs tune's choice vs the baseline.

    python -m benchmarks.tune_demo [--quick]

The demo's impression log and config (distill/demo.py: a dcn_v2 teacher with two privileged
columns, a two-tower student, sync λ 0.8): `distill compare` of that config over 3 seeds, then
`distill tune` (its default space: async, one cached teacher; λ, T, schedule and k) for 20 trials
on validation, its choice retrained over the same 3 seeds; both paired against the baseline on test.
Writes results/tune_demo.md and .csv. `--quick` (4,000 training rows, 2 epochs, 4 trials, 2 seeds)
checks only that tune's choice is not worse than the baseline on test beyond noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common

NAME = "tune_demo"
FULL = {"trials": 20, "seeds": 3}
QUICK = {"trials": 4, "seeds": 2, "rows": (4000, 1000, 2000), "epochs": 2}


def run(quick: bool, out: Path) -> dict[str, Any]:
    import distill
    from distill.demo import write_demo_data

    def make(data: Path):
        if quick:
            path = write_demo_data(data, *QUICK["rows"])
            return distill.load_config(path, {"train.epochs": QUICK["epochs"], "output": str(data.parent / "runs")})
        return distill.load_config(write_demo_data(data), {"output": str(data.parent / "runs")})
    p = QUICK if quick else FULL
    return common.tune_benchmark(out, NAME, make, p["trials"], p["seeds"], markdown, quick)


def check(ev: dict[str, Any]) -> list[str]:
    return common.no_harm(ev["tune"])


def markdown(ev: dict[str, Any]) -> str:
    size = "4,000 / 1,000 / 2,000 rows, 2 epochs (--quick)" if ev["quick"] else "100,000 / 20,000 / 40,000 rows, 6 epochs"
    return f"""# `distill tune` on the demo's impression log

Command: `nice -n 5 python -m benchmarks.{NAME}`: the data of `distill demo` (distill/demo.py; train / valid / test
{size}), then `distill.compare(cfg, seeds={ev['seeds']})` on the demo config as written (sync, λ 0.8, T 1, constant
schedule, dcn_v2 teacher + `user_cat_clicks_24h`, `viewport_seconds`, two-tower student), and
`distill.tune(cfg, trials={ev['trials_asked']}, seeds={ev['seeds']})` with tune's default space (async with one cached
teacher; λ ∈ [0, 0.95], T ∈ [1, 8] log, schedule constant / delayed / linear and its k). Both paired against the
same baseline (the student alone, same initialisation and data order per seed) on test; 95% t-interval over seeds.

{common.tune_findings(ev)}
{common.teacher_line(ev['defaults'])}

{common.tune_footer(ev)}"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
