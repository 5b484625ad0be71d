"""Student of compare run A − student of compare run B, paired bootstrap over the same test rows (seed 0).

    python -m benchmarks.paired_students CMP_A CMP_B
"""
import sys

import numpy as np

from distill import results

a, b = (np.load(f"{p}/seed_0/test_predictions.npz") for p in sys.argv[1:3])
assert np.array_equal(a["y"], b["y"]), "the two runs were not scored on the same test rows"
boot = results.bootstrap([{"y": a["y"], "group": a["group"], "student": a["student"], "baseline": b["student"]}], "binary")
for m in ("auc", "gauc"):
    d = boot["student"][m] - boot["baseline"][m]
    lo, hi = np.percentile(d, [2.5, 97.5])
    print(f"{m}: {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] {results.verdict_word(lo, hi, m)}")
