"""A resume never continues on other data, the logs hold each step exactly once after a kill, and a
full disk ends a run with one line, no temporary files and (with checkpoints) the models kept."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import base_config, cfg_of, make_table
from distill.cli import app
from distill.run import train

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def config(tmp_path, **train_kw):
    raw = base_config(tmp_path, n_train=1200)
    raw["distillation"] = {"mode": "sync", "weight": 0.5, "schedule": {"type": "linear", "steps": 20}}
    raw["train"].update({"epochs": 3, "batch_size": 64, "checkpoint_every": 5, **train_kw})
    return raw


def write_config(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def interrupted(tmp_path, raw, steps=12):
    """A run stopped (as Ctrl-C would) after `steps` steps, with checkpoints left to resume from."""
    from distill.training import common
    original = common.RunLog.step

    def step(self, record):
        original(self, record)
        if record["step"] + 1 >= steps:
            raise KeyboardInterrupt

    common.RunLog.step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg_of(raw), quiet=True)
    finally:
        common.RunLog.step = original
    assert list((Path(raw["output"] + ".partial") / "checkpoints").glob("ckpt-*.pt"))


# --------------------------------------------------------------------------- item 5: the data is checked


def test_resume_refuses_training_data_whose_labels_were_flipped(tmp_path):
    raw = config(tmp_path)
    interrupted(tmp_path, raw)
    path = tmp_path / "train.parquet"
    table = pq.read_table(path)
    flipped = pc.subtract(pa.scalar(1, pa.int64()), table["click"])
    pq.write_table(table.set_column(table.schema.get_field_index("click"), "click", flipped), path)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", raw["output"])
    assert r.exit_code == 2, r.output
    assert "the training data changed since the checkpoint: train.parquet differs" in r.output
    assert "Traceback" not in r.output and "continue with --resume" not in r.output
    assert (tmp_path / "run.partial" / "checkpoints").is_dir()  # the refused resume deleted nothing


def test_resume_refuses_a_changed_vocabulary_naming_the_feature(tmp_path):
    raw = config(tmp_path)
    interrupted(tmp_path, raw)
    pq.write_table(make_table(1200, 1, n_users=45), tmp_path / "train.parquet")  # more users: a bigger table
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", raw["output"])
    assert r.exit_code == 2, r.output
    assert "train.parquet differs" in r.output and "the fitted encoders differ: feature 'user' vocab" in r.output
    assert "Traceback" not in r.output and "size mismatch" not in r.output


def test_a_checkpoint_without_a_fingerprint_that_does_not_fit_is_one_line(tmp_path):
    # Checkpoints written before fingerprints existed: the state-dict shape check is the safety net.
    import hashlib
    import torch
    raw = config(tmp_path)
    interrupted(tmp_path, raw)
    for ck in (tmp_path / "run.partial" / "checkpoints").glob("ckpt-*.pt"):
        state = torch.load(ck, weights_only=True)
        state.pop("fingerprint", None)
        buf = io.BytesIO()
        torch.save(state, buf)
        ck.write_bytes(buf.getvalue())
        ck.with_suffix(".sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())
    pq.write_table(make_table(1200, 1, n_users=45), tmp_path / "train.parquet")
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", raw["output"])
    assert r.exit_code == 2, r.output
    assert "does not fit the teacher built from this config and data" in r.output and "size mismatch" in r.output
    assert "Traceback" not in r.output


def test_resume_on_unchanged_data_is_not_refused(tmp_path):
    raw = config(tmp_path, epochs=1)
    interrupted(tmp_path, raw)
    os.utime(tmp_path / "train.parquet")  # touched, not changed
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", raw["output"])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- item 6: each step once in every log


def tensorboard_points(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def step_keys(directory):
    return [(s["phase"], s["step"]) for s in map(json.loads, (directory / "steps.jsonl").read_text().splitlines())]


def test_after_sigkill_and_resume_every_log_holds_each_step_once(tmp_path):
    pytest.importorskip("tensorboard")
    raw = config(tmp_path, epochs=2, checkpoint_every=2)
    raw["output"] = str(tmp_path / "killed")
    cfg_file = write_config(tmp_path, raw)
    proc = subprocess.Popen([sys.executable, "-m", "distill", "train", str(cfg_file), "-q", "--no-report"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed.partial" / "checkpoints"
    deadline = time.time() + 120
    # Killed as soon as a few checkpoints exist: most logged steps are still in the process's buffers then.
    while proc.poll() is None and time.time() < deadline:
        names = sorted(p.name for p in ckpts.glob("ckpt-*.sha256"))
        if names and names[-1] >= "ckpt-000004.sha256":
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = invoke("train", cfg_file, "-q", "--no-report", "--resume", tmp_path / "killed")
    assert r.exit_code == 0, r.output

    run = tmp_path / "killed"
    steps = step_keys(run)
    for phase in ("sync", "baseline"):  # every step once, none missing, in order (log_every is 1)
        assert [s for p, s in steps if p == phase] == list(range(sum(p == phase for p, _ in steps)))
    points = tensorboard_points(run)
    for p, s in steps:
        assert points[f"{p}/L_s"].count(s) == 1
    assert sorted(points["sync/L_s"] + points["baseline/L_s"]) == sorted(s for _, s in steps)
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    for model in ("teacher", "student", "baseline"):
        assert points[f"valid_auc/{model}"] == [e["step"] for e in evals if e["model"] == model]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the trimmed old file and the resumed one


# --------------------------------------------------------------------------- item 7: a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: the run's output goes there, the data stays on the big disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk):
    """Take every free byte of `disk` (the test's own file, removed again by `free`)."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 1):  # then the last few bytes
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def free(disk):
    (disk / "filler").unlink()


def leftovers(directory):
    return [p.name for p in directory.rglob("*.tmp")]


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, small_disk, monkeypatch):
    raw = config(tmp_path, epochs=2)
    raw["output"] = str(small_disk / "run")
    from distill.training import common
    original = common.RunLog.step

    def step(self, record):
        original(self, record)
        if record["step"] == 12:
            fill(small_disk)

    monkeypatch.setattr(common.RunLog, "step", step)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report")
    assert r.exit_code == 2, r.output
    partial = small_disk / "run.partial"
    # the checkpoint's write, or the log flush just before it (TensorBoard's writer thread may meet the
    # full disk first): either way one line naming the file and how to continue
    assert "no space left on device" in r.output and f"--resume {small_disk / 'run'}" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    assert leftovers(partial) == []
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == [
        "ckpt-000000.pt", "ckpt-000000.sha256", "ckpt-000001.pt", "ckpt-000001.sha256"]
    monkeypatch.setattr(common.RunLog, "step", original)
    free(small_disk)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", small_disk / "run")
    assert r.exit_code == 0, r.output


