"""Nothing of the user's is ever deleted: distill replaces only what it wrote, swaps outputs in
whole, keeps an interrupted run's checkpoints, locks a run being trained, and says "no space left"
in one line (README, "What distill may replace")."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import base_config, cfg_of
from distill.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny(tmp: Path, **train_kw) -> dict:
    raw = base_config(tmp, n_train=300)
    raw["teacher"]["hidden"], raw["student"]["hidden"] = [8], [8]
    raw["train"].update({"epochs": 1, **train_kw})
    return raw


def write_config(tmp: Path, raw: dict, name: str = "config.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.strip() and not line.startswith("ignoring ")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output  # (predict's note on unread columns aside)
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run for the whole module: (tmp dir, config file, run dir)."""
    tmp = tmp_path_factory.mktemp("safety")
    raw = tiny(tmp)
    cfg = write_config(tmp, raw)
    r = invoke("train", cfg, "-q", "--no-report")
    assert r.exit_code == 0, r.output
    return tmp, cfg, Path(raw["output"])


def keep_file(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / "notes.txt"
    f.write_text("keep")
    return f


# ----------------------------------------------------------------------------- 1: only what distill wrote


def test_export_refuses_a_directory_distill_did_not_write(trained):
    tmp, _, run = trained
    notes = keep_file(tmp / "v")
    line = one_error_line(invoke("export", run, "--out", tmp / "v"))
    assert str(tmp / "v") in line and "did not write" in line
    assert notes.read_text() == "keep" and not (tmp / "v.partial").exists()


def test_export_replaces_its_own_export_and_nothing_else(trained):
    tmp, _, run = trained
    out = tmp / "exp"
    assert invoke("export", run, "--out", out).exit_code == 0
    first = json.loads((out / "manifest.json").read_text())
    r = invoke("export", run, "--out", out, "--format", "torchscript")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["encoders.json", "manifest.json", "model.pt"]
    assert json.loads((out / "manifest.json").read_text())["format"] == "torchscript" != first["format"]
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("exp.")]  # no aside, no partial left


def test_export_never_replaces_the_run_the_working_directory_or_a_parent(trained, monkeypatch):
    tmp, _, run = trained
    before = sorted(p.name for p in run.iterdir())
    line = one_error_line(invoke("export", run, "--out", run))
    assert str(run) in line and (run / "run.json").is_file() and sorted(p.name for p in run.iterdir()) == before

    work = tmp / "parent" / "work"
    notes = keep_file(work)
    sibling = keep_file(tmp / "parent" / "sibling")
    monkeypatch.chdir(work)
    for out in (".", ".."):
        line = one_error_line(invoke("export", run, "--out", out))
        assert "working directory or a parent" in line and line.startswith(f"error: {out}:")
    assert notes.is_file() and sibling.is_file()


def test_report_refuses_the_run_and_a_foreign_directory(trained):
    tmp, _, run = trained
    before = sorted(p.name for p in run.iterdir())
    line = one_error_line(invoke("report", run, "--output", run))
    assert str(run) in line and sorted(p.name for p in run.iterdir()) == before
    notes = keep_file(tmp / "rep")
    line = one_error_line(invoke("report", run, "--output", tmp / "rep"))
    assert str(tmp / "rep") in line and notes.is_file()
    assert invoke("report", run).exit_code == 0  # the default, RUN/report, inside the run
    assert (run / "report" / "report.html").is_file() and not list(run.glob("report.*"))


def test_train_overwrite_never_deletes_a_parent_or_a_foreign_directory(trained, monkeypatch):
    tmp, cfg, _ = trained
    work = tmp / "top" / "work"
    notes = keep_file(work)
    monkeypatch.chdir(work)
    for out in ("..", "."):
        line = one_error_line(invoke("train", cfg, "-q", "--output", out, "--overwrite"))
        assert "working directory or a parent" in line
    foreign = keep_file(tmp / "foreign")
    line = one_error_line(invoke("train", cfg, "-q", "--output", tmp / "foreign", "--overwrite"))
    assert str(tmp / "foreign") in line and "run.json" in line
    assert notes.is_file() and foreign.is_file() and not (tmp / "foreign.partial").exists()


# ----------------------------------------------------------------------------- 2: replaced whole, or not at all


