"""Ranking distillation within groups: pointwise vs pairwise vs listwise L_d, on the demo log
(grouped by user, a teacher far ahead within users) and on MovieLens-100k CTR (grouped by user, a
teacher barely ahead within users).

    python -m benchmarks.ranking_distillation [--demo-seeds 3] [--ml-seeds 1] [--root runs/rank]

For each data set and each `distillation.loss` it runs `distill compare CONFIG --seeds N --set
distillation.loss=LOSS` (skipped when ROOT/<data>_<loss>/compare.json exists), then writes
results/ranking_distillation.md: the student's test AUC, GAUC, NDCG@10 and recall@10 per loss, its
verdict against the baseline (compare's), and the within-group loss against pointwise: a paired
t-interval over seeds (3 seeds or more), else a paired bootstrap over test rows (GAUC only).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


LOSSES = ("pointwise", "listwise", "pairwise")
METRICS = ("auc", "gauc", "ndcg@10", "recall@10")


def prepare(root: Path) -> dict[str, Path]:
    from benchmarks.movielens_ctr import write_task
    from distill.demo import write_demo_data
    configs = {"demo": root / "demo" / "config.yaml", "ml": root / "ml" / "config.yaml"}
    if not configs["demo"].is_file():
        write_demo_data(root / "demo")
    if not configs["ml"].is_file():
        write_task(root / "ml")
    return configs


def run_compare(config: Path, loss: str, seeds: int, out: Path) -> None:
    if (out / "compare.json").is_file():
        return
    subprocess.run([sys.executable, "-m", "distill", "compare", str(config), "--seeds", str(seeds), "--set",
                    f"distillation.loss={loss}", "--output", str(out), "--no-report", "-q"], check=True)


def against_pointwise(ours: Path, theirs: Path, metric: str) -> tuple[float, float | None, float | None, str]:
    """(mean gain, low, high, method) of our student minus the pointwise student, paired by seed."""
    from benchmarks.paired_students import paired
    r = paired(ours, theirs, metric)
    return r["gain"], r["low"], r["high"], r["method"]


def table(name: str, root: Path) -> tuple[str, list[dict[str, Any]]]:
    from distill import results
    base = root / f"{name}_pointwise"
    first = json.loads((base / "compare.json").read_text())
    lines = ["| model | " + " | ".join(METRICS) + " | student − baseline (GAUC) | − pointwise student (GAUC) | − pointwise student (NDCG@10) |",
             "|---|" + "---|" * (len(METRICS) + 3)]
    rows = []
    fmt = lambda s, m: f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}"  # noqa: E731
    for role in ("teacher", "baseline"):
        lines.append(f"| {role} (with pointwise) | " + " | ".join(fmt(first[role], m) for m in METRICS) + " | | | |")
    for loss in LOSSES:
        out = root / f"{name}_{loss}"
        c = json.loads((out / "compare.json").read_text())
        v = c["verdict"]["metrics"]["gauc"]
        vs_base = f"{v['gain']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] {v['verdict']}" if v["low"] is not None else f"{v['gain']:+.4f}"
        cells = []
        for m in ("gauc", "ndcg@10"):
            if loss == "pointwise":
                cells.append("–")
                continue
            g, lo, hi, method = against_pointwise(out, base, m)
            word = results.verdict_word(lo, hi, m) if lo is not None else "no interval"
            cells.append(f"{g:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None else "") + f" {word} ({method})")
            rows.append({"data": name, "loss": loss, "metric": m, "vs_pointwise": g, "low": lo, "high": hi, "verdict": word})
        lines.append(f"| student, **{loss}** | " + " | ".join(fmt(c["student"], m) for m in METRICS) + f" | {vs_base} | " + " | ".join(cells) + " |")
        rows += [{"data": name, "loss": loss, "metric": m, "student": c["student"][m]["mean"]} for m in METRICS]
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/rank"))
    ap.add_argument("--demo-seeds", type=int, default=3)
    ap.add_argument("--ml-seeds", type=int, default=1)
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    configs = prepare(args.root)
    if not args.summarize_only:
        for name, seeds in (("demo", args.demo_seeds), ("ml", args.ml_seeds)):
            for loss in LOSSES:
                run_compare(configs[name], loss, seeds, args.root / f"{name}_{loss}")
    import torch
    parts = {}
    all_rows = []
    for name in ("demo", "ml"):
        if all((args.root / f"{name}_{loss}" / "compare.json").is_file() for loss in LOSSES):
            parts[name], rows = table(name, args.root)
            all_rows += rows
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "tables": parts}, indent=1))


if __name__ == "__main__":
    main()
