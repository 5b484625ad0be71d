"""Long runs lose nothing: SIGKILL at an arbitrary step, resume, same result; corrupt checkpoints
are detected; divergence stops with the step and the term named and the last checkpoint intact."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import base_config, cfg_of
from distill.errors import DistillError
from distill.run import train


def config(tmp_path, mode="sync", **train_kw):
    raw = base_config(tmp_path, n_train=1200)
    raw["distillation"] = {"mode": mode, "weight": 0.5, "schedule": {"type": "linear", "steps": 20}}
    raw["teacher"]["dropout"] = 0.2  # RNG state matters: dropout masks must replay identically
    raw["student"]["dropout"] = 0.2
    raw["train"].update({"epochs": 3, "batch_size": 64, "checkpoint_every": 5, **train_kw})
    return raw


def steps_written(path):
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path, mode):
    raw = config(tmp_path, mode)
    reference = train(cfg_of(raw), output=tmp_path / "ref", quiet=True).metrics

    cfg_file = tmp_path / "c.yaml"
    raw["output"] = str(tmp_path / "killed")
    cfg_file.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "distill", "train", str(cfg_file), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed.partial" / "steps.jsonl"
    deadline = time.time() + 120
    target = 37 if mode == "sync" else 80  # mid-epoch; async: in the student phase
    while steps_written(log) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()  # nothing published half-done

    r = subprocess.run([sys.executable, "-m", "distill", "train", str(cfg_file), "-q", "--resume", str(tmp_path / "killed")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed == reference  # bit-identical metrics
    steps = [json.loads(line) for line in (tmp_path / "killed" / "steps.jsonl").read_text().splitlines()]
    keys = [(s["phase"], s["step"]) for s in steps]
    assert len(keys) == len(set(keys)), "a step is logged twice after resuming"
    assert not (tmp_path / "killed" / "checkpoints").exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    raw = config(tmp_path, epochs=2)
    reference = train(cfg_of(raw), output=tmp_path / "ref", quiet=True).metrics
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _train_until(raw, out, steps=23)
    ckpts = sorted((tmp_path / "run.partial" / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 2
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])  # truncated
    run = train(cfg_of(raw), output=out, quiet=True, resume=True)
    assert run.metrics == reference


def _train_until(raw, out, steps):
    """Train, interrupting (as Ctrl-C would) after `steps` optimizer steps."""
    from distill.training import common
    original = common.RunLog.step

    def step(self, record):
        original(self, record)
        if record["step"] + 1 >= steps:
            common.RunLog.step = original
            raise KeyboardInterrupt

    common.RunLog.step = step
    try:
        train(cfg_of(raw), output=out, quiet=True)
    finally:
        common.RunLog.step = original


def test_resume_refuses_a_different_config_or_nothing_to_resume(tmp_path):
    raw = config(tmp_path)
    with pytest.raises(DistillError, match="no interrupted run there"):
        train(cfg_of(raw), output=tmp_path / "nothing", quiet=True, resume=True)
    with pytest.raises(KeyboardInterrupt):
        _train_until(raw, tmp_path / "run", steps=12)
    raw["train"]["lr"] = 0.5
    with pytest.raises(DistillError, match="differs from the interrupted run's in 'train'"):
        train(cfg_of(raw), output=tmp_path / "run", quiet=True, resume=True)


def test_divergence_names_step_and_term_and_keeps_the_last_checkpoint(tmp_path):
    raw = config(tmp_path)
    raw["student"] = {"model": "module:spy_models:explode", "hidden": [8], "embedding_dim": 8}
    with pytest.raises(DistillError, match=r"diverged at step 7: L_s is nan.*--resume"):
        train(cfg_of(raw), output=tmp_path / "run", quiet=True)
    ckpts = sorted((tmp_path / "run.partial" / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in ckpts] == ["ckpt-000000.pt"]  # saved at step 5, before the NaN at step 7
    import torch
    state = torch.load(ckpts[0], weights_only=True)
    assert state["current"]["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["models"]["student"].values())
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_between_phases_resumes_with_the_rng_it_had(tmp_path):
    # Killed after a phase finished but before the next one checkpointed: the next phase's dropout
    # masks must come from the RNG the uninterrupted run would have had, not a fresh process's.
    import torch
    from torch import nn
    from distill.training.checkpoint import Checkpoints
    models = {"m": nn.Linear(2, 1)}
    torch.manual_seed(7)
    torch.rand(5)  # a phase consumed some randomness
    expected = torch.get_rng_state()
    Checkpoints(tmp_path, 5, models).finish("teacher", {"steps": 1})
    torch.manual_seed(123)  # a new process starts elsewhere
    ckpt = Checkpoints(tmp_path, 5, models)
    assert ckpt.load_latest() and ckpt.resume is None and "teacher" in ckpt.completed
    assert torch.equal(torch.get_rng_state(), expected)
