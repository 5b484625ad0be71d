"""The public phases, the recipe table, the step functions and the device seam."""
import typing

import pytest
import torch

from conftest import base_config, cfg_of
from distill import device, phases, recipes
from distill.config import DistillationConfig
from distill.data.batch import Batch
from distill.data.dataset import load_splits
from distill.data.loader import InMemoryLoader
from distill.errors import DistillError
from distill.run import build_member, train
from distill.training import single
from distill.training.common import evaluate
from distill.training.loop import Plan
from distill.training.single import single_step
from distill.training.sync import Pair, sync_step


def test_a_sweep_reuses_one_teacher_one_cache_and_one_baseline(tmp_path, monkeypatch):
    raw = base_config(tmp_path, n_train=300)
    raw["train"].update(epochs=1, batch_size=64)
    cfg = cfg_of(raw)
    splits = load_splits(cfg)  # one data set for every fit
    loader = InMemoryLoader(splits.train, cfg.train.batch_size, cfg.train.seed)
    plan, label, enc = Plan.from_config(cfg), splits.encoders.label, splits.encoders
    fits = []
    original = single.train_loop
    monkeypatch.setattr(single, "train_loop", lambda phase, *a, **kw: fits.append(phase) or original(phase, *a, **kw))

    teacher = build_member(cfg, enc, "teacher")
    phases.fit_teacher(teacher, loader, splits.valid, label, plan)
    logits = phases.cache_teacher_logits(teacher, loader)
    assert logits.shape == (300,) and not any(p.requires_grad for p in teacher.module.parameters())
    baseline = build_member(cfg, enc, "baseline")
    phases.fit_baseline(baseline, loader, splits.valid, label, plan)
    students = {}
    for lam, T in [(0.0, 1.0), (0.5, 1.0), (0.5, 3.0)]:
        students[lam, T] = build_member(cfg, enc, "student")
        phases.fit_student(students[lam, T], logits, loader, splits.valid, label, plan, lam=lam, temperature=T)

    assert fits == ["teacher", "baseline", "student", "student", "student"]  # the teacher and baseline once
    zero = students[0.0, 1.0].module.state_dict()
    assert all(torch.equal(v, zero[k]) for k, v in baseline.module.state_dict().items())  # λ = 0 is the baseline, bit for bit
    assert evaluate(students[0.0, 1.0].module, splits.test, baseline.features, label) == \
        evaluate(baseline.module, splits.test, baseline.features, label)
    a, b = students[0.5, 1.0].module.state_dict(), students[0.5, 3.0].module.state_dict()
    assert not all(torch.equal(v, b[k]) for k, v in a.items())  # T reaches the student


def test_the_recipe_table_lists_every_mode_and_declares_what_train_builds(tmp_path):
    modes = typing.get_args(DistillationConfig.model_fields["mode"].annotation)
    assert set(recipes.RECIPES) == set(modes)
    raw = base_config(tmp_path, n_train=100)
    raw["train"].update(epochs=1, batch_size=64)
    import numpy as np
    import pyarrow.parquet as pq
    t = pq.read_table(raw["data"]["train"])
    pq.write_table(t.append_column("soft", [1 / (1 + np.exp(-t["intent"].to_numpy()))]), raw["data"]["train"])
    for mode in modes:
        for baseline in (True, False):
            if mode == "none" and not baseline:
                continue
            raw["distillation"] = {"mode": mode, **({"soft_label": "soft"} if mode == "offline" else {})}
            raw["train"]["baseline"] = baseline
            raw["output"] = str(tmp_path / f"{mode}_{baseline}")
            cfg = cfg_of(raw)
            run = train(cfg, quiet=True)
            assert list(run.models) == recipes.members(cfg), (mode, baseline)
            assert [m.name for m in run.members] == recipes.members(cfg)
            assert {m.name: m.role for m in run.members} == {n: "teacher" if n == "teacher" else "student" for n in run.models}


def test_a_mode_checks_its_own_part_of_the_config(tmp_path):
    raw = base_config(tmp_path, n_train=50)
    raw["distillation"] = {"mode": "offline"}
    with pytest.raises(DistillError, match="mode 'offline' needs"):
        recipes.RECIPES["offline"].check(cfg_of(raw))
    raw["distillation"] = {"mode": "none", "soft_label": "price"}
    assert recipes.RECIPES["none"].check(cfg_of(raw)) == ["distillation.soft_label is ignored in mode 'none'"]


