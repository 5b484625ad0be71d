"""distill.results: the paired interval, the bootstrap, the verdict words, the gap, and what is left out."""
import math
import time

import numpy as np
import pytest

from distill import metrics, results
from distill.compare import summarize, to_markdown


def test_t_interval_matches_a_hand_computation():
    d = [0.01, 0.02, 0.03, 0.00]
    mean, low, high = results.t_interval(d)
    sd = math.sqrt((0.005 ** 2 * 2 + 0.015 ** 2 * 2) / 3)  # sample sd, n − 1 = 3
    half = 3.182 * sd / math.sqrt(4)  # t_{0.975, 3}
    assert mean == pytest.approx(0.015) and low == pytest.approx(0.015 - half) and high == pytest.approx(0.015 + half)
    assert results.t975(3) == 3.182 and results.t975(35) == 2.042 and results.t975(500) == 1.960


def test_verdict_words_follow_the_metric_direction():
    assert results.verdict_word(0.01, 0.02, "auc") == results.GAIN
    assert results.verdict_word(-0.02, -0.01, "auc") == results.HARM
    assert results.verdict_word(-0.01, 0.02, "auc") == results.NO_GAIN == "no gain (within noise)"
    assert results.verdict_word(-0.02, -0.01, "logloss") == results.GAIN  # lower logloss is better
    assert results.verdict_word(0.01, 0.02, "rmse") == results.HARM


def _binary(n=400, seed=0):
    r = np.random.default_rng(seed)
    y = (r.random(n) < 0.4).astype(float)
    score = np.round(r.random(n) * 0.6 + 0.4 * y, 2)  # rounded: many ties
    group = r.integers(0, 25, n)
    return y, score, group


def test_resampled_metrics_equal_the_metrics_on_the_resampled_rows():
    y, s, g = _binary()
    counts = np.random.default_rng(1).multinomial(len(y), np.full(len(y), 1 / len(y)), size=3).astype(float)
    got = results.resampled_metrics("binary", y, s, g, counts)
    for k in range(3):
        rows = np.repeat(np.arange(len(y)), counts[k].astype(int))
        want = metrics.compute("binary", y[rows], s[rows], g[rows])
        for m in want:
            if m.startswith(("ndcg@", "recall@")):  # not resampled: with < 3 seeds they get no interval
                continue
            assert got[m][k] == pytest.approx(want[m]), m
    r = np.random.default_rng(2)
    probs = r.dirichlet(np.ones(3), 200)
    yc = r.integers(0, 3, 200)
    got = results.resampled_metrics("multiclass", yc, probs, None, np.ones((1, 200)))
    assert {m: got[m][0] for m in got} == pytest.approx(metrics.compute("multiclass", yc, probs))
    yr, pr = r.normal(size=200), r.normal(size=200)
    got = results.resampled_metrics("regression", yr, pr, None, np.ones((1, 200)))
    assert {m: got[m][0] for m in got} == pytest.approx(metrics.compute("regression", yr, pr))


def test_bootstrap_known_cases():
    y, s, g = _binary()
    same = results.bootstrap([{"y": y, "group": g, "student": s, "baseline": s.copy()}], "binary", resamples=200)
    assert np.all(same["student"]["auc"] == same["baseline"]["auc"])  # paired: identical models differ by 0
    noise = np.random.default_rng(5).random(len(y))
    better = results.bootstrap([{"y": y, "student": s, "baseline": noise}], "binary", resamples=200)
    diff = better["student"]["auc"] - better["baseline"]["auc"]
    assert np.percentile(diff, 2.5) > 0.1  # a scorer that sees the label beats noise in every resample
    assert np.std(better["student"]["auc"]) > 0  # the resamples differ


def test_bootstrap_of_40k_rows_is_fast():
    r = np.random.default_rng(0)
    n = 40_000
    y = (r.random(n) < 0.3).astype(float)
    preds = {"y": y, "student": r.random(n) + 0.3 * y, "baseline": r.random(n) + 0.25 * y}
    t = time.perf_counter()
    out = results.bootstrap([preds], "binary", resamples=200)  # a fifth of what the verdict draws
    assert len(out["student"]["auc"]) == 200
    assert time.perf_counter() - t < 10  # ~0.5 s alone; generous for a shared machine


