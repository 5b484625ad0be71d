"""Retrieval metrics of a two-tower student: every item of the catalogue ranked for each user by the
inner product of the towers (exact, in batches), and beside it each model's ranking of the logged
candidates alone. For grouped data (task.group = the user column), binary labels.

Definitions (README, "Serving the two-tower student as a retriever"):
  catalogue   every distinct item id of train ∪ test; an item's features are those of its first row
              (train first). Item vectors come from the item tower.
  query       a user of the test split: the user tower's features of the user's first test row
              (a context feature such as the hour is that row's).
  positives   the distinct items the user clicked in test, less those the user clicked in train;
              users left with none are not counted.
  excluded    the items the user clicked in train are removed from the user's ranking (they are
              known already; the usual protocol for implicit feedback).
  recall@k    |top-k ∩ positives| / |positives|, averaged over users.
  NDCG@k      Σ_{rank r ≤ k, item ∈ positives} 1/log2(r + 1) / Σ_{r ≤ min(k, |positives|)} 1/log2(r + 1).
  logged      the same two metrics when a model ranks only the user's logged test rows by its score
              (the positives: the clicked rows); the teacher can only be measured this way, since it
              needs privileged columns that exist for logged impressions only.

    >>> retrieval_metrics(load_run("runs/demo/compare/seed_0"))          # doctest: +SKIP
    {"catalogue": {"student": {"recall@10": ..., "ndcg@10": ..., ...}, "baseline": {...}},
     "logged": {"teacher": {...}, "student": {...}, "baseline": {...}}, "items": 800, "users": 612}
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from distill.errors import DistillError

KS = (10, 50)


def dcg_discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # rank 1 → 1, rank 2 → 1/log2(3), ...


def ranking_metrics(ranked: list[np.ndarray], positives: list[set], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """recall@k and NDCG@k averaged over queries: `ranked[q]` the item ids in ranked order (at
    least the top max(ks)), `positives[q]` the relevant ids (non-empty)."""
    out: dict[str, list[float]] = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg")}
    for order, pos in zip(ranked, positives):
        for k in ks:
            hits = np.array([item in pos for item in order[:k]], dtype=float)
            out[f"recall@{k}"].append(hits.sum() / len(pos))
            ideal = dcg_discounts(min(k, len(pos))).sum()
            out[f"ndcg@{k}"].append(float((hits * dcg_discounts(k)[:len(hits)]).sum() / ideal))
    return {m: float(np.mean(v)) if v else float("nan") for m, v in out.items()}


def top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, excluded: list[np.ndarray], k: int,
          batch: int = 1024) -> np.ndarray:
    """(Q, k) indices into the catalogue, by exact inner product, best first; `excluded[q]` (indices)
    never appear. Scored `batch` users at a time, so memory is batch × catalogue."""
    k = min(k, item_vectors.shape[0])
    out = np.empty((user_vectors.shape[0], k), dtype=np.int64)
    for start in range(0, user_vectors.shape[0], batch):
        scores = user_vectors[start:start + batch] @ item_vectors.T  # (b, items), float32
        for j, ex in enumerate(excluded[start:start + batch]):
            scores[j, ex] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[start:start + len(scores)] = np.take_along_axis(part, order, 1)
    return out


def _clicked(users: np.ndarray, items: np.ndarray, y: np.ndarray) -> dict[Any, set]:
    out: dict[Any, set] = {}
    for u, i, c in zip(users, items, y):
        if c:
            out.setdefault(u, set()).add(i)
    return out


def check_retrieval(cfg: Any) -> None:
    """What the retrieval metrics need of a config, refused before anything trains."""
    if cfg.task.type != "binary" or not cfg.task.group:
        raise DistillError("--retrieval: needs a binary task with task.group set to the user column")
    if not cfg.data.test:
        raise DistillError("--retrieval: the config has no data.test split to rank for")
    if cfg.student.model != "two_tower":
        raise DistillError(f"--retrieval: student.model is {cfg.student.model}; the catalogue is ranked by a two_tower student")


def retrieval_metrics(run: Any, ks: tuple[int, ...] = KS, train: pa.Table | None = None,
                      test: pa.Table | None = None, id_column: str | None = None) -> dict[str, Any]:
    """The catalogue metrics of each two-tower model of `run` (a loaded `Run`) and the logged-candidate
    metrics of every model, on the run's test split (or `test`), catalogue from train ∪ test."""
    from distill.data.io import read_table
    from distill.models.two_tower import tower_split
    from distill.serving.towers import run_vectors
    cfg = run.config
    group, label = cfg.task.group, cfg.task.label
    if cfg.task.type != "binary" or not group:
        raise DistillError("--retrieval: needs a binary task with task.group set to the user column")
    if test is None:
        if not cfg.data.test:
            raise DistillError("--retrieval: the run has no data.test split to rank for")
        test = read_table(cfg.data.test, cfg.data.format)
    train = train if train is not None else read_table(cfg.data.train, cfg.data.format)
    towers = {r: t for r in ("student", "baseline") if r in run.models
              and (t := tower_split(run.models[r], run.features[r]))}
    if not towers:
        raise DistillError("--retrieval: the run has no two_tower student or baseline (student.model: two_tower)")
    split = next(iter(towers.values()))
    id_column = id_column or ("item_id" if "item_id" in split["item"] else split["item"][0])
    for name, t in (("data.train", train), ("data.test", test)):
        for c in (group, label, id_column):
            if c not in t.column_names:
                raise DistillError(f"{name}: missing column '{c}' (needed to rank items per user)")

    # the catalogue: one row per distinct item id, train first
    both = pa.concat_tables([train.select(split["item"] + [c for c in [id_column] if c not in split["item"]]),
                             test.select(split["item"] + [c for c in [id_column] if c not in split["item"]])],
                            promote_options="permissive")
    ids = both[id_column].to_numpy(zero_copy_only=False)
    catalogue, first = np.unique(ids, return_index=True)
    items = both.take(pa.array(first))
    index = {v: j for j, v in enumerate(catalogue)}

    seen = _clicked(train[group].to_numpy(zero_copy_only=False), train[id_column].to_numpy(zero_copy_only=False),
                    train[label].to_numpy(zero_copy_only=False))
    tu, ti = test[group].to_numpy(zero_copy_only=False), test[id_column].to_numpy(zero_copy_only=False)
    ty = test[label].to_numpy(zero_copy_only=False)
    clicked = _clicked(tu, ti, ty)
    users = [u for u in dict.fromkeys(tu) if clicked.get(u, set()) - seen.get(u, set())]
    first_row = {}
    for r, u in enumerate(tu):
        first_row.setdefault(u, r)
    queries = test.take(pa.array([first_row[u] for u in users], pa.int64()))
    positives = [clicked[u] - seen.get(u, set()) for u in users]
    excluded = [np.array([index[i] for i in seen.get(u, ())], dtype=np.int64) for u in users]

    out: dict[str, Any] = {"catalogue": {}, "logged": {}, "items": len(catalogue), "users": len(users), "ks": list(ks)}
    for role in towers:
        uv = run_vectors(run, role, "user", queries, "test")
        iv = run_vectors(run, role, "item", items, "catalogue")
        top = top_k(uv, iv, excluded, max(ks))
        out["catalogue"][role] = ranking_metrics([catalogue[t] for t in top], positives, ks)

    # each model on the logged candidates only: the user's test rows ranked by its score
    rows_of: dict[Any, list[int]] = {}
    for r, u in enumerate(tu):
        rows_of.setdefault(u, []).append(r)
    logged_users = [u for u in rows_of if ty[rows_of[u]].any()]
    for role in run.models:
        missing = [n for n in run.features[role] if n not in test.column_names]
        if missing:
            continue
        score = run.predict(test, role)
        ranked, pos = [], []
        for u in logged_users:
            rows = np.array(rows_of[u])
            ranked.append(rows[np.argsort(-score[rows], kind="stable")])
            pos.append(set(rows[ty[rows] == 1].tolist()))
        out["logged"][role] = ranking_metrics(ranked, pos, ks)
    out["logged_users"] = len(logged_users)
    return out