def kill_when_moving_in(monkeypatch):
    """os.replace raises (as a kill would stop it) when a finished `.partial` is being moved in."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(src).endswith(".partial") and Path(src).is_dir():
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)


def test_replacing_an_export_killed_midway_keeps_the_old_one(trained, monkeypatch):
    tmp, _, run = trained
    out = tmp / "exp_atomic"
    assert invoke("export", run, "--out", out).exit_code == 0
    old = (out / "manifest.json").read_text()
    kill_when_moving_in(monkeypatch)
    assert invoke("export", run, "--out", out, "--format", "torchscript").exit_code == 130
    assert (out / "manifest.json").read_text() == old and (out / "model.onnx").is_file()


def test_replacing_a_run_killed_midway_keeps_the_old_one(trained, monkeypatch):
    tmp, cfg, run = trained
    out = tmp / "run_atomic"
    assert invoke("train", cfg, "-q", "--no-report", "--output", out).exit_code == 0
    old = (out / "metrics.json").read_text()
    kill_when_moving_in(monkeypatch)
    assert invoke("train", cfg, "-q", "--no-report", "--output", out, "--overwrite").exit_code == 130
    assert (out / "metrics.json").read_text() == old and (out / "student.safetensors").is_file()


# ----------------------------------------------------------------------------- 3, 4: checkpoints and the lock


def fake_interrupted(out: Path) -> Path:
    """What a killed run leaves: `<out>.partial` with its config and a checkpoint."""
    partial = out.with_name(out.name + ".partial")
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "config.yaml").write_text("{}")
    (partial / "checkpoints" / "ckpt-000005.pt").write_bytes(b"weights")
    return partial


def test_train_without_resume_keeps_an_interrupted_runs_checkpoints(trained):
    tmp, cfg, _ = trained
    out = tmp / "interrupted"
    partial = fake_interrupted(out)
    line = one_error_line(invoke("train", cfg, "-q", "--no-report", "--output", out))
    assert str(partial) in line and f"--resume {out}" in line and "--overwrite" in line
    assert (partial / "checkpoints" / "ckpt-000005.pt").read_bytes() == b"weights" and not out.exists()
    r = invoke("train", cfg, "-q", "--no-report", "--output", out, "--overwrite")  # discards them, as asked
    assert r.exit_code == 0, r.output
    assert (out / "run.json").is_file() and not partial.exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from distill import outputs
outputs.lock(Path(sys.argv[1]), Path(sys.argv[2]))
print("locked", flush=True)
time.sleep(60)
"""


def test_a_run_being_trained_is_locked(trained):
    tmp, cfg, _ = trained
    out = tmp / "locked"
    partial = fake_interrupted(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(partial), str(out)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in (["--resume", out], ["--output", out, "--overwrite"]):
            line = one_error_line(invoke("train", cfg, "-q", "--no-report", *extra))
            assert line == f"error: {out} is being trained by process {holder.pid}"
        assert (partial / "checkpoints" / "ckpt-000005.pt").is_file()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its lock is stale and the next run takes it over
    r = invoke("train", cfg, "-q", "--no-report", "--output", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / ".distill.lock").exists()


# ----------------------------------------------------------------------------- 7: a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs with no space left (skipped where it cannot be mounted)."""
    d = tmp_path / "small"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        try:
            with open(d / "filler", "wb") as f:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)])


def test_export_predict_and_report_on_a_full_disk_say_so_in_one_line(trained, full_disk):
    tmp, cfg, run = trained
    line = one_error_line(invoke("export", run, "--out", full_disk / "exp"))
    assert str(full_disk / "exp") in line and "no space left" in line
    line = one_error_line(invoke("report", run, "--output", full_disk / "rep"))
    assert str(full_disk / "rep") in line and "no space left" in line
    line = one_error_line(invoke("predict", run, yaml.safe_load(cfg.read_text())["data"]["test"],
                                 "--output", full_disk / "scores.parquet"))
    assert str(full_disk / "scores.parquet") in line and "no space left" in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # temporary files removed


def test_an_unforeseen_full_disk_is_one_line(trained, monkeypatch):
    import distill.run

    def full(path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(distill.run, "load_run", full)
    line = one_error_line(invoke("evaluate", trained[2]))
    assert line == f"error: {trained[2]}: no space left on device"


def test_predict_never_replaces_an_input_or_another_kind_of_file(trained):
    tmp, cfg, run = trained
    test = Path(yaml.safe_load(cfg.read_text())["data"]["test"])
    data = test.read_bytes()
    line = one_error_line(invoke("predict", run, test, "--output", test))
    assert "is an input file" in line and test.read_bytes() == data
    notes = keep_file(tmp / "pred")
    line = one_error_line(invoke("predict", run, test, "--output", notes))
    assert "not a Parquet file" in line and notes.read_text() == "keep"
    line = one_error_line(invoke("predict", run, test, "--output", tmp / "pred"))
    assert "is a directory" in line


# ----------------------------------------------------------------------------- 16: train, then compare


def test_compare_after_train_writes_beside_the_run(tmp_path):
    raw = tiny(tmp_path)
    cfg = write_config(tmp_path, raw)
    assert invoke("train", cfg, "-q", "--no-report").exit_code == 0
    r = invoke("compare", cfg, "--seeds", 1, "-q", "--no-report")
    assert r.exit_code == 0, r.output
    assert (Path(raw["output"]) / "compare" / "compare.json").is_file()
    assert (Path(raw["output"]) / "run.json").is_file()  # the run is still there
    assert "OUTPUT/compare" in invoke("compare", "--help").output


def test_training_twice_from_python_says_how_to_proceed(trained):
    from distill.errors import DistillError
    from distill.run import train
    tmp, cfg, run = trained
    with pytest.raises(DistillError, match="overwrite=True"):
        train(cfg_of(yaml.safe_load(cfg.read_text())), quiet=True)