def fill_before_writing_the_run(monkeypatch, disk):
    import distill.run
    original = distill.run._write_run

    def write_run(*args, **kwargs):
        fill(disk)
        return original(*args, **kwargs)

    monkeypatch.setattr(distill.run, "_write_run", write_run)
    return original


def test_a_finished_run_whose_final_save_fails_keeps_its_models_to_resume(tmp_path, small_disk, monkeypatch):
    raw = config(tmp_path, epochs=1)
    reference = train(cfg_of({**raw, "output": str(tmp_path / "ref")}), quiet=True).metrics
    raw["output"] = str(small_disk / "run")
    original = fill_before_writing_the_run(monkeypatch, small_disk)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report")
    assert r.exit_code == 2, r.output
    partial = small_disk / "run.partial"
    assert "no space left on device; the trained models are kept in" in r.output
    assert f"rerun with --resume {small_disk / 'run'}" in r.output
    assert "Traceback" not in r.output and "SafetensorError" not in r.output
    assert leftovers(partial) == [] and not list(partial.glob("*.safetensors"))
    assert not (small_disk / "run").exists()

    monkeypatch.setattr("distill.run._write_run", original)
    free(small_disk)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report", "--resume", small_disk / "run")
    assert r.exit_code == 0, r.output
    assert json.loads((small_disk / "run" / "metrics.json").read_text()) == reference


def test_a_final_save_that_fails_without_checkpoints_says_what_was_lost(tmp_path, small_disk, monkeypatch):
    raw = config(tmp_path, epochs=1, checkpoint_every=None)
    raw["output"] = str(small_disk / "run")
    fill_before_writing_the_run(monkeypatch, small_disk)
    r = invoke("train", write_config(tmp_path, raw), "-q", "--no-report")
    assert r.exit_code == 2, r.output
    assert "no space left on device; the trained models are lost (train.checkpoint_every is off" in r.output
    assert "Traceback" not in r.output
    assert not (small_disk / "run.partial").exists() and not (small_disk / "run").exists()



def test_trim_events_keeps_exactly_the_points_logged_before_the_checkpoint(tmp_path):
    # Replayed steps would otherwise show twice: the killed process's file holds steps past the checkpoint.
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from distill.training.log import trim_events
    w = SummaryWriter(str(tmp_path))
    for s in range(10):
        w.add_scalar("sync/L_s", float(s), s)
        w.add_scalar("baseline/L_s", float(s), s)
        if s == 5:
            w.flush()
            time.sleep(0.01)
            until = time.time()
            time.sleep(0.01)
    w.close()
    trim_events(tmp_path, until)
    w = SummaryWriter(str(tmp_path))  # the resumed process logs 6.. again
    for s in range(6, 10):
        w.add_scalar("sync/L_s", float(s), s)
    w.close()
    points = tensorboard_points(tmp_path)
    assert points == {"sync/L_s": list(range(10)), "baseline/L_s": list(range(6))}
