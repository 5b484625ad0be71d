"""What the numbers say: the paired gain student − baseline with its 95% interval, one verdict word,
the share of the teacher–baseline gap closed, and the tables that show them. Used by `distill train`,
`distill compare` (compare.json / compare.md) and the report, so all three say the same thing.

The interval (README, "Reading the results: verdicts"):
  - over seeds (n >= 3): d_i = student_i − baseline_i on the same seed (same initialisation and data
    order); mean ± t_{0.975, n−1}·sd/√n;
  - fewer seeds (a single `train` run, `compare --seeds 2`): a paired bootstrap over test rows: the
    test rows are resampled with replacement (1,000 times, fixed seed), every metric is recomputed for
    student and baseline on the same resample (averaged over the seeds there are), and the interval is
    the 2.5 / 97.5 percentiles of the difference. Needs RUN/test_predictions.npz (written by `train`).
  - verdict: **gain** if the interval lies wholly on the better side of 0, **harm** if wholly on the
    worse side, otherwise **no gain (within noise)**.
  - gap closed = (student − baseline) / (teacher − baseline), only when teacher − baseline is itself
    beyond the noise on the better side; otherwise "teacher no better".

    >>> v = verdicts([json.load(open(f"runs/c/seed_{k}/metrics.json")) for k in range(5)], "test", "auc")  # doctest: +SKIP
    >>> v["headline"]
    'auc: gain; student − baseline +0.0123, 95% interval [+0.0081, +0.0165] (seeds t-interval over 5 seeds); gap closed 61%'
No torch here: this module reads JSON and numpy arrays only.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError
from distill.metrics import HIGHER_IS_BETTER, default_metric

GAIN, NO_GAIN, HARM = "gain", "no gain (within noise)", "harm"
TEACHER_NO_BETTER = "teacher no better"
MIN_SEEDS = 3  # below this the seeds say little about the noise: bootstrap the test rows instead
RESAMPLES = 1000
PREDICTIONS = "test_predictions.npz"

# two-sided 95% Student t quantiles t_{0.975, df} (scipy is not a dependency); a df between two
# entries uses the smaller df's value, which is larger, so the interval errs wide
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    if df > 120:
        return 1.960
    return T975[max(k for k in T975 if k <= df)]


def primary_metric(cfg: Any) -> str:
    """The metric the config optimises: train.early_stopping.metric (the keep-best metric), else the task's default."""
    es = cfg.train.early_stopping
    return (es.metric if es and es.metric else None) or default_metric(cfg.task.type)


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric, True)


# ----------------------------------------------------------------------------- intervals


