"""The CLI end to end on small generated data, and what a user sees when the input is wrong."""
import copy
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import DistillError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_evaluate_and_compare(tmp_path, config_file):
    out = tmp_path / "run"
    r = invoke("train", config_file, "--output", out, "-q", "--set", "train.epochs=2")
    assert r.exit_code == 0, r.output
    assert "gain" in r.output and "student" in r.output
    for name in ("config.yaml", "schema.json", "encoders.json", "metrics.json", "steps.jsonl", "evals.jsonl",
                 "teacher.safetensors", "student.safetensors", "baseline.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student", "baseline"} and set(metrics["student"]) == {"valid", "test"}
    assert {"auc", "gauc", "logloss", "accuracy"} <= set(metrics["student"]["test"])
    schema = json.loads((out / "schema.json").read_text())
    assert [f["name"] for f in schema["privileged"]] == ["intent", "dwell"]

    r = invoke("evaluate", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["student"]["test"] == pytest.approx(metrics["student"]["test"])

    # new data without the privileged columns: the student is evaluated, the teacher skipped
    test = pq.read_table(yaml.safe_load(config_file.read_text())["data"]["test"])
    pq.write_table(test.drop_columns(["intent", "dwell"]), tmp_path / "serving_only.parquet")
    r = invoke("evaluate", out, "--data", tmp_path / "serving_only.parquet", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["teacher"]["data"] == {"skipped": "missing column 'intent'"}
    assert result["student"]["data"]["auc"] == pytest.approx(metrics["student"]["test"]["auc"])
    # a file no model can read (here without a serving column) is an error, not a table of skips and exit 0
    pq.write_table(test.drop_columns(["price"]), tmp_path / "no_price.parquet")
    r = invoke("evaluate", out, "--data", tmp_path / "no_price.parquet")
    assert r.exit_code == 2 and "no_price.parquet: no model can be evaluated: missing column 'price'" in r.output, r.output

    cmp_dir = tmp_path / "cmp"
    r = invoke("compare", config_file, "--seeds", 2, "--output", cmp_dir, "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads((cmp_dir / "compare.json").read_text())
    assert summary["split"] == "test" and summary["seeds"] == 2
    for role in ("teacher", "baseline", "student"):
        assert set(summary[role]["auc"]) == {"mean", "std"}
    s, b, t = (summary[k]["auc"]["mean"] for k in ("student", "baseline", "teacher"))
    assert summary["gap_closed"]["auc"] == pytest.approx((s - b) / (t - b))
    assert (cmp_dir / "compare.md").read_text().count("| teacher |") == 1
    assert (cmp_dir / "seed_0" / "metrics.json").is_file() and (cmp_dir / "seed_1" / "metrics.json").is_file()


def bad_case(tmp_path, raw, mutate):
    raw = copy.deepcopy(raw)
    mutate(raw, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _write(raw, split, table):
    pq.write_table(table, raw["data"][split])


BAD = {
    "unknown key": (lambda raw, tmp: raw["train"].update(lr_rate=1), "unknown key 'train.lr_rate' (did you mean 'lr'?)"),
    "missing column": (lambda raw, tmp: raw["features"].append({"name": "colour", "type": "categorical"}),
                       "train.parquet: missing column 'colour'"),
    "label outside task": (lambda raw, tmp: _write(raw, "train", pq.read_table(raw["data"]["train"]).set_column(6, "click", [[3] * 600])),
                           "label 'click' must be 0 or 1"),
    "feature twice": (lambda raw, tmp: raw["features"].append({"name": "user", "type": "numeric"}), "feature 'user' is listed twice"),
    "student privileged": (lambda raw, tmp: raw["student"].update(features=["user", "dwell"]), "student.features: 'dwell' is privileged"),
    "empty split": (lambda raw, tmp: _write(raw, "valid", pq.read_table(raw["data"]["valid"]).slice(0, 0)), "valid.parquet: the split has no rows"),
    "missing file": (lambda raw, tmp: raw["data"].update(test=str(tmp / "nope.parquet")), "nope.parquet: file not found"),
    "ragged csv": (lambda raw, tmp: ((tmp / "r.csv").write_text("user,click\n1,0\n2,1,5\n"), raw["data"].update(train=str(tmp / "r.csv"))),
                   "r.csv: cannot read as csv"),
    "empty file": (lambda raw, tmp: ((tmp / "e.csv").write_text(""), raw["data"].update(train=str(tmp / "e.csv"))), "e.csv: the file is empty"),
    "wrong column type": (lambda raw, tmp: _write(raw, "train", pq.read_table(raw["data"]["train"]).set_column(2, "price", [["cheap"] * 600])),
                          "column 'price' is string, expected numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path, raw_config, case):
    mutate, message = BAD[case]
    path = bad_case(tmp_path, raw_config, mutate)
    r = invoke("train", path, "-q")
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", ""), r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()  # nothing half-written


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path, config_file):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    r = invoke("train", config_file, "-q")
    assert r.exit_code == 2 and "pass --overwrite" in r.output
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_bad_set_override(config_file):
    r = invoke("train", config_file, "--set", "train.epochs")
    assert r.exit_code == 2 and "write it as key=value" in r.output


def test_evaluate_a_directory_that_is_not_a_run(tmp_path):
    r = invoke("evaluate", tmp_path)
    assert r.exit_code == 2 and "not a distill run directory" in r.output


def test_real_process_exit_code_and_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train: x.parquet}\ntask: {label: y}\nfeatures: []\nbogus: 1\n")
    p = subprocess.run([sys.executable, "-m", "distill", "train", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "unknown key 'bogus'" in p.stderr and "Traceback" not in p.stderr


def test_demo_runs_and_the_student_beats_the_baseline(tmp_path):
    r = invoke("demo", "--output", tmp_path / "demo", "--seeds", 1, "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "demo" / "compare" / "compare.json").read_text())
    assert summary["teacher"]["auc"]["mean"] > summary["baseline"]["auc"]["mean"] + 0.05
    assert "distill demo" in r.output and "gap closed" in r.output
    assert "why: teacher_peaked_early" in r.output  # the diagnostics, as after compare (README, "Diagnostics")


# ----------------------------------------------------------------------------- results and small UX (issue 12: 18–20)


def test_version_and_flags_without_a_bool_metavar():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == "distill 0.1.0"
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "160"})
    flags = [line for line in r.output.splitlines() if any(f in line for f in ("--overwrite", "--quiet", "--no-report"))]
    assert len(flags) == 3 and not any("<bool>" in line for line in flags), r.output


@pytest.mark.parametrize("user_features, message", [
    (["usr"], "student.user_features: 'usr' is not among the student's features (did you mean 'user'?)"),
    (["intent"], "student.user_features: 'intent' is privileged"),
])
def test_user_features_typo_and_privileged(tmp_path, raw_config, user_features, message):
    path = bad_case(tmp_path, raw_config, lambda raw, tmp: raw["student"].update(model="two_tower", user_features=user_features))
    r = invoke("validate", path)
    assert r.exit_code == 2 and message in r.output.replace("\n", ""), r.output


def test_compare_says_teacher_no_better_and_leaves_out_a_metric_without_value(tmp_path, raw_config):
    # a teacher on the one column that carries no signal, and groups of one row each (no GAUC anywhere)
    raw_config["teacher"]["features"] = ["price"]
    raw_config["task"]["group"] = "price"
    raw_config["train"]["epochs"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    r = invoke("compare", path, "--seeds", 1, "--output", tmp_path / "cmp", "-q", "--no-report")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert summary["gap_closed"]["auc"] is None and "gauc" in summary["verdict"]["left_out"]
    v = summary["verdict"]["metrics"]["auc"]
    assert v["method"] == "paired bootstrap over 300 test rows" and v["low"] < v["gain"] < v["high"]
    assert v["verdict"] in ("gain", "no gain (within noise)", "harm")
    gap_row = next(line for line in r.output.splitlines() if line.startswith("| gap closed |"))
    assert "teacher no better" in gap_row and "%" not in gap_row
    assert "nan" not in r.output and "Left out: gauc: no group has both classes" in r.output
    assert "**Verdict** — auc:" in r.output


def test_train_prints_the_bootstrap_verdict_and_predict_takes_rows(tmp_path, config_file):
    import numpy as np

    from distill.run import load_run
    out = tmp_path / "run"
    r = invoke("train", config_file, "--output", out, "-q", "--no-report", "--set", "train.epochs=1",
               "--set", "train.data_on_device=always")
    assert r.exit_code == 0, r.output
    assert "warning: train.data_on_device: always is ignored on cpu" in r.output  # -q drops progress, not warnings
    assert "verdict — auc:" in r.output and "paired bootstrap over 300 test rows" in r.output.replace("\n", "")
    # piped (not a terminal), the table keeps its natural width: no 'baseli…', the gain row on one line
    assert "│ gain (student − baseline) │ test" in r.output and "…" not in r.output, r.output
    saved = np.load(out / "test_predictions.npz")
    assert set(saved.files) == {"y", "group", "teacher", "student", "baseline"} and len(saved["y"]) == 300

    run = load_run(out)
    test_path = yaml.safe_load(config_file.read_text())["data"]["test"]
    table = pq.read_table(test_path)
    want = run.predict(test_path)
    assert np.allclose(run.predict(table.to_pylist()), want)  # a list of row dicts
    assert run.evaluate(table.to_pylist())["student"]["data"]["auc"] == pytest.approx(run.metrics["student"]["test"]["auc"])
    with pytest.raises(TypeError, match="expected a path, a pyarrow Table, a pandas DataFrame"):
        run.predict(42)
    # a notebook's rough edges: a short repr, a misspelt role, a path where a Config belongs
    assert repr(run) == f"Run('{out}', binary on 'click'; teacher dnn, student dnn, baseline dnn)"
    with pytest.raises(DistillError, match="role: 'techer' is not a model of this run"):
        run.predict(test_path, role="techer")
    import distill
    with pytest.raises(TypeError, match=r"expected a distill Config, not str: load it first with distill.load_config\(path\)"):
        distill.train(str(config_file))
    with pytest.raises(TypeError, match="expected a distill Config, not PosixPath: load it first"):
        distill.compare(config_file, seeds=1)


def test_predict_takes_a_pandas_dataframe(tmp_path, config_file):
    pd = pytest.importorskip("pandas")  # not a dependency of distill
    import numpy as np

    from distill.run import load_run
    r = invoke("train", config_file, "--output", tmp_path / "run", "-q", "--no-report", "--set", "train.epochs=1")
    assert r.exit_code == 0, r.output
    run = load_run(tmp_path / "run")
    test_path = yaml.safe_load(config_file.read_text())["data"]["test"]
    frame = pd.read_parquet(test_path)
    assert np.allclose(run.predict(frame), run.predict(test_path))
    assert "auc" in run.evaluate(frame)["student"]["data"]


def test_distill_compare_stays_the_function_once_its_module_is_imported():
    """README: summary = distill.compare(cfg, seeds=5). Importing the submodule distill.compare (as the
    CLI does) binds the package's attribute to the module unless the package keeps the function."""
    import inspect
    import distill
    import distill.compare  # noqa: F401
    from distill.compare import to_markdown  # noqa: F401  (the module's other names still import)
    assert inspect.isfunction(distill.compare) and distill.compare.__name__ == "compare"
    assert inspect.isfunction(distill.compare)  # a second access too


def test_dir_lists_the_public_api():
    import distill
    assert {"train", "load_run", "Run", "compare", "load_config", "DistillError"} <= set(dir(distill))


def test_train_and_compare_on_one_output_refuse_each_other_by_its_mark(tmp_path, config_file):
    """`compare -o OUT` then `train -o OUT` (or the other order): one line naming the other kind's
    mark, --overwrite or not, and the directory as it was; never the wrong hint to pass --overwrite."""
    quick = ("-q", "--no-report")
    run, cmp = tmp_path / "r", tmp_path / "c"  # as train and compare leave them (their marks): no seconds of training
    (run / "report").mkdir(parents=True)
    (cmp / "seed_0").mkdir(parents=True)
    for path, mark in ((run / "run.json", "{}"), (run / "metrics.json", "{}"), (cmp / "compare.json", "{}"), (cmp / "compare.md", "")):
        path.write_text(mark)
    before = {p: sorted(x.name for x in p.iterdir()) for p in (run, cmp)}
    for args, needle in [(("compare", config_file, "-o", run, "--seeds", 1), f"{run}: is a distill run directory (run.json), not a compare"),
                         (("train", config_file, "-o", cmp), f"{cmp}: is a distill compare directory (compare.json), not a run")]:
        for overwrite in ((), ("--overwrite",)):
            r = invoke(*args, *overwrite, *quick)
            assert r.exit_code == 2, r.output
            line = " ".join(r.output.split())  # the console may wrap it
            assert needle in line and "choose another output" in line and "pass --overwrite" not in line, r.output
    assert {p: sorted(x.name for x in p.iterdir()) for p in (run, cmp)} == before


def test_every_commands_help_has_no_type_placeholder_and_describes_every_option():
    """Walks `distill --help` and each command's: no `<bool>` beside a flag, no Python type spelled
    out (`<list[str]>`), every option and argument has a description, and every command that
    writes something takes -o for where."""
    import typer.main
    group = typer.main.get_command(app)
    assert len(group.commands) >= 12
    for name, command in [("", group), *group.commands.items()]:
        r = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output and "<list[" not in r.output, f"distill {name} --help:\n{r.output}"
        if name in ("train", "compare", "tune", "demo", "report", "export", "predict", "embed", "init"):
            assert any("-o" in p.opts for p in command.params), f"distill {name}: writes something, takes no -o"
        for param in command.params:
            assert (param.help or "").strip(), f"distill {name}: {param.opts[0]} has no help text"
            assert param.opts[0] in r.output or param.name in r.output


def test_gap_closed_makes_no_claim_for_a_metric_without_a_teacher_interval():
    """1 seed: the bootstrap covers auc, logloss, ...; ndcg@10 has no interval, and the teacher 0.67
    against the baseline's 0.51 read "teacher no better" in `make demo --seeds 1`. Now "–"."""
    from distill.results import gap_text, headline
    no_interval = {"gain": 0.07, "low": None, "high": None, "verdict": None, "teacher_gain": 0.16,
                   "teacher_low": None, "teacher_high": None, "gap_closed": None}
    assert gap_text(no_interval) == "–"
    line = headline({"primary": "ndcg@10", "method": "paired bootstrap", "metrics": {"ndcg@10": no_interval}})
    assert "teacher no better" not in line and line.startswith("ndcg@10: no verdict")
    beaten = {**no_interval, "low": 0.01, "high": 0.1, "teacher_low": -0.01, "teacher_high": 0.2}
    assert gap_text(beaten) == "teacher no better"  # an interval that holds 0 still says so


def test_a_misspelt_format_or_role_gets_a_suggestion(tmp_path):
    """--format onnxx and --role studnet say which one was meant, in one line, as a misspelt config choice does."""
    r = invoke("export", tmp_path, "--format", "onnxx")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == "error: --format: 'onnxx' is not one of onnx, torchscript (did you mean 'onnx'?)", r.output
    r = invoke("export", tmp_path, "--format", "torchscrpt")
    assert r.exit_code == 2 and "(did you mean 'torchscript'?)" in r.output, r.output
    r = invoke("evaluate", tmp_path, "--role", "studnet")
    assert r.exit_code == 2 and "--role: 'studnet' is not one of" in r.output and "(did you mean 'student'?)" in r.output, r.output
