"""Several teachers under torchrun, resumed from a checkpoint, and in the report (issue 16 §4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file

from conftest import cfg_of, train_interrupted
from distill.config import load_config
from distill.demo import DEMO_CONFIG, make_log
from distill.run import train


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A reduced demo log (2,000 training rows) with two small teachers (pfd, md) and a gate."""
    d = tmp_path_factory.mktemp("teachers")
    for name, n, seed in (("train", 2000, 1), ("valid", 800, 2), ("test", 800, 3)):
        pq.write_table(make_log(n, seed, n_users=200, n_items=100), d / f"{name}.parquet")
    raw = yaml.safe_load(DEMO_CONFIG.replace("{data}", str(d)))
    teacher = raw.pop("teacher") | {"hidden": [16], "dropout": 0.0}  # no dropout: updates can be compared
    raw["teachers"] = {"pfd": teacher, "md": teacher | {"features": "serving"}}
    raw["student"]["hidden"] = [16]
    raw["distillation"].update(mode="async", ensemble={"type": "gate"})
    raw["train"].update(epochs=2, batch_size=256, lr=0.003, baseline=False, threads=1)
    return d, raw


def close(a, b, tol=1e-3) -> bool:
    x, y = load_file(a), load_file(b)
    return set(x) == set(y) and max((x[k] - y[k]).abs().max().item() for k in x) < tol


def test_several_teachers_and_their_gate_train_under_torchrun_like_one_process(demo):
    d, raw = demo
    path = d / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    single = train(load_config(path), output=d / "single", quiet=True)  # the file's order of teachers
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distill", "train", str(path), "-q", "--no-report", "--output", str(d / "two")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    two = d / "two"
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    # the global batch is the batch: each teacher, the gate (its gradient averaged over the ranks'
    # halves, as every model's) and the student make the one-process run's updates
    for name in ("teacher.pfd", "teacher.md", "gate", "student"):
        assert close(two / f"{name}.safetensors", single.path / f"{name}.safetensors"), name


@pytest.mark.parametrize("mode, phase", [("sync", "sync"), ("async", "student")])
def test_several_teachers_resume_bit_identically(demo, tmp_path, mode, phase):
    """Interrupted mid-phase (async: in the student's phase, after the teachers and the gate), resumed:
    the metrics of every teacher, the ensemble and the student, and the gate, are the uninterrupted run's."""
    _, raw = demo
    raw = json.loads(json.dumps(raw))
    raw["distillation"]["mode"] = mode
    raw["train"].update(checkpoint_every=3, epochs=2)
    reference = train(cfg_of(raw), output=tmp_path / "ref", quiet=True)
    train_interrupted(raw, tmp_path / "run", steps=10, phase=phase)
    resumed = train(cfg_of(raw), output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics == reference.metrics and {"teacher:pfd", "teacher:md", "ensemble"} <= set(resumed.metrics)
    assert load_file(resumed.path / "gate.safetensors") .keys() == load_file(reference.path / "gate.safetensors").keys()
    assert close(resumed.path / "gate.safetensors", reference.path / "gate.safetensors", tol=0.0 + 1e-12)


def test_the_report_lists_each_teacher_the_ensemble_and_the_student(tmp_path):
    from typer.testing import CliRunner

    from conftest import base_config
    from distill.cli import app
    raw = base_config(tmp_path, distillation={"mode": "async", "weight": 0.5, "ensemble": {"type": "gate", "fit_on": "valid"}})
    teacher = raw.pop("teacher")
    raw["teachers"] = {"pfd": teacher, "md": {**teacher, "features": "serving"}}
    raw["train"]["epochs"] = 1
    run = train(cfg_of(raw), quiet=True)
    r = CliRunner().invoke(app, ["report", str(run.path)])
    assert r.exit_code == 0, r.output
    md = (run.path / "report" / "report.md").read_text()
    assert "teacher `pfd` (`dnn`) on 6 features (2 privileged: intent, dwell)" in md
    assert "teacher `md` (`dnn`) on 4 features;" in md and "a learned gate fitted on the validation split" in md
    for row in ("| teacher:pfd | test |", "| teacher:md | test |", "| ensemble | test |", "| student | test |"):
        assert row in md
