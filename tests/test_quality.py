"""Where the effect is real, distillation must show it: a clean privileged signal (Lopez-Paz et al.
2016, experiment 1: x* = ⟨α, x⟩, y = 1[x* + ε > 0]) makes the distilled student beat the student
trained alone on few samples."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import cfg_of
from distill.run import train

D = 20


def write(path, n, alpha, rng):
    x = rng.normal(size=(n, D))
    xs = x @ alpha
    y = (xs + rng.normal(size=n) > 0).astype(np.int64)
    cols = {f"x{j}": x[:, j] for j in range(D)} | {"xs": xs, "y": y}
    pq.write_table(pa.table(cols), path)


def test_clean_privileged_signal_makes_the_distilled_student_beat_the_baseline(tmp_path):
    gains, teacher_acc = [], []
    for rep in range(3):
        rng = np.random.default_rng(rep)
        alpha = rng.normal(size=D)
        d = tmp_path / str(rep)
        d.mkdir()
        write(d / "train.parquet", 60, alpha, rng)
        write(d / "test.parquet", 3000, alpha, rng)
        raw = {
            "data": {"train": str(d / "train.parquet"), "test": str(d / "test.parquet")},
            "task": {"type": "binary", "label": "y"},
            "features": [{"name": f"x{j}", "type": "numeric"} for j in range(D)]
                        + [{"name": "xs", "type": "numeric", "privileged": True}],
            "teacher": {"model": "dnn", "hidden": [], "features": "privileged"},  # LUPI: logistic regression on x*
            "student": {"model": "dnn", "hidden": []},  # logistic regression on x
            "distillation": {"mode": "async", "weight": 1.0, "temperature": 1.0},
            "train": {"epochs": 150, "batch_size": 60, "lr": 0.05, "seed": rep, "early_stopping": None},
            "output": str(d / "run"),
        }
        m = train(cfg_of(raw), quiet=True).metrics
        gains.append(m["student"]["test"]["accuracy"] - m["baseline"]["test"]["accuracy"])
        teacher_acc.append(m["teacher"]["test"]["accuracy"])
    assert min(teacher_acc) > 0.85
    assert all(g > 0 for g in gains), gains
    assert np.mean(gains) > 0.02, gains
