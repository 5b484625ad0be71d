"""The sequence in a two-tower student's user tower, as a retriever: MovieLens-100k next-item.

    python -m benchmarks.sequence_two_tower [--quick]

The data, privileged features and teacher of `benchmarks.sequence_next_item`; the student is a
`two_tower` (user tower: user_id, age, gender, occupation, hour, weekday and, in the sequence variants,
`hist`; item tower: item_id, item_genres). Three variants, each trained as sync PFD over 3 seeds: no
sequence, the history mean-pooled and self-attention in the user tower (the teacher, a `dnn`, reads the
same history the same way). Each run is then served as a retriever (`distill.retrieval.retrieval_metrics`:
the whole catalogue ranked per test user by the towers' inner product, the user's training items excluded);
recall@10 / @50 and NDCG@10, and test AUC, against "no sequence" paired by seed (`distill.results`' t-interval
and verdict).

`--quick`: the first 8,000 ratings, one seed of "no sequence" and "mean", 2 epochs; checks finite
recall@10 and validation AUC.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.datasets import movielens_next_item
from benchmarks.sequence_movielens import MAX_LEN
from benchmarks.sequence_next_item import EPOCHS, RATINGS, next_item_config

NAME = "sequence_two_tower"
ENCODERS = {"no sequence": None, "mean": "mean", "self_attention": "self_attention"}
USER = ["user_id", "user_age", "user_gender", "user_occupation", "hour", "weekday"]
ROLES = {"student": "distilled two-tower (sync PFD)", "baseline": "two-tower alone"}
MEASURES = [("catalogue", "recall@10"), ("catalogue", "recall@50"), ("catalogue", "ndcg@10"), ("test", "auc")]


def two_tower_config(directory: Path, variant: str, epochs: int = EPOCHS) -> dict[str, Any]:
    # sequence_movielens' VARIANTS name the teacher model; here the variant is the user tower's encoder
    base = "no sequence" if ENCODERS[variant] is None else variant
    raw = next_item_config(directory, base, epochs=epochs)
    raw["student"] = {"model": "two_tower", "hidden": [64], "embedding_dim": 16, "tower_dim": 32,
                      "user_features": USER + (["hist"] if ENCODERS[variant] else [])}
    return raw


def popularity_reference(train: Any, test: Any) -> dict[str, float]:
    """The catalogue ranked by each movie's positives in train, for every query user alike, with
    `distill.retrieval`'s protocol (catalogue train ∪ test, positives = test clicks less train
    clicks, train clicks excluded): what knowing popularity alone gives."""
    from distill.retrieval import ranking_metrics, top_k
    tr = {c: train[c].to_numpy() for c in ("user_id", "item_id", "click")}
    te = {c: test[c].to_numpy() for c in ("user_id", "item_id", "click")}
    catalogue = np.unique(np.r_[tr["item_id"], te["item_id"]])
    index = {v: j for j, v in enumerate(catalogue)}
    counts = np.zeros(len(catalogue), np.float32)
    seen: dict[int, set] = {}
    for u, i, y in zip(*tr.values()):
        if y:
            counts[index[i]] += 1
            seen.setdefault(int(u), set()).add(int(i))
    clicked: dict[int, set] = {}
    for u, i, y in zip(*te.values()):
        if y:
            clicked.setdefault(int(u), set()).add(int(i))
    users = [u for u in dict.fromkeys(int(x) for x in te["user_id"]) if clicked.get(u, set()) - seen.get(u, set())]
    excluded = [np.array([index[i] for i in seen.get(u, ())], dtype=np.int64) for u in users]
    top = top_k(np.ones((len(users), 1), np.float32), counts[:, None], excluded, 50)
    return ranking_metrics([catalogue[t] for t in top], [clicked[u] - seen.get(u, set()) for u in users], (10, 50))


def run(quick: bool, out: Path) -> dict[str, Any]:
    import torch

    import distill
    from distill.results import t_interval, verdict_word
    from distill.retrieval import retrieval_metrics
    seeds = [0] if quick else [0, 1, 2]
    variants = ["no sequence", "mean"] if quick else list(ENCODERS)
    got: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, common.Stopwatch() as total:
        tables = movielens_next_item(8_000 if quick else RATINGS, max_len=MAX_LEN)
        common.write_parquet_splits(Path(tmp) / "data", tables)
        popular = popularity_reference(tables["train"], tables["test"])
        for v in variants:
            with common.Stopwatch() as clock:
                for seed in seeds:
                    raw = two_tower_config(Path(tmp) / "data", v, epochs=2 if quick else EPOCHS)
                    raw["train"]["seed"] = seed
                    r = distill.train(distill.config_from_dict(raw), output=Path(tmp) / f"run-{v}-{seed}", overwrite=True, quiet=True)
                    ret = retrieval_metrics(r)
                    got[v].append({role: {"catalogue": ret["catalogue"][role], "test": r.metrics[role]["test"],
                                          "valid": r.metrics[role]["valid"]} for role in ROLES}
                                  | {"teacher": {"test": r.metrics["teacher"]["test"]},
                                     "users": ret["users"], "items": ret["items"]})
            seconds[v] = clock.seconds
    if quick:
        return {"quick": True, "got": got}
    rows = []
    for v in variants[1:]:
        for role in ROLES:
            for where, m in MEASURES:
                gain, low, high = t_interval([a[role][where][m] - b[role][where][m] for a, b in zip(got[v], got["no sequence"])])
                rows.append({"variant": v, "role": role, "metric": m, "gain": gain, "low": low, "high": high,
                             "verdict": verdict_word(low, high, m)})
    for v in variants:  # within each variant: what distillation adds to the two-tower
        for where, m in MEASURES:
            gain, low, high = t_interval([x["student"][where][m] - x["baseline"][where][m] for x in got[v]])
            rows.append({"variant": v, "role": "student − baseline", "metric": m, "gain": gain, "low": low, "high": high,
                         "verdict": verdict_word(low, high, m)})
    summary = {"got": got, "rows": rows, "popular": popular, "seconds": total.seconds, "variant_seconds": seconds,
               "capability": torch.backends.cpu.get_cpu_capability(), "sizes": {k: t.num_rows for k, t in tables.items()}}
    common.write_results(out, NAME, markdown(summary), rows)
    return summary


def check(summary: dict[str, Any]) -> list[str]:
    return [f"{v}: {role} {where} {m} is {x[role][where][m]}"
            for v, xs in summary["got"].items() for x in xs for role in ROLES
            for where, m in (("catalogue", "recall@10"), ("valid", "auc")) if not np.isfinite(x[role][where][m])]


def markdown(s: dict[str, Any]) -> str:
    got = s["got"]
    mean = lambda v, role, where, m: np.mean([x[role][where][m] for x in got[v]])  # noqa: E731
    level = common.md_table(["variant (user tower)", "model"] + [f"{m}" for _, m in MEASURES],
                            [[v, ROLES[role]] + [f"{mean(v, role, w, m):.4f}" for w, m in MEASURES]
                             for v in got for role in ROLES])
    cell = lambda r: f"{r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]"  # noqa: E731
    paired = common.md_table(["variant vs no sequence", "model", "metric", "gain [95% interval]", "verdict"],
                             [[r["variant"], ROLES[r["role"]], r["metric"], cell(r), r["verdict"]]
                              for r in s["rows"] if r["role"] in ROLES])
    distil = common.md_table(["user tower", "metric", "distilled − alone [95% interval]", "verdict"],
                             [[r["variant"], r["metric"], cell(r), r["verdict"]] for r in s["rows"] if r["role"] not in ROLES])
    teacher = ", ".join(f"{v} {np.mean([x['teacher']['test']['auc'] for x in got[v]]):.4f}" for v in got)
    first = got["no sequence"][0]
    z = s["sizes"]
    times = ", ".join(f"{v} {t:.0f} s" for v, t in s["variant_seconds"].items())
    return f"""# The sequence in a two-tower student's user tower: retrieval on MovieLens-100k next-item