def _seed_metrics(teacher, baseline, student, gauc=None):
    out = []
    for k in range(len(baseline)):
        row = {r: {"test": {"auc": v[k], "logloss": 0.5}} for r, v in
               (("teacher", teacher), ("baseline", baseline), ("student", student))}
        if gauc is not None:
            for r in row:
                row[r]["test"]["gauc"] = gauc
        out.append(row)
    return out


def test_teacher_no_better_instead_of_a_gap_percentage():
    per_seed = _seed_metrics(teacher=[0.705, 0.715, 0.712], baseline=[0.70, 0.72, 0.71], student=[0.72, 0.74, 0.73])
    summary = summarize(per_seed, "test", "auc")
    v = summary["verdict"]["metrics"]["auc"]
    assert v["verdict"] == "gain" and v["method"] == "seeds t-interval over 3 seeds"
    assert v["low"] > 0 and summary["gap_closed"]["auc"] is None
    md = to_markdown(summary)
    assert "teacher no better" in md and "%" not in md.split("| gap closed |")[1].splitlines()[0]
    assert summary["verdict"]["headline"].startswith("auc: gain; student − baseline +0.0200")

    clear = _seed_metrics(teacher=[0.80, 0.81, 0.80], baseline=[0.70, 0.72, 0.71], student=[0.75, 0.765, 0.755])
    s2 = summarize(clear, "test", "auc")
    assert s2["gap_closed"]["auc"] == pytest.approx((0.75667 - 0.71) / (0.80333 - 0.71), rel=1e-3)
    assert "gap closed 50%" in s2["verdict"]["headline"]


def test_a_metric_without_value_is_left_out_with_a_note():
    per_seed = _seed_metrics([0.8] * 3, [0.70, 0.72, 0.71], [0.72, 0.74, 0.73], gauc=float("nan"))
    summary = summarize(per_seed, "test", "auc")
    assert "gauc" in summary["verdict"]["left_out"] and "gauc" not in summary["verdict"]["metrics"]
    md = to_markdown(summary)
    assert "nan" not in md and "Left out: gauc: no group has both classes" in md
    header, rows = results.metric_rows(per_seed[0])
    assert "gauc" not in header  # the run table drops it too

    del per_seed[0]["baseline"]["test"]["gauc"]  # absent on one model
    assert "task.group" in summarize(per_seed, "test", "auc")["verdict"]["left_out"]["gauc"]


def test_one_seed_without_predictions_has_no_verdict():
    summary = summarize(_seed_metrics([0.8], [0.7], [0.75]), "test", "auc")
    assert summary["verdict"]["metrics"]["auc"]["verdict"] is None
    assert summary["verdict"]["headline"].startswith("auc: no verdict")


def test_one_seed_shows_its_values_not_a_zero_std_and_says_why_a_verdict_is_missing():
    md = to_markdown(summarize(_seed_metrics([0.8], [0.7], [0.75]), "test", "auc"))
    assert "one seed: its values" in md and "±" not in md and "| teacher | 0.8000 |" in md
    v = summarize(_seed_metrics([0.8], [0.7], [0.75]), "test", "auc")
    v["verdict"]["metrics"]["auc"].update(low=0.01, high=0.09, verdict="gain")  # as the row bootstrap gives auc, not logloss
    assert "No interval for logloss: the " in to_markdown(v)  # the verdict row's "–" explained
    assert "No interval" not in md  # no metric has one: the method's own words say why
    three = to_markdown(summarize(_seed_metrics([0.8] * 3, [0.70, 0.72, 0.71], [0.72, 0.74, 0.73]), "test", "auc"))
    assert "3 seed(s), mean ± std" in three and "No interval" not in three  # more seeds: as before


def test_a_corrupt_predictions_file_is_one_clear_error(tmp_path):
    (tmp_path / results.PREDICTIONS).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(results.DistillError, match="test_predictions.npz: cannot read the test predictions"):
        results.read_predictions(tmp_path)
    assert results.read_predictions(tmp_path / "nowhere") is None