def _batch():
    torch.manual_seed(0)
    return Batch({"a": torch.randn(8, 2), "b": torch.randn(8, 2)}, y=(torch.rand(8) > 0.5).float(),
                 index=torch.arange(8))


class Lin(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name, self.lin = name, torch.nn.Linear(2, 1)

    def forward(self, batch):
        return self.lin(batch[self.name]).squeeze(-1)  # (B,)


def test_step_functions_return_their_named_losses():
    from distill.losses import distill_loss, hard_loss
    batch, t, s = _batch(), Lin("a"), Lin("b")
    import contextlib
    out = sync_step(Pair(t, s), ["a", "b"], ["b"], "binary", contextlib.nullcontext(), temperature=2.0)(batch, 0.25)
    assert list(out) == ["L_s", "L_d", "L_t", "loss"]
    zt, zs = t(batch), s(batch)
    assert torch.equal(out["L_t"], hard_loss(zt, batch.y, "binary"))
    assert torch.equal(out["L_d"], distill_loss(zs, zt, "binary", 2.0))
    assert torch.allclose(out["loss"], out["L_t"] + 0.75 * out["L_s"] + 0.25 * out["L_d"])
    alone = single_step(s, ["b"], "binary", contextlib.nullcontext())(batch, 0.7)
    assert list(alone) == ["L_s", "loss"] and torch.equal(alone["loss"], alone["L_s"])
    soft = single_step(s, ["b"], "binary", contextlib.nullcontext(), soft=lambda b: zt.detach()[b.index])(batch, 0.5)
    assert list(soft) == ["L_s", "L_d", "loss"]
    assert torch.allclose(soft["loss"], 0.5 * soft["L_s"] + 0.5 * soft["L_d"])


def test_the_device_seam_is_the_cpu_and_a_batch_moves_whole():
    assert device.resolve() == device.resolve("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DistillError, match="device: 'cuda' asked for a GPU but torch sees no CUDA device"):
            device.resolve("cuda")
    batch = _batch()
    assert batch.to(torch.device("cpu")) is batch  # nothing to copy
    moved = batch.to(torch.device("meta"))
    assert all(t.device.type == "meta" for t in [*moved.features.values(), moved.y, moved.index])
    assert moved.weight is None and batch.features["a"].device.type == "cpu"
    with device.autocast("bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with device.autocast("fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_the_loop_keeps_the_best_of_any_number_of_models(tmp_path):
    import json
    from distill.losses import hard_loss
    from distill.training.log import RunLog
    from distill.training.loop import Watched, train_loop
    raw = base_config(tmp_path, n_train=300)
    raw["train"].update(batch_size=32, lr=0.05, eval_every=3)
    cfg = cfg_of(raw)
    splits = load_splits(cfg)
    members = [build_member(cfg, splits.encoders, n) for n in ("teacher", "student", "baseline")]

    def step(batch, lam):  # three models, one loss each, one optimizer step for all
        losses = {m.name: hard_loss(m.module(batch.select(m.features)), batch.y, "binary") for m in members}
        return losses | {"loss": sum(losses.values())}

    plan = Plan(epochs=3, metric="auc", patience=None, eval_every=3, lr=0.05)
    log = RunLog(tmp_path, quiet=True, tensorboard=False)
    summary = train_loop("three", step, plan.optimizer(*(m.module for m in members)),
                         InMemoryLoader(splits.train, 32, 0).narrowed(members[0].features),
                         [Watched(m) for m in members], splits.valid, splits.encoders.label, plan, log=log)
    log.close()
    evals = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert [e["model"] for e in evals[:3]] == ["teacher", "student", "baseline"]
    assert len(evals) == 3 * -(-summary["steps"] // 3)
    for m in members:  # each ends with its own best weights, which may be from another moment than the others'
        best = max(e["auc"] for e in evals if e["model"] == m.name)
        assert summary["best_valid"][m.name]["auc"] == best
        assert evaluate(m.module, splits.valid, m.features, splits.encoders.label)["auc"] == best
