"""Diagnostics: each finding fires on handcrafted logs where it applies and stays silent where it does
not; one tiny run through the CLI where the teacher overfits and the user is told so."""
import json

import pytest
import yaml
from typer.testing import CliRunner

from distill import diagnostics as D
from distill.cli import app
from conftest import base_config


def teacher_evals(aucs, model="teacher"):
    return [{"phase": "sync", "model": model, "epoch": k, "step": 10 * (k + 1), "auc": a} for k, a in enumerate(aucs)]


def metrics(t_auc, b_auc, t_gauc, b_gauc, split="test"):
    return {"teacher": {split: {"auc": t_auc, "gauc": t_gauc}}, "baseline": {split: {"auc": b_auc, "gauc": b_gauc}},
            "student": {split: {"auc": b_auc, "gauc": b_gauc}}}


# ----------------------------------------------------------------------------- teacher peaked early


def test_peaked_early_fires_with_the_epoch():
    f = D.teacher_peaked_early(teacher_evals([0.70, 0.80, 0.78, 0.77, 0.76]), "auc")
    assert f is not None and f.code == "teacher_peaked_early"
    assert f.evidence["best_epoch"] == 2 and f.evidence["evaluations"] == 5
    assert f.evidence["drop"] == pytest.approx(0.04)
    assert "epoch 2" in f.message


@pytest.mark.parametrize("aucs", [
    [0.70, 0.75, 0.78, 0.80],          # still improving
    [0.70, 0.72, 0.80, 0.79, 0.78],    # best in the second half
    [0.80, 0.799, 0.798, 0.797],       # peaked first, but the fall is within PEAK_DROP
    [0.80, 0.70],                      # too few evaluations to speak of a peak
])
def test_peaked_early_silent(aucs):
    assert D.teacher_peaked_early(teacher_evals(aucs), "auc") is None


def test_peaked_early_lower_is_better_and_ignores_other_models():
    evals = [{"model": "teacher", "epoch": k, "step": k, "logloss": v} for k, v in enumerate([0.50, 0.45, 0.52, 0.60])]
    assert D.teacher_peaked_early(evals, "logloss").evidence["best_epoch"] == 2
    assert D.teacher_peaked_early(teacher_evals([0.80, 0.70, 0.60], model="student"), "auc") is None


# ----------------------------------------------------------------------------- AUC but not GAUC


def test_between_groups_fires_when_auc_gains_but_gauc_does_not():
    f = D.teacher_gain_between_groups([metrics(0.756, 0.701, 0.714, 0.716)], "test")
    assert f is not None and f.code == "teacher_gain_between_groups"
    assert f.evidence["auc_gain"] == pytest.approx(0.055) and f.evidence["gauc_gain"] == pytest.approx(-0.002)


def test_between_groups_silent():
    assert D.teacher_gain_between_groups([metrics(0.756, 0.701, 0.760, 0.716)], "test") is None  # GAUC gains too
    assert D.teacher_gain_between_groups([metrics(0.702, 0.701, 0.700, 0.716)], "test") is None  # AUC within the margin
    no_groups = [{r: {"test": {"auc": a}} for r, a in (("teacher", 0.8), ("baseline", 0.7))}]
    assert D.teacher_gain_between_groups(no_groups, "test") is None


def test_between_groups_uses_the_seeds_spread():
    steady = [metrics(0.75 + e, 0.70, 0.71, 0.71 + e) for e in (0.0, 0.002, -0.002)]
    assert D.teacher_gain_between_groups(steady, "test") is not None
    # the same mean AUC gain, but one seed's teacher is worse than its baseline: not more than the noise
    noisy = [metrics(t, 0.70, 0.71, 0.71) for t in (0.85, 0.70, 0.60)]
    assert D.teacher_gain_between_groups(noisy, "test") is None


# ----------------------------------------------------------------------------- over-confident teacher


def test_overconfident_fires_and_gives_the_baselines_gap():
    f = D.teacher_overconfident({"teacher": 0.30, "baseline": 0.58}, {"teacher": 0.60, "baseline": 0.62})
    assert f is not None and f.code == "teacher_overconfident"
    assert f.evidence["relative_gap"] == pytest.approx(0.5)
    assert f.evidence["baseline_relative_gap"] == pytest.approx(0.04 / 0.62)


def test_overconfident_silent():
    assert D.teacher_overconfident({"teacher": 0.55}, {"teacher": 0.60}) is None  # 8 % lower: ordinary
    assert D.teacher_overconfident({}, {"teacher": 0.60}) is None


# ----------------------------------------------------------------------------- caught up


def test_caught_up_fires():
    f = D.student_caught_up([{100: 0.03, 200: 0.02, 300: 0.001}], [0.001], "auc")
    assert f is not None and f.code == "student_caught_up"
    assert f.evidence["best_step"] == 100 and f.evidence["final_lead"] == pytest.approx(0.001)


