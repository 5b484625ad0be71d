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
from benchmarks.datasets import history_leaks, movielens_next_item
from benchmarks.sequence_movielens import MAX_LEN, VARIANTS, compare, config, history_stats, tables_md, train_variants

NAME = "sequence_next_item"
RATINGS = 50_000  # the first half of the log: 100,000 rows with the negatives, a run within ~12 minutes on one thread
EPOCHS = 3
PRIVILEGED = ["user_genre_count", "item_next_week"]


def next_item_config(directory: Path, variant: str, epochs: int = EPOCHS) -> dict[str, Any]:
    raw = config(directory, variant, epochs=epochs, privileged=PRIVILEGED)
    raw["train"]["early_stopping"]["patience"] = 1
    return raw


def run(quick: bool, out: Path) -> dict[str, Any]:
    import torch
    seeds = [0] if quick else [0, 1, 2]
    variants = ["no sequence", "din"] if quick else list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp, common.Stopwatch() as total:
        tables = movielens_next_item(8_000 if quick else RATINGS, max_len=MAX_LEN)
        leaks = history_leaks(pa.concat_tables([tables[k] for k in ("train", "valid", "test")]))
        assert leaks == 0, f"{leaks} rows' histories hold a movie rated at or after the row's time"
        metrics, seconds = train_variants(tables, variants, seeds, Path(tmp), make_config=next_item_config,
                                          epochs=2 if quick else EPOCHS)
    if quick:
        return {"quick": True, "metrics": metrics, "leaks": leaks}
    rows = compare(metrics, variants)
    summary = {"metrics": metrics, "rows": rows, "seconds": total.seconds, "variant_seconds": seconds,
               "capability": torch.backends.cpu.get_cpu_capability(), "sizes": {k: t.num_rows for k, t in tables.items()},
               "test_hist": history_stats(tables["test"])}
    common.write_results(out, NAME, markdown(summary), rows)
    return summary


def check(summary: dict[str, Any]) -> list[str]:
    """The quick run: both variants train end to end with finite validation AUCs; no history leaks."""
    bad = [f"{v}: {role} validation AUC is {m[role]['valid']['auc']}"
           for v, ms in summary["metrics"].items() for m in ms for role in ("teacher", "student", "baseline")
           if not np.isfinite(m[role]["valid"]["auc"])]
    return bad + ([f"{summary['leaks']} histories leak"] if summary["leaks"] else [])


def reading(s: dict[str, Any]) -> str:
    said = [f"{r['variant']} {r['role']} {r['metric']}: {r['verdict']}" for r in s["rows"]
            if r["metric"] in ("auc", "gauc") and r["verdict"] in ("gain", "harm")]
    if not said:
        return "no encoder gains or harms beyond the noise over no sequence, in any role (AUC and GAUC)."
    return "beyond the noise against no sequence: " + "; ".join(said) + "."


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
**Data**: `benchmarks.datasets.movielens_next_item`: the first {RATINGS:,} ratings of the log in time order, each a
positive, each with one negative drawn by popularity (`numpy.random.default_rng(0)`) from the movies the user had not
rated by then (train {z['train']:,}, valid {z['valid']:,}, test {z['test']:,} rows, half positive). `hist`: the user's
rated movies of strictly earlier seconds, most recent first, cut to {MAX_LEN} (`shares: item_id`); the run asserts that
no history holds a movie rated at or after the row's time. Test rows: {h['mean']:.1f} items on average,
{100 * h['empty']:.0f} % empty, {100 * h['full']:.0f} % at the cap. Privileged: `user_genre_count` (past user × genre
count) and `item_next_week` (other users' ratings of the candidate in the next 7 days). **Models**: as
`sequence_movielens` (teacher 64-32 dropout 0.2, students 64, embeddings 16, `din` for DIN, else `dnn`; λ = 0.8, Adam
lr 0.01, batches of 1024), up to {EPOCHS} epochs, early stopping on validation AUC (patience 1). Not tuned.

Wall time: {s['seconds']:.0f} s ({times}); `torch.backends.cpu.get_cpu_capability()` = `{s['capability']}`.
{common.environment_note()}
"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