Command: `nice -n 5 python -m benchmarks.{NAME}` (1 thread). 3 seeds (train.seed 0, 1, 2); each variant trained as
sync PFD (teacher `dnn` on all features, the same history encoder; the distilled two-tower and the two-tower alone
in one run), then served as a retriever by `distill.retrieval.retrieval_metrics` (as `distill evaluate
--retrieval`): {first['items']:,} catalogue items ranked for each of {first['users']:,} test users by the inner product of
the towers, the user tower's input the user's first test row (its `hist`: the movies rated before it), the user's
training positives excluded. Random recall@10 ≈ {10 / first['items']:.4f}; the catalogue ranked by training popularity
alone (the same for every user, same protocol): recall@10 {s['popular']['recall@10']:.4f}, recall@50
{s['popular']['recall@50']:.4f}, NDCG@10 {s['popular']['ndcg@10']:.4f}.

Mean over the seeds (catalogue ranking; AUC on the test rows):

{level}
Against "no sequence", the same role, paired by seed (`distill.results.t_interval` / `verdict_word`):

{paired}
Within each variant, the distilled two-tower against the two-tower alone, paired by seed:

{distil}
Teacher test AUC (dnn, all features): {teacher}.

**Data**: `benchmarks.sequence_next_item`'s (train {z['train']:,}, valid {z['valid']:,}, test {z['test']:,} rows).
**Models**: two-tower (hidden 64, towers of 32, embeddings 16), user tower {', '.join(USER)} (+ `hist`), item tower
item_id, item_genres; teacher 64-32 dropout 0.2; λ = 0.8, Adam lr 0.01, batches of 1024, up to {EPOCHS} epochs, early
stopping on validation AUC (patience 2). Not tuned.

Wall time: {s['seconds']:.0f} s ({times}); `torch.backends.cpu.get_cpu_capability()` = `{s['capability']}`.
{common.environment_note()}
"""


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, __doc__.splitlines()[0], run, check))
