"""Behaviour sequences where the history should matter: MovieLens-100k as implicit next-item prediction.

    python -m benchmarks.sequence_next_item [--quick]

The task is `benchmarks.datasets.movielens_next_item`: every rating of the first RATINGS ratings (in
time order) is a positive for (user, movie, time), each with one negative drawn by popularity from the
movies the user had not rated by then (seeded), same time; `hist` = the user's previously rated movies of
strictly earlier seconds, most recent first, at most 20; split 70/10/20 by time. The run asserts that no
row's history holds a movie the user rated at or after the row's time (`datasets.history_leaks` over the
whole log). Privileged: `user_genre_count` (a past user × genre cross) and `item_next_week` (how many
other users rate the candidate in the following 7 days: the future, known only in the log).

The same four variants and sync-PFD runs as `benchmarks.sequence_movielens` (its `config`,
`train_variants`, `compare` and tables are reused): no sequence, mean, din, self_attention; teacher,
student alone and distilled student; 3 seeds; paired verdicts from `distill.results`.

`--quick` builds the first 8,000 ratings, trains one seed of "no sequence" and "din" for 2 epochs and
checks that they run with finite validation AUCs and that no history leaks.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks import common
from benchmarks.datasets import history_leaks, movielens_next_item, negatives_rated_later
from benchmarks.sequence_movielens import MAX_LEN, VARIANTS, compare, config, history_stats, tables_md, train_variants

NAME = "sequence_next_item"
RATINGS = 40_000  # the first 40 % of the log: 80,000 rows with the negatives, a run within ~12 minutes on one thread
EPOCHS = 5  # at 3 the curves were still rising (results/sequence_next_item.md of commit 3-epoch run)
PRIVILEGED = ["user_genre_count", "item_next_week"]


def next_item_config(directory: Path, variant: str, epochs: int = EPOCHS) -> dict[str, Any]:
    raw = config(directory, variant, epochs=epochs, privileged=PRIVILEGED)
    raw["train"]["early_stopping"]["patience"] = 2
    return raw


def run(quick: bool, out: Path) -> dict[str, Any]:
    import torch
    seeds = [0] if quick else [0, 1, 2]
    variants = ["no sequence", "din"] if quick else list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp, common.Stopwatch() as total:
        tables = movielens_next_item(8_000 if quick else RATINGS, max_len=MAX_LEN)
        log = pa.concat_tables([tables[k] for k in ("train", "valid", "test")])
        leaks, later = history_leaks(log), negatives_rated_later(log)
        assert leaks == 0, f"{leaks} rows' histories hold a movie rated at or after the row's time"
        metrics, seconds = train_variants(tables, variants, seeds, Path(tmp), make_config=next_item_config,
                                          epochs=2 if quick else EPOCHS)
    if quick:
        return {"quick": True, "metrics": metrics, "leaks": leaks}
    rows = compare(metrics, variants)
    summary = {"metrics": metrics, "rows": rows, "distil_rows": distil_rows(metrics), "seconds": total.seconds, "variant_seconds": seconds,
               "capability": torch.backends.cpu.get_cpu_capability(), "sizes": {k: t.num_rows for k, t in tables.items()},
               "test_hist": history_stats(tables["test"]), "epochs": EPOCHS,
               "rated_later": later}
    common.write_results(out, NAME, markdown(summary), rows + [r | {"role": "student − baseline"} for r in summary["distil_rows"]])
    return summary


def check(summary: dict[str, Any]) -> list[str]:
    """The quick run: both variants train end to end with finite validation AUCs; no history leaks."""
    bad = [f"{v}: {role} validation AUC is {m[role]['valid']['auc']}"
           for v, ms in summary["metrics"].items() for m in ms for role in ("teacher", "student", "baseline")
           if not np.isfinite(m[role]["valid"]["auc"])]
    return bad + ([f"{summary['leaks']} histories leak"] if summary["leaks"] else [])


def distil_rows(metrics: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Within each variant, the distilled student against the student alone, paired by seed."""
    from distill.results import verdicts
    rows = []
    for v, runs in metrics.items():
        ver = verdicts([{k: {"test": m[k]["test"]} for k in ("student", "baseline")} for m in runs], "test", "auc")
        for metric in ("auc", "gauc"):
            e = ver["metrics"][metric] if "metrics" in ver else ver[metric]
            rows.append({"variant": v, "metric": metric, "gain": e["gain"], "low": e["low"], "high": e["high"], "verdict": e["verdict"]})
    return rows


