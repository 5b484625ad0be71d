"""Seeing what training does: progress lines, TensorBoard events, the report, init and validate."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.demo import write_demo_data
from distill.errors import DistillError

SMALL = ["--set", "train.epochs=3", "--set", "train.batch_size=256", "--set", "teacher.hidden=[32]",
         "--set", "student.hidden=[16]", "--set", "distillation.schedule={type: linear, steps: 10}", "--set", "train.threads=1"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("observe") / "data", n_train=1500, n_valid=500, n_test=600)


@pytest.fixture(scope="module")
def run_dir(data: Path) -> Path:
    """A sync run trained through the CLI, which also writes its report."""
    out = data.parent / "run"
    result = CliRunner().invoke(app, ["train", str(data), "--output", str(out), "--quiet", *SMALL])
    assert result.exit_code == 0, result.output
    return out


# ----------------------------------------------------------------------------- the report


def test_train_writes_the_report_with_valid_pngs(run_dir: Path):
    from matplotlib.image import imread
    report = run_dir / "report"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["calibration.png", "lambda.png", "losses.png", "validation.png"]
    for name in pngs:
        img = imread(report / name)  # fails on a truncated or non-PNG file
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not a blank canvas
    md = (report / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    html = (report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(pngs)  # self-contained
    assert "<table>" in html and "gain" in html
    assert "**Verdict** — auc:" in md and "paired bootstrap over" in md  # one run: the bootstrap verdict
    assert not list(run_dir.glob("report.partial")) and not list(run_dir.glob("report.old"))


def test_report_plots_the_logged_data(run_dir: Path, tmp_path: Path):
    from distill.report import write_report
    r = write_report(run_dir, tmp_path / "rep")
    steps, evals = read_jsonl(run_dir / "steps.jsonl"), read_jsonl(run_dir / "evals.jsonl")

    losses = {(s.panel, s.label): s for s in r.figures["losses"]}
    assert set(losses) == {("sync", "L_t"), ("sync", "L_s"), ("sync", "L_d"), ("sync", "loss"), ("baseline", "L_s")}
    sync = [s for s in steps if s["phase"] == "sync"]
    assert list(losses[("sync", "L_d")].x) == [s["step"] for s in sync]
    # smoothed, yet it follows the data: same length, within the range of the raw values
    raw = np.array([s["L_d"] for s in sync])
    y = losses[("sync", "L_d")].y
    assert len(y) == len(raw) and raw.min() - 1e-9 <= y.min() and y.max() <= raw.max() + 1e-9

    lam = {(s.panel, s.label): s for s in r.figures["lambda"]}
    assert list(lam[("lambda", "sync")].y) == [s["lambda"] for s in sync]
    assert ("lambda", "baseline") not in lam  # the baseline has no distillation term to weight
    assert list(lam[("lr", "baseline")].y) == [s["lr"] for s in steps if s["phase"] == "baseline"]

    val = {s.label: s for s in r.figures["validation"] if s.panel == "auc"}
    assert set(val) == {"teacher", "student", "baseline"}
    for model, s in val.items():
        rows = [e for e in evals if e["model"] == model]
        assert list(s.x) == [e["step"] for e in rows] and list(s.y) == [e["auc"] for e in rows]
    gain = next(s for s in r.figures["validation"] if s.panel == "gain")
    student = {e["step"]: e["auc"] for e in evals if e["model"] == "student"}
    baseline = {e["step"]: e["auc"] for e in evals if e["model"] == "baseline"}
    assert np.allclose(gain.y, [student[x] - baseline[x] for x in gain.x]) and len(gain.x) == len(student)

    cal = {s.label: s for s in r.figures["calibration"]}
    assert set(cal) == {"teacher", "student", "baseline"}
    for s in cal.values():
        assert len(s.x) == 10 and np.all(np.diff(s.x) >= 0)  # bins sorted by prediction
        assert np.all((s.x > 0) & (s.x < 1) & (s.y >= 0) & (s.y <= 1))
    assert r.notes == []


def test_calibration_bins_by_hand():
    from distill.plots import calibration
    pred = np.array([0.1] * 5 + [0.9] * 5)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    c = calibration(y, pred, "binary", bins=2)
    assert np.allclose(c.predicted, [0.1, 0.9]) and np.allclose(c.observed, [0.2, 0.8])
    assert c.ece == pytest.approx(0.1)
    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]])
    m = calibration(np.array([0, 1, 1, 1]), probs, "multiclass", bins=2)
    assert np.allclose(m.predicted, [0.65, 0.85]) and np.allclose(m.observed, [0.5, 1.0])


def test_report_of_a_compare_directory(run_dir: Path, tmp_path: Path):
    import shutil

    from distill.compare import summarize
    from distill.report import write_report
    comp = tmp_path / "compare"
    shutil.copytree(run_dir, comp / "seed_3", ignore=shutil.ignore_patterns("report"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (comp / "compare.json").write_text(json.dumps(summarize([metrics], "test")))
    r = write_report(comp)
    md = r.markdown.read_text()
    assert r.directory == comp / "report" and "seed_3" in md
    gain = metrics["student"]["test"]["auc"] - metrics["baseline"]["test"]["auc"]
    assert f"| **gain** (student − baseline) | {gain:+.4f} |" in md  # the gain row comes from compare.json


def test_report_errors_are_one_line(tmp_path: Path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run directory" in result.output


def test_no_report_flag(data: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["train", str(data), "--output", str(tmp_path / "r"), "--quiet", "--no-report",
                                      *SMALL, "--set", "train.epochs=1", "--set", "train.baseline=false"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "metrics.json").is_file() and not (tmp_path / "r" / "report").exists()


# ----------------------------------------------------------------------------- TensorBoard and progress


def test_tensorboard_events_hold_every_curve(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("sync/L_s", "sync/L_d", "sync/L_t", "sync/loss", "sync/lambda", "sync/lr", "baseline/L_s",
                "baseline/lr", "valid_auc/teacher", "valid_auc/student", "valid_auc/baseline", "valid_logloss/student"):
        assert tag in tags, tag
    steps = [s for s in read_jsonl(run_dir / "steps.jsonl") if s["phase"] == "sync"]
    events = acc.Scalars("sync/L_d")
    assert [e.step for e in events] == [s["step"] for s in steps]
    assert np.allclose([e.value for e in events], [s["L_d"] for s in steps], rtol=1e-6)
    seconds = [s["seconds"] for s in steps]  # wall time since the phase began: a step's cost
    assert seconds[0] > 0 and all(b > a for a, b in zip(seconds, seconds[1:]))
    assert not any(t.endswith("/seconds") for t in tags)  # bookkeeping, not a curve
    evals = [e for e in read_jsonl(run_dir / "evals.jsonl") if e["model"] == "student"]
    assert np.allclose([e.value for e in acc.Scalars("valid_auc/student")], [e["auc"] for e in evals], rtol=1e-6)


def test_plain_progress_lines_when_not_a_terminal(capsys):
    from distill.training.log import RunLog
    log = RunLog()  # capsys's stderr is not a TTY: plain lines, no bar
    assert log.tty is False
    log.phase("sync", total_steps=20, batch_size=32, epochs=2)
    for step in range(20):
        log.step({"phase": "sync", "step": step, "epoch": step // 10, "lambda": 0.5, "lr": 1e-3,
                  "L_s": 0.7, "L_d": 0.6, "L_t": 0.5, "loss": 1.15})
    log.evaluation({"phase": "sync", "model": "student", "epoch": 1, "step": 20, "auc": 0.75})
    log.close()
    lines = capsys.readouterr().err.splitlines()
    progress = [l for l in lines if re.search(r"\[sync\] epoch \d/2  step \d+/20", l)]
    assert len(progress) == 10  # one per tenth of the phase, not one per step
    assert "step 20/20 (100%)" in progress[-1] and "epoch 2/2" in progress[-1]
    assert all("samples/s" in l and "L_d 0.600" in l and "λ 0.50" in l for l in progress)
    assert any("[sync] done: 20 steps" in l for l in lines)
    assert any("valid student" in l and "auc=0.7500" in l for l in lines)
    assert not any("\x1b[" in l for l in lines)  # no terminal escapes in a log file


def test_quiet_prints_nothing_and_still_writes(tmp_path: Path, capsys):
    from distill.training.log import RunLog
    log = RunLog(tmp_path, quiet=True, tensorboard=False)
    log.phase("baseline", 3, 8)
    for step in range(3):
        log.step({"phase": "baseline", "step": step, "epoch": 0, "lambda": 0.0, "L_s": 0.5, "loss": 0.5})
    log.info("hello")
    log.close()
    assert capsys.readouterr().err == ""
    assert len(read_jsonl(tmp_path / "steps.jsonl")) == 3 and not list(tmp_path.glob("events.*"))


def test_missing_tensorboard_is_one_info_line(tmp_path: Path, capsys, monkeypatch):
    from distill.training.log import RunLog
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    log = RunLog(tmp_path)
    for step in range(3):
        log.step({"phase": "sync", "step": step, "epoch": 0, "L_s": 0.5, "loss": 0.5})
    log.close()
    err = capsys.readouterr().err
    assert err.count("tensorboard is not installed") == 1
    assert len(read_jsonl(tmp_path / "steps.jsonl")) == 3 and not list(tmp_path.glob("events.*"))


# ----------------------------------------------------------------------------- init


def _table(n: int = 400) -> pa.Table:
    rng = np.random.default_rng(0)
    tags = ["a b", "b c", "a", "c d e", "d"]
    return pa.table({
        "user_id": pa.array(rng.integers(0, 150, n)),
        "hour": pa.array(rng.integers(0, 24, n)),
        "price": pa.array(rng.lognormal(3, 1, n)),
        "clicks_7d": pa.array(rng.poisson(2, n)),
        "tags": pa.array([tags[i % 5] for i in range(n)]),
        "genres": pa.array([["x", "y"][: 1 + i % 2] for i in range(n)], pa.list_(pa.string())),
        "request_id": pa.array([f"r{i}" for i in range(n)]),
        "constant": pa.array(["same"] * n),
        "clicked": pa.array(rng.integers(0, 2, n)),
    })


def test_init_guesses_types_and_label(tmp_path: Path):
    from distill.init import init_config
    pq.write_table(_table(), tmp_path / "train.parquet")
    pq.write_table(_table(50), tmp_path / "valid.parquet")
    out = tmp_path / "config.yaml"
    g = init_config(str(tmp_path / "train.parquet"), out)
    assert (g.label, g.task, g.group) == ("clicked", "binary", "user_id")
    types = {c.name: c.type for c in g.columns}
    assert types == {"user_id": "categorical", "hour": "categorical", "price": "numeric", "clicks_7d": "numeric",
                     "tags": "multi_categorical", "genres": "multi_categorical", "request_id": None, "constant": None}
    cfg = load_config(out)  # what was written is a valid config
    assert cfg.task.label == "clicked" and cfg.data.valid == str(tmp_path / "valid.parquet") and cfg.data.test is None
    assert [f.name for f in cfg.features] == ["user_id", "hour", "price", "clicks_7d", "tags", "genres"]
    assert not any(f.privileged for f in cfg.features)
    assert cfg.distillation.schedule.steps == 1  # λ ramps over one epoch (400 rows: 1 step), never past the 2 epochs' end
    text = out.read_text()
    assert "privileged: true marks" in text and "# - {name: request_id}" in text
    with pytest.raises(DistillError, match="exists; pass --force"):
        init_config(str(tmp_path / "train.parquet"), out)
    init_config(str(tmp_path / "train.parquet"), out, label="hour", force=True)
    assert load_config(out).task.type == "multiclass"


def test_init_then_validate_on_a_small_file_gives_no_warning(tmp_path: Path):
    """The config init writes for a small file must not draw validate's warning about itself
    (a λ ramp longer than the whole training)."""
    pq.write_table(_table(), tmp_path / "train.parquet")
    pq.write_table(_table(50), tmp_path / "valid.parquet")
    cfg = tmp_path / "config.yaml"
    assert CliRunner().invoke(app, ["init", str(tmp_path / "train.parquet"), "-o", str(cfg)]).exit_code == 0
    r = CliRunner().invoke(app, ["validate", str(cfg)])
    assert r.exit_code == 0 and "ok:" in r.output, r.output
    assert "warning" not in r.output, r.output


def test_init_asks_or_demands_the_label(tmp_path: Path):
    from distill.init import init_config
    t = _table().rename_columns(["u", "h", "p", "c7", "t", "g", "r", "k", "outcome_a"])
    t = t.append_column("outcome_b", pa.array(np.arange(t.num_rows) % 2))  # two 0/1 columns: ambiguous
    pacsv.write_csv(t.drop_columns(["g"]), tmp_path / "d.csv")  # CSV cannot hold lists
    with pytest.raises(DistillError, match="--label"):
        init_config(str(tmp_path / "d.csv"), tmp_path / "a.yaml")
    g = init_config(str(tmp_path / "d.csv"), tmp_path / "a.yaml", ask=lambda cols: "outcome_b")
    assert g.label == "outcome_b" and yaml.safe_load((tmp_path / "a.yaml").read_text())["task"]["label"] == "outcome_b"
    result = CliRunner().invoke(app, ["init", str(tmp_path / "d.csv"), "-o", str(tmp_path / "b.yaml"), "--label", "outcom_b"])
    assert result.exit_code == 2 and "did you mean 'outcome_b'" in result.output


# ----------------------------------------------------------------------------- validate


def test_validate_reports_what_would_be_trained(data: Path):
    from distill.run import _params, build
    from distill.validate import validate
    cfg = load_config(data, {"teacher.hidden": [32], "student.hidden": [16], "distillation.schedule": {"type": "linear", "steps": 5},
                             "distillation.share_embeddings": True, "distillation.separate_embeddings": ["user_id"]})
    v = validate(cfg)
    by_role = {m.role: m for m in v.models}
    assert set(by_role) == {"teacher", "student", "baseline"}
    assert by_role["teacher"].privileged == ["user_cat_clicks_24h", "viewport_seconds"]
    assert by_role["student"].privileged == [] and "viewport_seconds" not in by_role["student"].features
    assert v.rows == {"train": 1500, "valid": 500, "test": 600}
    assert "user_id" not in v.shared_tables and "item_id" in v.shared_tables  # separate_embeddings honoured
    from distill.data.dataset import load_splits
    enc = load_splits(cfg).encoders
    assert by_role["teacher"].parameters == _params(build(cfg, enc, "teacher", 0)[0])
    assert not any("never reaches" in w for w in v.warnings)
    late = validate(load_config(data, {"teacher.hidden": [32], "distillation.schedule": {"type": "linear", "steps": 10_000}}))
    assert any("λ never reaches its target" in w for w in late.warnings)


def test_validate_catches_a_bad_column(data: Path, tmp_path: Path):
    raw = yaml.safe_load(data.read_text())
    raw["features"].append({"name": "dwell_time", "type": "numeric", "privileged": True})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "missing column 'dwell_time'" in result.output
    ok = CliRunner().invoke(app, ["validate", str(data), *SMALL])
    assert ok.exit_code == 0 and "what would be trained" in ok.output and "nothing was trained" in ok.output


def test_validate_warns_of_a_separator_the_values_do_not_use(data: Path, tmp_path: Path):
    """Tags written 'a|b' under the default separator ' ' train without an error, each whole string one
    unseen id; validate says so, naming the feature and the separator the values use."""
    bad = _piped_tags(data, tmp_path)
    r = CliRunner().invoke(app, ["validate", str(bad), *SMALL])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "warning: feature 'item_tags': none of the first" in text, r.output
    assert "holds its separator ' ' but" in text and "set separator: '|'" in text
    ok = CliRunner().invoke(app, ["validate", str(data), *SMALL])
    assert ok.exit_code == 0 and "separator" not in ok.output, ok.output


def _piped_tags(data: Path, tmp_path: Path) -> Path:
    """The demo config on splits whose item_tags are joined by '|' (the config keeps separator ' ')."""
    import pyarrow.compute as pc
    raw = yaml.safe_load(data.read_text())
    for split in ("train", "valid", "test"):
        t = pq.read_table(raw["data"][split])
        tags = pc.replace_substring(t.column("item_tags"), " ", "|")
        pq.write_table(t.set_column(t.column_names.index("item_tags"), "item_tags", tags), tmp_path / f"{split}.parquet")
        raw["data"][split] = str(tmp_path / f"{split}.parquet")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    return bad


@pytest.mark.parametrize("quiet", [False, True])
def test_train_warns_of_a_separator_the_values_do_not_use(data: Path, tmp_path: Path, quiet: bool):
    """train says what validate says about a wrong separator, once, before training (with -q, after it)
    and records it in run.json's warnings."""
    bad = _piped_tags(data, tmp_path)
    r = CliRunner().invoke(app, ["train", str(bad), "-o", str(tmp_path / "run"), "--no-report", *SMALL,
                                 "--set", "train.epochs=1", *(["-q"] if quiet else [])])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert text.count("warning: feature 'item_tags': none of the first") == 1, r.output
    assert "set separator: '|'" in text
    if not quiet:  # before the first training line
        assert text.index("feature 'item_tags'") < text.index("teacher:"), r.output
    warnings = json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]
    assert any("feature 'item_tags'" in w for w in warnings)


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for cmd in ("train", "compare", "evaluate", "demo", "report", "init", "validate"):
        assert cmd in top.output
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd


def test_long_phases_thin_tensorboard_points_but_not_the_jsonl(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distill.training.log import RunLog
    log = RunLog(tmp_path, quiet=True)
    log.phase("baseline", total_steps=3000, batch_size=8)
    for step in range(3000):
        log.step({"phase": "baseline", "step": step, "epoch": 0, "L_s": 1.0 / (step + 1), "loss": 1.0 / (step + 1)})
    log.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("baseline/L_s")]
    assert steps == list(range(0, 3000, 3))  # every third step: 1000 points
    assert len(read_jsonl(tmp_path / "steps.jsonl")) == 3000
