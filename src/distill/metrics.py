"""Evaluation metrics on numpy arrays. AUC and GAUC are rank statistics (ties count one half).

GAUC is the impression-weighted mean of per-group AUCs over groups that have both classes (the
definition used in the PFD and DIN papers).
"""
from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = {"auc": True, "gauc": True, "accuracy": True, "logloss": False, "rmse": False, "mae": False}
# ndcg@k and recall@k (any k) are higher-is-better too: every reader uses HIGHER_IS_BETTER.get(name, True)


def _grouped_auc(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group AUC via the Mann-Whitney U statistic; returns (auc per group, rows per group)."""
    order = np.lexsort((score, group))
    g, s, t = group[order], score[order], y[order]
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos = np.arange(n) - group_start + 1.0  # 1-based rank inside the group
    tie_id = np.cumsum(new_tie) - 1
    tie_rank = np.bincount(tie_id, weights=pos) / np.bincount(tie_id)  # average rank of each tie run
    rank = tie_rank[tie_id]
    gid = np.cumsum(new_group) - 1
    n_pos = np.bincount(gid, weights=t)
    n_all = np.bincount(gid).astype(float)
    n_neg = n_all - n_pos
    rank_pos = np.bincount(gid, weights=rank * t)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return auc, n_all


def auc(y: np.ndarray, score: np.ndarray) -> float:
    a, _ = _grouped_auc(np.asarray(y, float), np.asarray(score, float), np.zeros(len(y), np.int64))
    return float(a[0])


def gauc(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    a, n = _grouped_auc(np.asarray(y, float), np.asarray(score, float), np.asarray(group))
    ok = np.isfinite(a)
    return float((a[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")


def ranking_at_k(y: np.ndarray, score: np.ndarray, group: np.ndarray, k: int) -> tuple[float, float]:
    """(NDCG@k, recall@k) per group, averaged over the groups with at least one positive (a group
    without one has nothing to find). Relevance is the label (0/1 clicks; graded labels work too).

    - NDCG@k = DCG@k / IDCG@k, DCG@k = Σ_{r ≤ k} rel_r / log2(r + 1) over the group's rows sorted by
      score (ties broken by file order, the first row first); IDCG@k is the DCG of the best order.
    - recall@k = positives in the top k / min(k, positives): 1 when the top k is as full of
      positives as it can be (so a group with more than k positives can still reach 1).
    """
    y, score, group = np.asarray(y, float), np.asarray(score, float), np.asarray(group)
    n = len(y)
    if n == 0:
        return float("nan"), float("nan")
    order = np.lexsort((np.arange(n), -score, group))  # by group, best score first, then file order
    g, rel = group[order], y[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    gid = np.cumsum(new_group) - 1
    start = np.flatnonzero(new_group)[gid]
    rank = np.arange(n) - start  # 0-based rank within the group
    top = rank < k
    disc = 1.0 / np.log2(rank + 2.0)
    dcg = np.bincount(gid, weights=rel * disc * top)
    ideal = rel[np.lexsort((-rel, gid))]  # each group's labels, best first (gid is sorted)
    idcg = np.bincount(gid, weights=ideal * disc * top)
    positives = np.bincount(gid, weights=(rel > 0).astype(float))
    hits = np.bincount(gid, weights=(rel > 0) * top)
    ok = positives > 0
    if not ok.any():
        return float("nan"), float("nan")
    return float((dcg[ok] / idcg[ok]).mean()), float((hits[ok] / np.minimum(k, positives[ok])).mean())


def binary_logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def compute(task: str, y: np.ndarray, pred: np.ndarray, group: np.ndarray | None = None,
            ks: tuple[int, ...] | list[int] = (10,)) -> dict[str, float]:
    """All metrics that fit the task. `pred` is a probability (binary), class probabilities
    (multiclass, (N, C)) or a value (regression), on the label's own scale. With `group` (binary),
    also GAUC and NDCG@k / recall@k per group for each k of `ks` (task.ranking_k)."""
    if task == "binary":
        out = {"auc": auc(y, pred), "logloss": binary_logloss(y, pred), "accuracy": float(((pred > 0.5) == (y > 0.5)).mean())}
        if group is not None:
            out["gauc"] = gauc(y, pred, group)
            for k in ks:
                out[f"ndcg@{k}"], out[f"recall@{k}"] = ranking_at_k(y, pred, group, k)
        return out
    if task == "multiclass":
        p = np.clip(pred[np.arange(len(y)), y], 1e-7, 1.0)
        return {"accuracy": float((pred.argmax(1) == y).mean()), "logloss": float(-np.log(p).mean())}
    err = pred - y
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean())}


def default_metric(task: str) -> str:
    return {"binary": "auc", "multiclass": "accuracy", "regression": "rmse"}[task]