def t_interval(diffs: list[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): mean ± t_{0.975, n−1}·sd/√n of paired differences (n >= 2)."""
    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def verdict_word(low: float, high: float, metric: str) -> str:
    """gain / harm / no gain (within noise), from the interval of student − baseline and the metric's direction."""
    better_low, better_high = (low, high) if higher_is_better(metric) else (-high, -low)
    if better_low > 0:
        return GAIN
    if better_high < 0:
        return HARM
    return NO_GAIN


def resampled_metrics(task: str, y: np.ndarray, pred: np.ndarray, group: np.ndarray | None,
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of `metrics.compute` on each resample at once. counts: (B, N), how often each test
    row was drawn in each of B resamples; returns metric -> (B,)."""
    return _on_resamples(_prepare(task, y, pred, group), counts)


def _prepare(task: str, y: np.ndarray, pred: np.ndarray, group: np.ndarray | None) -> dict[str, tuple[str, Any]]:
    """What each metric needs per row, computed once per model: a row value to average ("mean", and
    "rmse" for the root of a mean) or the sort plan of a rank statistic ("auc")."""
    if task == "binary":
        p = np.clip(pred, 1e-7, 1 - 1e-7)
        out = {"auc": ("auc", _auc_plan(y, pred, np.zeros(len(y), np.int64))),
               "logloss": ("mean", -(y * np.log(p) + (1 - y) * np.log(1 - p))),
               "accuracy": ("mean", ((pred > 0.5) == (y > 0.5)).astype(float))}
        if group is not None:
            out["gauc"] = ("auc", _auc_plan(y, pred, group))
        return out
    if task == "multiclass":
        yi = y.astype(np.int64)
        p = np.clip(pred[np.arange(len(yi)), yi], 1e-7, 1.0)
        return {"accuracy": ("mean", (pred.argmax(1) == yi).astype(float)), "logloss": ("mean", -np.log(p))}
    err = pred - y
    return {"rmse": ("rmse", err ** 2), "mae": ("mean", np.abs(err))}


def _on_resamples(prepared: dict[str, tuple[str, Any]], counts: np.ndarray,
                  int_counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    n = counts.sum(1)  # (B,) = N: a resample draws as many rows as the split has
    out = {}
    for name, (kind, x) in prepared.items():
        if kind == "auc":
            if int_counts is None:
                int_counts = counts.astype(np.int32)
            out[name] = _weighted_gauc(x, int_counts)
        else:
            m = counts @ x / n
            out[name] = np.sqrt(m) if kind == "rmse" else m
    return out


def _auc_plan(y: np.ndarray, score: np.ndarray, group: np.ndarray) -> dict[str, np.ndarray]:
    """Index arrays that turn row weights into a (G)AUC without sorting per resample.

    AUC = U / (P·Q) with U = Σ over positives i of w_i · (weight of negatives scored below i in its group,
    plus half of those tied with it). Negatives are sorted once by (group, score); for each positive,
    `lo` / `hi` are the positions of its group's negatives scored < / <= its score and `start` where its
    group's negatives begin, so the negatives' weight below it is a difference of one cumulative sum."""
    gid = np.unique(group, return_inverse=True)[1].ravel().astype(np.int64)
    pos = np.asarray(y) > 0.5
    both = (np.bincount(gid, weights=pos) > 0) & (np.bincount(gid, weights=~pos) > 0)
    keep = both[gid]  # groups with one class never have an AUC, in any resample
    rank = np.unique(score, return_inverse=True)[1].ravel().astype(np.int64)
    key = gid * (rank.max() + 1) + rank  # orders by (group, score), exactly
    neg = np.flatnonzero(keep & ~pos)
    neg = neg[np.argsort(key[neg], kind="stable")]
    ps = np.flatnonzero(keep & pos)
    ps = ps[np.argsort(gid[ps], kind="stable")]
    nkey = key[neg]
    lo, hi = np.searchsorted(nkey, key[ps], "left"), np.searchsorted(nkey, key[ps], "right")
    start = np.searchsorted(nkey, gid[ps] * (rank.max() + 1), "left")
    return {"neg": neg, "pos": ps, "lo": lo, "hi": hi, "start": start,
            "ties": bool((lo != hi).any()), "groups": bool(start.any()),  # skip the gathers that add nothing
            "pos_starts": np.flatnonzero(np.r_[True, gid[ps][1:] != gid[ps][:-1]]) if len(ps) else ps,
            "neg_starts": np.flatnonzero(np.r_[True, gid[neg][1:] != gid[neg][:-1]]) if len(neg) else neg}


def _weighted_gauc(plan: dict[str, np.ndarray], w: np.ndarray) -> np.ndarray:
    """metrics.gauc (metrics.auc for one group) with integer row weights w (B, N): per group the
    weighted Mann–Whitney U, averaged over groups with both classes, weighted by their rows. Returns (B,).
    In int32 (exact: a resample's weights sum to N) with int64 sums: half the memory traffic of floats."""
    if len(plan["pos"]) == 0:
        return np.full(len(w), np.nan)
    w = w.astype(np.int32, copy=False)
    wn, wp = w[:, plan["neg"]], w[:, plan["pos"]]  # (B, negatives), (B, positives)
    cum = np.zeros((len(w), wn.shape[1] + 1), np.int32)
    np.cumsum(wn, axis=1, dtype=np.int32, out=cum[:, 1:])
    below = cum[:, plan["lo"]]  # negatives scored below each positive, within its group
    scale = 1
    if plan["ties"]:  # ties count one half: (below + below-or-tied) / 2
        below += cum[:, plan["hi"]]
        scale = 2
    if plan["groups"]:
        below -= scale * cum[:, plan["start"]]
    u = np.add.reduceat(wp * below, plan["pos_starts"], axis=1, dtype=np.int64) / scale  # (B, G)
    p = np.add.reduceat(wp, plan["pos_starts"], axis=1, dtype=np.int64)
    q = np.add.reduceat(wn, plan["neg_starts"], axis=1, dtype=np.int64)
    ok = (p > 0) & (q > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(ok, u / (p * q), 0.0)
        return (auc * (p + q) * ok).sum(1) / ((p + q) * ok).sum(1)


def bootstrap(predictions: list[dict[str, np.ndarray]], task: str, resamples: int = RESAMPLES, seed: int = 0,
              chunk: int = 10) -> dict[str, dict[str, np.ndarray]]:
    """Paired bootstrap over test rows. predictions: one dict per seed with `y`, optional `group` and
    one output array per role (the same test rows in every seed). Returns role -> metric -> (resamples,)
    values, each the mean over seeds on the same resample, so differences between roles are paired."""
    first = predictions[0]
    y, group = first["y"], first.get("group")
    n = len(y)
    roles = [r for r in ("teacher", "student", "baseline") if r in first]
    prepared = {r: [_prepare(task, y, p[r], group) for p in predictions] for r in roles}
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, list[np.ndarray]]] = {r: {} for r in roles}
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        draws = rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]  # resample k's rows, offset by k·n
        ints = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.int32)  # (b, N)
        counts = ints.astype(float)
        for role in roles:
            per_seed = [_on_resamples(prep, counts, ints) for prep in prepared[role]]
            for m in per_seed[0]:
                parts[role].setdefault(m, []).append(np.mean([s[m] for s in per_seed], axis=0))
    return {r: {m: np.concatenate(v) for m, v in ms.items()} for r, ms in parts.items()}


