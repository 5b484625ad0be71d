"""Out-of-fold soft labels (distillation.cross_fit): no training row's soft label comes from a
teacher that saw it; off means the run of before, bit for bit; bad settings are one line; an
interrupted cross-fit resumes to the uninterrupted result."""
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import base_config, cfg_of, train_interrupted
from distill import phases
from distill.cli import app
from distill.data.dataset import load_splits
from distill.data.loader import InMemoryLoader
from distill.member import Member
from distill.run import build_member, train
from distill.training.loop import Plan

runner = CliRunner()


def async_config(tmp_path, n_train=300, **distillation):
    raw = base_config(tmp_path, n_train=n_train)
    raw["distillation"] = {"mode": "async", "weight": 0.7, **distillation}
    raw["teacher"]["dropout"] = 0.2  # the RNG matters: the folds must not shift the student's dropout masks
    raw["student"]["dropout"] = 0.2
    raw["train"].update(epochs=2, batch_size=64)
    return raw


def test_subset_loader_yields_only_its_rows_in_an_order_set_by_seed_and_epoch(tmp_path):
    cfg = cfg_of(async_config(tmp_path, n_train=200))
    loader = InMemoryLoader(load_splits(cfg).train, 32, seed=5)
    rows = torch.arange(0, 200, 3)
    sub = loader.subset(rows)
    seen = torch.cat([b.index for b in sub.epoch(1)])
    assert sorted(seen.tolist()) == rows.tolist() and len(sub) == 3 and sub.num_rows == len(rows)
    assert torch.equal(seen, torch.cat([b.index for b in loader.subset(rows).epoch(1)]))  # (seed, epoch) alone
    assert not torch.equal(seen, torch.cat([b.index for b in sub.epoch(2)]))
    assert torch.equal(torch.cat([b.index for b in loader.epoch(1)]), loader.order(1))  # the whole split as before


def test_each_training_rows_soft_label_comes_from_a_teacher_that_did_not_see_it(tmp_path, monkeypatch):
    cfg = cfg_of(async_config(tmp_path))
    splits = load_splits(cfg)
    loader = InMemoryLoader(splits.train, cfg.train.batch_size, cfg.train.seed)
    plan, label = Plan.from_config(cfg), splits.encoders.label
    k, n = 3, len(splits.train)
    teachers, seen = [], {}
    original = InMemoryLoader.epoch

    def epoch(self, e, start=0):  # record the rows each fold's teacher trains on
        for batch in original(self, e, start):
            seen.setdefault(len(teachers) - 1, set()).update(batch.index.tolist())
            yield batch

    monkeypatch.setattr(InMemoryLoader, "epoch", epoch)

    def make(i):
        m = build_member(cfg, splits.encoders, "teacher", seed=100 + i)
        teachers.append(Member(f"teacher_fold{i + 1}", "teacher", m.module, m.features))
        return teachers[-1]

    rng = torch.get_rng_state()
    oof = phases.cross_fit_teacher_logits(make, loader, splits.valid, label, plan, k, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # what runs next does not depend on K
    assert oof.logits.shape == (n,) and len(teachers) == k == len(oof.teachers)
    assert sorted(torch.bincount(oof.fold).tolist()) == [100, 100, 100]
    monkeypatch.setattr(InMemoryLoader, "epoch", original)
    for i, teacher in enumerate(teachers):
        held = set((oof.fold == i).nonzero().squeeze(1).tolist())
        assert not seen[i] & held  # never trained on the rows it labels
        assert seen[i] | held == set(range(n))  # and trained on all the others
        own = phases.cache_teacher_logits(teacher, loader)  # its logits on every row
        rows = torch.tensor(sorted(held))
        assert torch.allclose(oof.logits[rows], own[rows])  # the held-out rows' soft labels are its own
        assert oof.teachers[i]["train_rows"] == n - len(held) and "auc" in oof.teachers[i]["valid"]


def test_cross_fit_off_is_the_run_of_before_and_on_changes_only_the_student(tmp_path):
    raw = async_config(tmp_path)
    plain = train(cfg_of(raw), output=tmp_path / "plain", quiet=True)
    raw["distillation"]["cross_fit"] = 1  # 1 = off
    one = train(cfg_of(raw), output=tmp_path / "one", quiet=True)
    assert one.metrics == plain.metrics  # bit for bit
    raw["distillation"]["cross_fit"] = 3
    cf = train(cfg_of(raw), output=tmp_path / "cf", quiet=True)
    assert cf.metrics["teacher"] == plain.metrics["teacher"]  # the full teacher scores valid and test
    assert cf.metrics["baseline"] == plain.metrics["baseline"]  # the folds leave the baseline's RNG alone
    assert cf.metrics["student"] != plain.metrics["student"]  # the student learned other soft labels
    info = json.loads((tmp_path / "cf" / "run.json").read_text())["phases"]["cross_fit"]
    assert info["k"] == 3 and [t["fold"] for t in info["teachers"]] == [1, 2, 3]
    assert all(0.5 < t["valid"]["auc"] <= 1 for t in info["teachers"])
    assert info["train_loss_full_teacher"] < info["train_loss_out_of_fold"]  # the full teacher knows its rows
    assert not (tmp_path / "cf" / "checkpoints").exists()


@pytest.mark.parametrize("phase", ["cross_fit_2", "student"])
def test_a_run_interrupted_in_or_after_the_cross_fit_resumes_to_the_same_result(tmp_path, phase):
    raw = async_config(tmp_path, cross_fit=3)
    raw["train"]["checkpoint_every"] = 4
    reference = train(cfg_of(raw), output=tmp_path / "ref", quiet=True)
    train_interrupted(raw, tmp_path / "run", steps=7, phase=phase)
    if phase == "student":  # the cross-fit finished: its logits wait beside the checkpoints
        assert (tmp_path / "run.partial" / "checkpoints" / "cross_fit_logits.pt").is_file()
    run = train(cfg_of(raw), output=tmp_path / "run", quiet=True, resume=True)
    assert run.metrics == reference.metrics
    ours, theirs = (json.loads((d / "run.json").read_text())["phases"]["cross_fit"] for d in (tmp_path / "run", tmp_path / "ref"))
    assert ours["teachers"] == theirs["teachers"]


@pytest.mark.parametrize("mode, sets, message", [
    ("sync", ["distillation.cross_fit=3"], "distillation.cross_fit: mode 'sync' trains the teacher alongside"),
    ("offline", ["distillation.cross_fit=3", "distillation.soft_label=dwell"],
     "distillation.cross_fit: mode 'offline' reads the teacher's scores from a column"),
    ("async", ["distillation.cross_fit=0"], "cross_fit"),
    ("async", ["distillation.cross_fit=3", "data.streaming=true"], "distillation.cross_fit: needs the training split in memory"),
    ("async", ["distillation.cross_fit=301"], "distillation.cross_fit: 301 folds need 2 ≤ K ≤ the training rows (300)"),
])
def test_bad_cross_fit_settings_are_one_line(tmp_path, mode, sets, message):
    raw = async_config(tmp_path)
    raw["distillation"]["mode"] = mode
    raw["train"]["epochs"] = 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    args = ["train", str(path), "--no-report", "-q"]
    for s in sets:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert len([line for line in r.output.strip().splitlines() if line.startswith("error:")]) == 1, r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
