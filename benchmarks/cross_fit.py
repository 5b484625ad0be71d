"""Out-of-fold soft labels against the plain cached teacher: read two `distill compare` directories.

    distill compare CONFIG --seeds 3 --set distillation.mode=async --output PLAIN
    distill compare CONFIG --seeds 3 --set distillation.mode=async --set distillation.cross_fit=5 --output CF
    python -m benchmarks.cross_fit PLAIN CF

Prints, as Markdown: each student's gain over its baseline (from the compare.json files), the
cross-fit student against the plain one paired by seed (same init, same data order: the only
difference is the soft labels) with a seeds t-interval and a verdict, and the teacher's
over-confidence on its training rows: the mean training loss of the full teacher (the soft labels
of plain async) against that of the out-of-fold logits (run.json, phases.cross_fit), beside the
teacher's validation log-loss.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from distill import results


def summarise(plain: Path, cf: Path, split: str = "test") -> str:
    a, b = (json.loads((d / "compare.json").read_text()) for d in (plain, cf))
    seeds = sorted(p.name for p in cf.glob("seed_*"))
    lines = ["| | student − baseline (auc) | verdict |", "|---|---|---|"]
    for name, s in (("plain cached teacher", a), ("cross_fit = 5", b)):
        v = s["verdict"]["metrics"]["auc"]
        lines.append(f"| {name} | {v['gain']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] | {v['verdict']} |")
    lines += ["", "| metric | cross-fit student − plain student (paired by seed) | verdict |", "|---|---|---|"]
    metrics = [json.loads((d / s / "metrics.json").read_text()) for s in seeds for d in (plain, cf)]
    for m in ("auc", "logloss", "gauc"):
        diffs = [metrics[2 * i + 1]["student"][split][m] - metrics[2 * i]["student"][split][m] for i in range(len(seeds))]
        mean, low, high = results.t_interval(diffs)
        lines.append(f"| {m} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | {results.verdict_word(low, high, m)} |")
    lines += ["", "| seed | teacher loss on its own training rows | out-of-fold loss on those rows | teacher valid logloss | fold teachers' valid auc |",
              "|---|---|---|---|---|"]
    for s in seeds:
        info = json.loads((cf / s / "run.json").read_text())["phases"]["cross_fit"]
        valid = json.loads((cf / s / "metrics.json").read_text())["teacher"]["valid"]["logloss"]
        aucs = ", ".join(f"{t['valid']['auc']:.4f}" for t in info["teachers"])
        lines.append(f"| {s} | {info['train_loss_full_teacher']:.4f} | {info['train_loss_out_of_fold']:.4f} | {valid:.4f} | {aucs} |")
    lines.append(f"\n`torch.backends.cpu.get_cpu_capability()` = `{torch.backends.cpu.get_cpu_capability()}`")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), Path(sys.argv[2])))
