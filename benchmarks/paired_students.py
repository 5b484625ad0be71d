"""Student of compare run A − student of compare run B, paired by seed (the same seeds, the same test rows).

    python -m benchmarks.paired_students CMP_A CMP_B [METRIC ...]

With 3 seeds or more: a t-interval over the per-seed differences (results.t_interval); with fewer:
a paired bootstrap over the test rows (AUC and GAUC only). Used by benchmarks.teaching and
benchmarks.ranking_distillation.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from distill import results


def _metrics(out: Path) -> list[dict]:
    return [json.loads((d / "metrics.json").read_text()) for d in sorted(Path(out).glob("seed_*"))]


def paired(a: Path, b: Path, metric: str) -> dict:
    """{"gain", "low", "high", "verdict", "method"} of A's student − B's student on `metric` (test)."""
    x, y = _metrics(a), _metrics(b)
    d = [p["student"]["test"][metric] - q["student"]["test"][metric] for p, q in zip(x, y)]
    if len(d) >= results.MIN_SEEDS:
        mean, low, high = results.t_interval(d)
        return {"gain": mean, "low": low, "high": high, "verdict": results.verdict_word(low, high, metric),
                "method": f"t-interval over {len(d)} seeds"}
    if metric not in ("auc", "gauc"):
        return {"gain": float(np.mean(d)), "low": None, "high": None, "verdict": "no interval", "method": "one seed"}
    preds = []
    for p, q in zip(sorted(Path(a).glob("seed_*")), sorted(Path(b).glob("seed_*"))):
        u, v = results.read_predictions(p), results.read_predictions(q)
        assert np.array_equal(u["y"], v["y"]), "the two runs were not scored on the same test rows"
        preds.append({"y": u["y"], "group": u["group"], "student": u["student"], "baseline": v["student"]})
    boot = results.bootstrap(preds, "binary")
    diff = boot["student"][metric] - boot["baseline"][metric]
    low, high = (float(v) for v in np.percentile(diff, [2.5, 97.5]))
    return {"gain": float(np.mean(d)), "low": low, "high": high, "verdict": results.verdict_word(low, high, metric),
            "method": f"paired bootstrap over {len(preds[0]['y']):,} test rows"}


def cell(r: dict) -> str:
    """'+0.0012 [−0.0003, +0.0027] no gain (within noise)' for a Markdown table."""
    if r["low"] is None:
        return f"{r['gain']:+.4f} ({r['method']})"
    word = f"**{r['verdict']}**" if r["verdict"] in ("gain", "harm") else r["verdict"]
    return f"{r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] {word}"


if __name__ == "__main__":
    for m in sys.argv[3:] or ["auc", "gauc"]:
        r = paired(Path(sys.argv[1]), Path(sys.argv[2]), m)
        print(f"{m}: {cell(r)} ({r['method']})")
