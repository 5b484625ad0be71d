import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from distill import metrics


def test_auc_matches_sklearn_with_ties():
    r = np.random.default_rng(0)
    y = r.integers(0, 2, 2000)
    s = np.round(r.normal(size=2000) + 0.7 * y, 1)  # rounding makes many ties
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_example():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 → ½, 0.4>0.1) = 3.5/4
    assert metrics.auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(0.875)


def test_gauc_is_impression_weighted_mean_of_group_aucs_skipping_one_class_groups():
    r = np.random.default_rng(1)
    g = r.integers(0, 25, 3000)
    y = r.integers(0, 2, 3000)
    y[g == 3] = 1  # a group with one class is skipped
    s = r.normal(size=3000) + y * (g % 5) * 0.2
    num = den = 0.0
    for k in np.unique(g):
        m = g == k
        if len(set(y[m])) == 2:
            num += roc_auc_score(y[m], s[m]) * m.sum()
            den += m.sum()
    assert metrics.gauc(y, s, g) == pytest.approx(num / den, abs=1e-12)


def test_compute_per_task():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.7, 0.4, 0.1])
    m = metrics.compute("binary", y, p)
    assert m["logloss"] == pytest.approx(log_loss(y, p))
    assert m["accuracy"] == 0.75
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    mc = metrics.compute("multiclass", np.array([0, 0]), probs)
    assert mc["accuracy"] == 0.5 and mc["logloss"] == pytest.approx(-(np.log(0.7) + np.log(0.2)) / 2)
    reg = metrics.compute("regression", np.array([1.0, 3.0]), np.array([2.0, 3.0]))
    assert reg["rmse"] == pytest.approx(np.sqrt(0.5)) and reg["mae"] == pytest.approx(0.5)