def read_predictions(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # a truncated or foreign file
        raise DistillError(f"{path}: cannot read the test predictions ({e})") from None


# ----------------------------------------------------------------------------- verdicts


def verdicts(per_seed: list[dict[str, Any]], split: str, primary: str | None = None,
             predictions: list[dict[str, np.ndarray]] | None = None, task: str | None = None) -> dict[str, Any]:
    """The `verdict` entry of compare.json from each seed's metrics.json (and, for fewer than three
    seeds, each seed's test predictions). Per metric: gain, low, high, verdict, method, and the gap."""
    roles = [r for r in ("teacher", "student", "baseline") if r in per_seed[0]]
    if "student" not in roles or "baseline" not in roles:
        return {}
    names = list(per_seed[0]["student"][split])
    usable, left_out = [], {}
    for m in names:
        why = _no_value(m, [s[r][split] for s in per_seed for r in roles])
        if why:
            left_out[m] = why
        else:
            usable.append(m)
    seeds = len(per_seed)
    values = {r: {m: [s[r][split][m] for s in per_seed] for m in usable} for r in roles}
    boot = None
    if seeds < MIN_SEEDS and predictions and task and all(p is not None for p in predictions) and split == "test":
        boot = bootstrap(predictions, task)
        rows = len(predictions[0]["y"])
        method = f"paired bootstrap over {rows:,} test rows" + (f", {seeds} seeds averaged" if seeds > 1 else "")
    elif seeds >= MIN_SEEDS:
        method = f"seeds t-interval over {seeds} seeds"
    else:
        method = f"no interval: {seeds} seed(s) and no per-row test predictions"

    def interval(a: str, m: str) -> tuple[float, float | None, float | None]:
        d = np.subtract(values[a][m], values["baseline"][m])
        if boot is not None and m in boot[a]:
            diff = boot[a][m] - boot["baseline"][m]
            return float(d.mean()), float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))
        if seeds >= MIN_SEEDS:
            return t_interval(d)
        return float(d.mean()), None, None

    out: dict[str, Any] = {"method": method, "metrics": {}, "left_out": left_out}
    for m in usable:
        gain, low, high = interval("student", m)
        entry: dict[str, Any] = {"gain": gain, "low": low, "high": high,
                                 "verdict": None if low is None else verdict_word(low, high, m), "method": method}
        if "teacher" in roles:
            gap, glow, ghigh = interval("teacher", m)
            entry["teacher_gain"], entry["teacher_low"], entry["teacher_high"] = gap, glow, ghigh
            beats = glow is not None and verdict_word(glow, ghigh, m) == GAIN
            entry["gap_closed"] = gain / gap if beats else None
        out["metrics"][m] = entry
    primary = primary if primary in out["metrics"] else (usable[0] if usable else None)
    out["primary"] = primary
    out["headline"] = headline(out) if primary else "no metric with a value on every model"
    return out


