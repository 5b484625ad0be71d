"""Several teachers: the ensemble's formulas against hand computations, the run directory they make
(one file per teacher, the gate apart, the student alone in the export), the logs and the errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from conftest import base_config
from distill.cli import app
from distill.config import config_from_dict
from distill.ensemble import Gate, combine
from distill.errors import DistillError
from distill.recipes import check
from distill.run import train

runner = CliRunner()
TEACHERS = {"pfd": {"hidden": [32, 16], "embedding_dim": 8},  # serving + privileged (the default: all)
            "md": {"hidden": [32], "embedding_dim": 8, "features": "serving"}}


def several(tmp_path, mode="sync", ensemble=None, **sections) -> dict:
    raw = base_config(tmp_path, **sections)
    del raw["teacher"]
    raw["teachers"] = copy.deepcopy(TEACHERS)
    raw["distillation"] = {"mode": mode, "weight": 0.5, "ensemble": ensemble or {"type": "mean"}}
    return raw


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_combine_matches_hand_computation():
    z = torch.tensor([[1.0, 3.0, -2.0], [0.0, -1.0, 4.0]])  # (K=2, B=3)
    assert torch.allclose(combine(z, torch.tensor([0.5, 0.5])), torch.tensor([0.5, 1.0, 1.0]))
    assert torch.allclose(combine(z, torch.tensor([0.75, 0.25])), torch.tensor([0.75, 2.0, -0.5]))
    per_row = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # (B, K)
    assert torch.allclose(combine(z, per_row), torch.tensor([1.0, -1.0, 1.0]))
    multi = torch.arange(12.0).view(2, 3, 2)  # (K, B, C)
    assert torch.allclose(combine(multi, per_row), torch.stack([multi[0, 0], multi[1, 1], multi[:, 2].mean(0)]))
    g = Gate(2, 1)(z)  # (B, K) softmax weights
    assert g.shape == (3, 2) and torch.allclose(g.sum(-1), torch.ones(3))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mean_ensemble_is_the_mean_of_the_teachers_logits(tmp_path, mode):
    run = train(config_from_dict(several(tmp_path, mode)), quiet=True)
    names = {p.name for p in run.path.iterdir()}
    assert {"teacher.pfd.safetensors", "teacher.md.safetensors", "student.safetensors"} <= names
    assert "teacher.safetensors" not in names and "gate.safetensors" not in names
    assert set(run.metrics) == {"teacher:pfd", "teacher:md", "ensemble", "student", "baseline"}
    p = np.load(run.path / "test_predictions.npz")
    hand = sigmoid((logit(p["teacher:pfd"]) + logit(p["teacher:md"])) / 2)
    assert np.allclose(p["ensemble"], hand, atol=1e-5)
    # the teacher on serving features only reads no privileged column; the other reads them
    assert "intent" not in run.features["teacher:md"] and "intent" in run.features["teacher:pfd"]
    # one L_d per teacher beside the combined one, in the student's steps
    phase = "sync" if mode == "sync" else "student"
    steps = [json.loads(line) for line in (run.path / "steps.jsonl").read_text().splitlines()]
    student_steps = [s for s in steps if s["phase"] == phase]
    assert student_steps and all({"L_d", "L_d:pfd", "L_d:md"} <= set(s) for s in student_steps)
    if mode == "async":
        assert {s["phase"] for s in steps} == {"teacher:pfd", "teacher:md", "student", "baseline"}


def test_fixed_weights(tmp_path):
    run = train(config_from_dict(several(tmp_path, "async", {"type": "weights", "weights": {"pfd": 3, "md": 1}})), quiet=True)
    p = np.load(run.path / "test_predictions.npz")
    hand = sigmoid(0.75 * logit(p["teacher:pfd"]) + 0.25 * logit(p["teacher:md"]))
    assert np.allclose(p["ensemble"], hand, atol=1e-5)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gate_trains_and_stays_out_of_the_student_and_the_export(tmp_path, mode):
    raw = several(tmp_path, mode, {"type": "gate"}, train={"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 0})
    run = train(config_from_dict(raw), quiet=True)
    assert (run.path / "gate.safetensors").is_file()
    steps = [json.loads(line) for line in (run.path / "steps.jsonl").read_text().splitlines()]
    gate = [s["L_gate"] for s in steps if "L_gate" in s]
    assert np.mean(gate[-5:]) < np.mean(gate[:5])  # the gate learns from the hard labels
    with safe_open(str(run.path / "gate.safetensors"), "pt") as f:
        assert all(k.startswith("net.") for k in f.keys())
    with safe_open(str(run.path / "student.safetensors"), "pt") as f:
        student_keys = set(f.keys())
    # the student's weights file is the one a one-teacher run writes: no teacher, no gate
    (tmp_path / "one").mkdir()
    one = base_config(tmp_path / "one")
    one_run = train(config_from_dict(one), quiet=True)
    with safe_open(str(one_run.path / "student.safetensors"), "pt") as f:
        assert set(f.keys()) == student_keys
    r = runner.invoke(app, ["export", str(run.path), "--format", "onnx", "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["leak_check"]["passed"]  # the graph's weights are exactly the student's count


def test_gate_fitted_on_half_the_validation_split_not_on_the_training_rows(tmp_path):
    """fit_on valid: the gate steps over half the validation rows (the other half early-stops it);
    on the training rows (the default) it steps over all of them."""
    import math
    runs = {}
    for fit_on in ("train", "valid"):
        (tmp_path / fit_on).mkdir()
        raw = several(tmp_path / fit_on, "async", {"type": "gate", "fit_on": fit_on},
                      train={"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 0, "early_stopping": None})
        runs[fit_on] = train(config_from_dict(raw), quiet=True)
    n_train = 600  # conftest.base_config: 600 training rows, 300 validation rows
    for fit_on, rows in (("train", n_train), ("valid", 150)):
        steps = [json.loads(line) for line in (runs[fit_on].path / "steps.jsonl").read_text().splitlines()]
        assert sum(s["phase"] == "gate" for s in steps) == 2 * math.ceil(rows / 64)
    gate = json.loads((runs["valid"].path / "run.json").read_text())["phases"]["gate"]
    assert (gate["fit_on"], gate["fit_rows"], gate["stop_rows"]) == ("valid", 150, 150)
    with safe_open(str(runs["train"].path / "gate.safetensors"), "pt") as a, \
            safe_open(str(runs["valid"].path / "gate.safetensors"), "pt") as b:
        assert any(not torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_compare_reports_each_teacher_and_the_gap_against_the_ensemble(tmp_path):
    raw = several(tmp_path, "async")
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["compare", str(cfg_path), "--seeds", "1", "-q", "--output", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(summary["teachers"]) == {"teacher:pfd", "teacher:md"}
    run = json.loads((tmp_path / "cmp" / "seed_0" / "metrics.json").read_text())
    assert summary["teacher"]["auc"]["mean"] == run["ensemble"]["test"]["auc"]  # the reference is the ensemble
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| ensemble |" in md and "| teacher:pfd |" in md


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.__setitem__("teacher", {"hidden": [8]}), "either 'teacher'"),
    (lambda raw: raw.__setitem__("teachers", {"pfd": dict(TEACHERS["pfd"])}), "at least two teachers"),
    (lambda raw: raw["distillation"].__setitem__("ensemble", {"type": "weights", "weights": {"pfd": 1}}),
     "no weight for teacher 'md'"),
    (lambda raw: raw["distillation"].__setitem__("ensemble", {"type": "weights", "weights": {"pfd": 1, "md": 1, "x": 1}}),
     "'x' is not a teacher"),
    (lambda raw: raw["teachers"]["md"].__setitem__("features", ["nope"]), "teachers.md.features: 'nope'"),
    (lambda raw: raw["distillation"].__setitem__("mode", "none"), "mode 'none' trains no teacher"),
    (lambda raw: raw["distillation"].__setitem__("share_embeddings", True), "no table is shared"),
    (lambda raw: raw["distillation"].__setitem__("ensemble", {"type": "gate", "fit_on": "valid"}),
     "distillation.ensemble.fit_on: 'valid' needs mode 'async'"),
    (lambda raw: raw["distillation"].update(mode="async", ensemble={"type": "mean", "fit_on": "valid"}),
     "only ensemble type 'gate' is fitted"),
    (lambda raw: (raw["distillation"].update(mode="async", ensemble={"type": "gate", "fit_on": "valid"}),
                  raw["data"].pop("valid")), "fits the gate on the validation split; set data.valid"),
])
def test_bad_teachers_are_one_line_through_the_cli(tmp_path, change, message):
    raw = several(tmp_path)
    change(raw)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(cfg_path), "-q", "--output", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_resolved_config_of_several_teachers_loads_again(tmp_path):
    cfg = config_from_dict(several(tmp_path))
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))))
    assert again.teachers is not None and set(again.teachers) == {"pfd", "md"}
    check(again)


def test_offline_several_score_columns(tmp_path):
    import pyarrow.parquet as pq
    raw = base_config(tmp_path)
    t = pq.read_table(tmp_path / "train.parquet")
    p1 = sigmoid(t.column("intent").to_numpy())
    p2 = np.full(len(p1), 0.3)
    pq.write_table(t.append_column("s1", [p1]).append_column("s2", [p2]), tmp_path / "train.parquet")
    raw["distillation"] = {"mode": "offline", "soft_labels": ["s1", "s2"],
                           "ensemble": {"type": "weights", "weights": {"s1": 3, "s2": 1}}}
    run = train(config_from_dict(raw), quiet=True)
    steps = [json.loads(line) for line in (run.path / "steps.jsonl").read_text().splitlines()]
    first = next(s for s in steps if s["phase"] == "student")
    assert {"L_d", "L_d:s1", "L_d:s2"} <= set(first)
    # each column is read as logits, one per column
    from distill.data.dataset import load_splits
    splits = load_splits(config_from_dict(raw))
    assert splits.train.soft.shape == (len(p1), 2)
    assert torch.allclose(splits.train.soft[:, 1], torch.full((len(p1),), float(logit(np.float32(0.3)))), atol=1e-4)
    raw["distillation"]["ensemble"] = {"type": "gate"}
    with pytest.raises(DistillError, match="'gate' needs teachers"):
        check(config_from_dict(raw))


def test_validate_lists_each_teacher_with_its_own_model_and_features(tmp_path):
    raw = several(tmp_path)
    raw["teachers"]["pfd"]["model"], raw["teachers"]["md"]["model"] = "dcn_v2", "deepfm"
    raw["student"]["model"] = "dnn"
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["validate", str(cfg_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    cells = [line.replace("│", " ").split() for line in r.output.splitlines()]
    rows = {c[0]: c[1:] for c in cells if c and c[0] in ("teacher:pfd", "teacher:md", "student")}  # "what would be trained"
    n_all, n_serving = (len(config_from_dict(raw).features),
                        sum(not f.get("privileged") for f in raw["features"]))
    assert rows["teacher:pfd"][:2] == ["dcn_v2", str(n_all)] and rows["teacher:md"][:2] == ["deepfm", str(n_serving)]
    assert rows["student"][:2] == ["dnn", str(n_serving)]