# ----------------------------------------------------------------------------- a run or a compare, and its table


def evaluate_retrieval(path: Any) -> dict[str, Any]:
    """`distill evaluate --retrieval`: a run directory → {"retrieval": metrics}; a compare directory
    (seed_* runs) → {"seeds": [...], "retrieval": the mean per seed, "verdict": student vs baseline}."""
    from pathlib import Path

    from distill.results import verdicts
    from distill.run import load_run
    path = Path(path)
    seeds = sorted(path.glob("seed_*"), key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else 0)
    if (path / "config.yaml").is_file() or not seeds:
        return {"retrieval": retrieval_metrics(load_run(path))}
    per_seed = [retrieval_metrics(load_run(s)) for s in seeds]
    out: dict[str, Any] = {"seeds": per_seed, "verdict": {}}
    for kind in ("catalogue", "logged"):
        rows = [{role: {"test": m} for role, m in s[kind].items()} for s in per_seed]
        out["verdict"][kind] = verdicts(rows, "test")
    out["retrieval"] = {kind: {role: {m: float(np.mean([s[kind][role][m] for s in per_seed])) for m in ms}
                               for role, ms in per_seed[0][kind].items()} for kind in ("catalogue", "logged")}
    return out


def retrieval_tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) per table: each kind of ranking (mean over seeds for a compare), then
    student − baseline with its 95% interval and verdict where there are seeds enough."""
    from distill.results import interval_text
    r = result["retrieval"]
    n = len(result.get("seeds", [])) or 1
    out = []
    for kind, what in (("catalogue", "the whole catalogue ranked by ⟨user tower, item tower⟩"),
                       ("logged", "each user's logged test candidates ranked by the model's score")):
        if not r[kind]:
            continue
        metrics = list(next(iter(r[kind].values())))
        rows = [[role, *(f"{m[k]:.4f}" for k in metrics)] for role, m in r[kind].items()]
        v = result.get("verdict", {}).get(kind, {}).get("metrics", {})
        if v:
            rows.append(["student − baseline [95% interval]", *(interval_text(v[k]) if k in v else "–" for k in metrics)])
            rows.append(["verdict", *(str(v[k]["verdict"]) if k in v else "–" for k in metrics)])
        out.append((f"{what} (mean over {n} seed(s))", ["model", *metrics], rows))
    return out


def retrieval_note(result: dict[str, Any]) -> str:
    s = result["seeds"][0] if "seeds" in result else result["retrieval"]
    return (f"{s['users']:,} test users with a click not seen in train, {s['items']:,} items in the catalogue"
            + (f"; interval: {result['verdict']['catalogue'].get('method', '')}" if "verdict" in result else ""))


def retrieval_markdown(result: dict[str, Any], title: str) -> str:
    """The metrics as Markdown tables (mean over seeds for a compare), with the verdicts there are."""
    lines = [f"## Retrieval: {title}", ""]
    for caption, header, rows in retrieval_tables(result):
        lines += [caption, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines.append(retrieval_note(result))
    return "\n".join(lines)