def _no_value(metric: str, rows: list[dict[str, Any]]) -> str | None:
    """Why `metric` cannot be compared (absent or nan for some model), or None."""
    if any(metric not in r for r in rows):
        return "not computed for every model" + (" (task.group unset)" if metric == "gauc" else "")
    if any(not math.isfinite(r[metric]) for r in rows):
        return "no group has both classes (set task.group to a column with repeated groups)" if metric == "gauc" \
            else "no value (nan) for some model"
    return None


def gap_text(entry: dict[str, Any]) -> str:
    if "teacher_gain" not in entry or entry.get("teacher_low", 0.0) is None:
        return "–"  # no interval for the teacher's gain (e.g. ndcg@k under the bootstrap): no claim either way
    if entry["gap_closed"] is None:
        return TEACHER_NO_BETTER
    return f"{100 * entry['gap_closed']:.0f}%"


def interval_text(entry: dict[str, Any], key: str = "") -> str:
    g, lo, hi = entry[f"{key}gain"], entry[f"{key}low"], entry[f"{key}high"]
    return f"{g:+.4f}" if lo is None else f"{g:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def headline(v: dict[str, Any]) -> str:
    """One line on the primary metric, e.g. 'auc: gain; student − baseline +0.0123, 95% interval
    [+0.0081, +0.0165] (seeds t-interval over 5 seeds); gap closed 61%'."""
    m = v["primary"]
    e = v["metrics"][m]
    if e["low"] is None:
        line = f"{m}: no verdict; student − baseline {e['gain']:+.4f} ({v['method']})"
    else:
        line = (f"{m}: {e['verdict']}; student − baseline {e['gain']:+.4f}, 95% interval "
                f"[{e['low']:+.4f}, {e['high']:+.4f}] ({v['method']})")
    if "teacher_gain" in e and e.get("teacher_low", 0.0) is not None:
        line += f"; gap closed {gap_text(e)}" if e["gap_closed"] is not None else f"; {TEACHER_NO_BETTER}"
    return line


# ----------------------------------------------------------------------------- tables


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """compare.json as a table (header, rows) for compare.md and the report: mean ± std per model, then
    the gain with its interval, the verdict and the gap closed. Metrics without a value are left out."""
    v = summary.get("verdict") or {}
    left_out = v.get("left_out", {})
    names = [m for m in summary["student"] if m not in left_out]
    roles = [r for r in ("teacher", "baseline", "student") if r in summary]

    def cell(st: dict[str, Any]) -> str:  # one seed has no spread: its value alone, not "± 0.0000"
        return f"{st['mean']:.4f}" if summary.get("seeds") == 1 else f"{st['mean']:.4f} ± {st['std']:.4f}"
    rows = [[role if role != "teacher" or "teachers" not in summary else "ensemble"] +
            [cell(summary[role][m]) for m in names] for role in roles]
    rows = [[name] + [cell(stats[m]) if m in stats else "–" for m in names]
            for name, stats in summary.get("teachers", {}).items()] + rows  # several teachers: each one, before the ensemble
    if v.get("metrics"):
        rows.append(["**gain** (student − baseline)"] + [interval_text(v["metrics"][m]) for m in names])
        rows.append(["verdict"] + [v["metrics"][m]["verdict"] or "–" for m in names])
        if "teacher" in summary:
            rows.append(["gap closed"] + [gap_text(v["metrics"][m]) for m in names])
    return ["model"] + names, rows