def reading(s: dict[str, Any]) -> str:
    """The verdicts in two sentences: the sequence against none (per verdict, which variant and role), then distillation."""
    roles = {"teacher": "teacher", "baseline": "student alone", "student": "distilled student"}
    by: dict[str, list[str]] = {}
    for r in s["rows"]:
        if r["metric"] == "auc":
            by.setdefault(r["verdict"], []).append(f"{r['variant']} {roles[r['role']]}")
    seq = "; ".join(f"**{k}** on AUC: {', '.join(v)}" for k, v in by.items())
    dist = "; ".join(f"{r['variant']} {r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] {r['verdict']}"
                     for r in s["distil_rows"] if r["metric"] == "auc")
    return f"each encoder against no sequence, {seq}. Distilled student − student alone, test AUC: {dist}."


def curve_table(s: dict[str, Any]) -> str:
    """Per variant and model: validation AUC after each epoch (mean over the seeds), and in how many
    seeds the best epoch was the last one allowed (still climbing at the cap)."""
    names = {"teacher": "teacher", "baseline": "student alone", "student": "distilled student"}
    rows = []
    for v, runs in s["metrics"].items():
        for model, label in names.items():
            cs = [r["curves"][model] for r in runs]
            n = min(len(c) for c in cs)
            at_cap = sum(len(c) == s["epochs"] and int(np.argmax(c)) == len(c) - 1 for c in cs)
            rows.append([v, label, " → ".join(f"{np.mean([c[e] for c in cs]):.4f}" for e in range(n)), f"{at_cap} of {len(cs)}"])
    return common.md_table(["variant", "model", "validation AUC by epoch (mean over seeds)", "best at the last epoch"], rows)


def markdown(s: dict[str, Any]) -> str:
    level, paired, distil = tables_md(s)
    z, h = s["sizes"], s["test_hist"]
    times = ", ".join(f"{v} {t:.0f} s" for v, t in s["variant_seconds"].items())
    return f"""# Behaviour sequences on MovieLens-100k next-item: no sequence vs mean vs DIN vs self-attention

**Reading**: {reading(s)}

Command: `nice -n 5 python -m benchmarks.{NAME}` (1 thread). Test split, 3 seeds (train.seed 0, 1, 2), each variant
trained as sync PFD: the teacher, the distilled student and the student alone (the baseline) in one run.

Test AUC, mean ± std over the seeds:

{level}
Each variant against "no sequence", the same model role, paired by seed (`distill.results.verdicts`: t-interval over
3 seeds; **gain** / **harm** only when the interval excludes 0):

{paired}
What distillation adds within each variant (the run's own student − baseline, mean over the seeds):

{distil}
Validation AUC after each epoch (early stopping keeps the best; a curve still rising at the cap was cut short):

{curve_table(s)}
**Data**: `benchmarks.datasets.movielens_next_item`: the first {RATINGS:,} ratings of the log in time order, each a
positive, each with one negative drawn by popularity (`numpy.random.default_rng(0)`) from the movies the user had not
rated by then ({100 * s['rated_later']:.0f} % of them the user rates later in the log: negatives that are future
positives, a ceiling on any model; train {z['train']:,}, valid {z['valid']:,}, test {z['test']:,} rows, half positive). `hist`: the user's
rated movies of strictly earlier seconds, most recent first, cut to {MAX_LEN} (`shares: item_id`); the run asserts that
no history holds a movie rated at or after the row's time. Test rows: {h['mean']:.1f} items on average,
{100 * h['empty']:.0f} % empty, {100 * h['full']:.0f} % at the cap. Privileged: `user_genre_count` (past user × genre
count) and `item_next_week` (other users' ratings of the candidate in the next 7 days, not the user's own). **Models**: as
`sequence_movielens` (teacher 64-32 dropout 0.2, students 64, embeddings 16, `din` for DIN, else `dnn`; λ = 0.8, Adam
lr 0.01, batches of 1024), up to {EPOCHS} epochs, early stopping on validation AUC (patience 2). Not tuned.

Wall time: {s['seconds']:.0f} s ({times}); `torch.backends.cpu.get_cpu_capability()` = `{s['capability']}`.
{common.environment_note()}
"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