def test_caught_up_silent():
    assert D.student_caught_up([{100: 0.03, 200: 0.03}], [0.03], "auc") is None  # still ahead at the end
    assert D.student_caught_up([{100: 0.0, 200: 0.001}], [0.0], "auc") is None  # never ahead
    assert D.student_caught_up([{100: 0.0, 200: 0.03}], [0.0], "auc") is None  # ahead only at the last evaluation
    # over seeds: an early lead that is one seed's luck is no lead
    assert D.student_caught_up([{1: 0.06, 2: 0.0}, {1: -0.03, 2: 0.0}, {1: 0.0, 2: 0.0}], [0.0, 0.0, 0.0], "auc") is None


# ----------------------------------------------------------------------------- diagnose() on handcrafted directories


def handcrafted_run(d, raw, evals, metrics_d):
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(raw))
    (d / "metrics.json").write_text(json.dumps(metrics_d))
    (d / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))


def curves(teacher, student, baseline):
    return (teacher_evals(teacher) + teacher_evals(student, "student")
            + [{**r, "phase": "baseline"} for r in teacher_evals(baseline, "baseline")])


def test_diagnose_a_run_and_a_compare_directory(tmp_path):
    raw = base_config(tmp_path)
    m = metrics(0.76, 0.70, 0.714, 0.716)
    for split in ("valid",):
        m["teacher"][split], m["baseline"][split] = {"auc": 0.8, "gauc": 0.7}, {"auc": 0.7, "gauc": 0.7}
        m["student"][split] = {"auc": 0.701, "gauc": 0.7}
    evals = curves([0.70, 0.80, 0.78, 0.76], [0.60, 0.68, 0.70, 0.701], [0.55, 0.62, 0.69, 0.70])
    handcrafted_run(tmp_path / "run", raw, evals, m)
    found = {f.code: f for f in D.diagnose(tmp_path / "run")}
    assert set(found) == {"teacher_peaked_early", "teacher_gain_between_groups", "student_caught_up"}
    assert found["student_caught_up"].evidence["best_step"] == 20  # the student led by 0.06 at the second evaluation

    # a compare directory: seed_0 as above, seed_1 without the early peak (half the seeds: still reported)
    cmp_dir = tmp_path / "cmp"
    handcrafted_run(cmp_dir / "seed_0", raw, evals, m)
    handcrafted_run(cmp_dir / "seed_1", raw, curves([0.70, 0.75, 0.78, 0.80], [0.60, 0.68, 0.70, 0.701],
                                                    [0.55, 0.62, 0.69, 0.70]), m)
    (cmp_dir / "compare.json").write_text("{}")
    found = {f.code: f for f in D.diagnose(cmp_dir)}
    assert found["teacher_peaked_early"].evidence["seeds_where_it_holds"] == "1 of 2"
    assert found["teacher_gain_between_groups"].evidence["seeds"] == 2


def test_a_training_file_gone_since_the_run_skips_only_the_overconfidence_check(tmp_path):
    raw = base_config(tmp_path)
    raw["data"]["train"] = str(tmp_path / "moved.parquet")
    handcrafted_run(tmp_path / "run", raw, teacher_evals([0.70, 0.80, 0.78, 0.76]), metrics(0.76, 0.70, 0.714, 0.716))
    (tmp_path / "run" / "teacher.safetensors").write_bytes(b"")  # never loaded: there are no rows to score
    assert [f.code for f in D.diagnose(tmp_path / "run")] == ["teacher_peaked_early", "teacher_gain_between_groups"]


def test_diagnose_silent_on_a_run_where_nothing_applies(tmp_path):
    m = metrics(0.80, 0.70, 0.78, 0.70)
    m["student"]["valid"], m["baseline"]["valid"] = {"auc": 0.75}, {"auc": 0.70}
    handcrafted_run(tmp_path / "run", base_config(tmp_path),
                    curves([0.7, 0.75, 0.8], [0.6, 0.7, 0.75], [0.6, 0.65, 0.7]), m)
    assert D.diagnose(tmp_path / "run") == []


def test_diagnose_not_a_run(tmp_path):
    with pytest.raises(D.DistillError, match="neither a run directory"):
        D.diagnose(tmp_path)


# ----------------------------------------------------------------------------- end to end, through the CLI


def test_cli_train_tells_why_and_the_report_says_it_too(tmp_path):
    # a wide teacher, a high learning rate, 300 rows: best after its first epoch, then it overfits
    raw = base_config(tmp_path, n_train=300, teacher={"hidden": [64, 64], "embedding_dim": 16},
                      train={"epochs": 4, "lr": 0.03, "batch_size": 64})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["train", str(path), "-q"])
    assert r.exit_code == 0, r.output
    assert "why: teacher_peaked_early: The teacher peaked early and then overfit" in r.output
    assert "(epoch 1)" in r.output
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Why: diagnostics" in report and "**teacher_peaked_early**: The teacher peaked early" in report
    # how much each privileged feature adds: `intent` drives the label, `dwell` only its size
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["intent", "dwell"]
    intent_drop = float(rows[0].split("|")[4])
    assert intent_drop > 0.1

    # compare prints them too, over its seeds
    r = CliRunner().invoke(app, ["compare", str(path), "--seeds", "1", "--output", str(tmp_path / "cmp"), "-q", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "why: teacher_peaked_early:" in r.output