def notes(v: dict[str, Any], metrics: list[str]) -> list[str]:
    """The lines under a table: direction of each metric, the method, and what was left out and why."""
    arrows = ", ".join(f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in metrics)
    out = [f"Better is: {arrows}. Gain = student − baseline, paired (same initialisation and data order), "
           f"with its 95% interval [low, high] ({v.get('method', 'no interval')}). Verdict: gain / harm when the "
           "interval excludes 0, else no gain (within noise). Gap closed = (student − baseline) / (teacher − "
           "baseline), shown only when the teacher beats the baseline beyond the noise."]
    gains = [m for m in metrics if (v.get("metrics") or {}).get(m, {}).get("gain") is not None]
    bare = [m for m in gains if v["metrics"][m].get("low") is None]
    if bare and len(bare) < len(gains):  # the row bootstrap of 1-2 seeds covers some metrics only: why their verdict is "–"
        out.append(f"No interval for {', '.join(bare)}: the {v.get('method', 'interval')} covers the others only; "
                   f"3 or more seeds give every metric a t-interval over seeds.")
    out += [f"Left out: {m}: {why}." for m, why in v.get("left_out", {}).items()]
    return out


def markdown(summary: dict[str, Any], title: str) -> str:
    """compare.md (also what `distill compare` prints)."""
    header, rows = summary_rows(summary)
    v = summary.get("verdict") or {}
    spread = "one seed: its values" if summary["seeds"] == 1 else f"{summary['seeds']} seed(s), mean ± std"
    lines = [f"# {title}", "", f"Split: **{summary['split']}**, {spread}.", ""]
    if v.get("headline"):
        lines += [f"**Verdict** — {v['headline']}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + notes(v, header[1:])
    return "\n".join(lines) + "\n"


def metric_rows(metrics: dict[str, dict[str, dict[str, Any]]], bold: tuple[str, str] = ("**", "**")) -> tuple[list[str], list[list[str]]]:
    """metrics.json (or Run.evaluate's result) as (header, rows): one row per model and split, and the
    point gain student − baseline per split. A metric with no value on any model is left out."""
    splits = [s for s in ("valid", "test", "train", "data") if any(s in v for v in metrics.values())]
    names: list[str] = []
    for by_split in metrics.values():
        for row in by_split.values():
            names += [k for k in row if k not in names and k != "skipped"]
    names = [n for n in names if any(_finite(row.get(n)) for by_split in metrics.values() for row in by_split.values())]
    rows = []
    for split in splits:
        many = [r for r in metrics if r.startswith("teacher:")] + (["ensemble"] if "ensemble" in metrics else [])
        for role in (*many, "teacher", "student", "baseline"):
            row = metrics.get(role, {}).get(split)
            if row is None:
                continue
            if "skipped" in row:
                rows.append([role, split, f"skipped: {row['skipped']}"] + [""] * (len(names) - 1))
                continue
            rows.append([role, split] + [f"{row[n]:.4f}" if _finite(row.get(n)) else "–" for n in names])
        s, b = metrics.get("student", {}).get(split), metrics.get("baseline", {}).get(split)
        if s and b and "skipped" not in s and "skipped" not in b:
            rows.append([f"{bold[0]}gain{bold[1]} (student − baseline)", split]
                        + [f"{s[n] - b[n]:+.4f}" if _finite(s.get(n)) and _finite(b.get(n)) else "–" for n in names])
    return ["model", "split"] + names, rows


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def run_verdict(run_dir: Path, metrics: dict[str, Any], primary: str, task: str) -> dict[str, Any]:
    """The verdict of one `train` run: a paired bootstrap over its test predictions ({} without a baseline)."""
    if "student" not in metrics or "baseline" not in metrics or "test" not in metrics["student"]:
        return {}
    return verdicts([with_reference(metrics)], "test", primary, [with_reference(read_predictions(run_dir))], task)


def with_reference(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """Several teachers: the gap closed is against their ensemble, so "ensemble" stands as the
    reference ("teacher") in the verdict; each teacher:<name> stays beside it."""
    if d is None or "ensemble" not in d:
        return d
    return {**d, "teacher": d["ensemble"]}
