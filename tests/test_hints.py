"""Hint distillation: the loss against a hand computation, the term in the log, every built-in
model's hint layer, and the projection nowhere in the student's weights or its export."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from conftest import base_config
from distill.cli import app
from distill.config import config_from_dict
from distill.hints import Capture, hint_loss
from distill.models import build_model
from distill.models.parts import FeatureInfo
from distill.config import ModelConfig
from distill.run import train

runner = CliRunner()


def test_hint_loss_matches_hand_computation():
    p, t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert torch.isclose(hint_loss(p, t, "mse"), torch.tensor((1 + 0 + 0 + 1) / 4))
    p, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    assert torch.isclose(hint_loss(p, t, "cosine"), torch.tensor((1.0 + 0.0) / 2))  # orthogonal: 1, parallel: 0


@pytest.mark.parametrize("model", ["dnn", "wide_deep", "deepfm", "dcn_v2", "two_tower"])
def test_every_builtin_model_exposes_its_last_hidden_layer(model):
    feats = (FeatureInfo("u", "categorical", 5), FeatureInfo("i", "categorical", 5), FeatureInfo("x", "numeric"))
    mc = ModelConfig(model=model, hidden=[8, 6], embedding_dim=4, user_features=["u"] if model == "two_tower" else None)
    net = build_model(mc, feats, 1)
    cap = Capture(net, None, "distillation.hint.layer")
    from distill.data.batch import Batch
    batch = Batch({"u": torch.tensor([1, 2, 3]), "i": torch.tensor([0, 1, 4]), "x": torch.randn(3, 2)}, None)
    logits = net(batch)
    assert logits.shape == (3,) and cap.value is not None and cap.value.shape[0] == 3 and cap.value.shape[1] >= 6
    cap.remove()
    assert torch.equal(net(batch), logits)  # the hook changed nothing


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_projection_is_training_only(tmp_path, mode):
    runs = {}
    for name, hint in (("plain", None), ("hint", {"weight": 0.5, "loss": "mse"})):
        (tmp_path / name).mkdir()
        raw = base_config(tmp_path / name)
        raw["distillation"] = {"mode": mode, "weight": 0.5, **({"hint": hint} if hint else {})}
        runs[name] = train(config_from_dict(raw), quiet=True)
    steps = [json.loads(line) for line in (runs["hint"].path / "steps.jsonl").read_text().splitlines()]
    phase = "sync" if mode == "sync" else "student"
    assert all("L_hint" in s for s in steps if s["phase"] == phase)
    assert not any("L_hint" in s for s in steps if s["phase"] == "baseline")
    # the hint moved the student (it is not a no-op) ...
    assert runs["hint"].metrics["student"] != runs["plain"].metrics["student"]
    # ... yet its weights file and its export hold exactly the parameters of a student without hints
    assert _keys(runs["hint"].path / "student.safetensors") == _keys(runs["plain"].path / "student.safetensors")
    assert runs["hint"].metrics["baseline"] == runs["plain"].metrics["baseline"]
    counts = {}
    for name, run in runs.items():
        r = runner.invoke(app, ["export", str(run.path), "--format", "onnx", "--out", str(tmp_path / f"exp_{name}")])
        assert r.exit_code == 0, r.output
        manifest = json.loads((tmp_path / f"exp_{name}" / "manifest.json").read_text())
        assert manifest["leak_check"]["passed"]
        import onnx
        graph = onnx.load(str(tmp_path / f"exp_{name}" / manifest["file"])).graph
        counts[name] = sorted((t.name, tuple(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert counts["hint"] == counts["plain"]


@pytest.mark.parametrize("hint, mode, message", [
    ({"layer": "nope"}, "sync", "distillation.hint.layer: 'nope' is not a module"),
    ({"teacher_layer": "nope"}, "async", "distillation.hint.teacher_layer: 'nope' is not a module"),
    ({}, "offline", "mode 'offline' has scores"),
])
def test_bad_hints_are_one_line(tmp_path, hint, mode, message):
    raw = base_config(tmp_path)
    raw["distillation"] = {"mode": mode, "hint": hint, **({"soft_label": "intent"} if mode == "offline" else {})}
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(cfg_path), "-q", "--output", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
