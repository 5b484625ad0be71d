"""Bad input, systematically: every case gets one clear line naming the file, column, key or field,
a non-zero exit (422 for the service), no traceback, and no half-written output."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import base_config, trained_config
from distill.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained run (sync, with a baseline) and its config, shared by the cases."""
    tmp = tmp_path_factory.mktemp("world")
    return tmp, trained_config(tmp)


def train_with(edit: Callable[[dict, Path], None]):
    """A case that edits the config (and maybe the data) and runs `distill train`."""
    def case(tmp: Path, raw: dict, run: Path) -> list[str]:
        raw = copy.deepcopy(raw)
        for split in ("train", "valid", "test"):  # private copies of the data the case may damage
            src = Path(raw["data"][split])
            dst = tmp / src.name
            dst.write_bytes(src.read_bytes())
            raw["data"][split] = str(dst)
        raw["output"] = str(tmp / "out")
        edit(raw, tmp)
        path = tmp / "c.yaml"
        path.write_text(yaml.safe_dump(raw) if isinstance(raw, dict) else raw)
        return ["train", str(path), "-q"]
    return case


def table(raw, split) -> pa.Table:
    return pq.read_table(raw["data"][split])


def put(raw, split, t: pa.Table) -> None:
    pq.write_table(t, raw["data"][split])


def replace_col(t: pa.Table, name: str, values) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, [values])


def raw_text(text: str):
    def case(tmp, raw, run):
        (tmp / "c.yaml").write_text(text)
        return ["train", str(tmp / "c.yaml"), "-q"]
    return case


def validate_with(edit: Callable[[dict, Path], None]):
    """The same edit as train_with, run through `distill validate` (it must say the same line)."""
    return lambda tmp, raw, run: ["validate", train_with(edit)(tmp, raw, run)[1]]


def split_dir(r: dict, t: Path) -> None:
    """The training split as a directory of two files: 'user' is int64 in one, string in the other."""
    full = table(r, "train")
    (t / "split").mkdir()
    pq.write_table(full.slice(0, 300), t / "split" / "a.parquet")
    rest = full.slice(300)
    pq.write_table(replace_col(rest, "user", pa.array([f"u{v}" for v in rest.column("user").to_pylist()])), t / "split" / "b.parquet")
    r["data"]["train"] = str(t / "split")


def float_users(r: dict, split: str, extra: float) -> None:
    """'user' stored as float (ids from a column with nulls, written by pandas), one value replaced."""
    t = table(r, split)
    users = t.column("user").to_numpy().astype("float64")
    users[0] = extra
    put(r, split, replace_col(t, "user", users))


def predict_on(make_data: Callable[[Path, dict], Path], out: str = "out.parquet"):
    """`distill predict` on the run's export (made once) with data the case writes."""
    def case(tmp, raw, run):
        return ["predict", str(export_of(run)), str(make_data(tmp, raw)), "-o", str(tmp / out)]
    return case


def scored_file(edit: Callable[[pa.Table], pa.Table]):
    def make(tmp: Path, raw: dict) -> Path:
        pq.write_table(edit(table(raw, "test")), tmp / "p.parquet")
        return tmp / "p.parquet"
    return make


def export_of(run: Path) -> Path:
    """One ONNX export of the shared run, made on first use."""
    d = run.parent / "export-onnx"
    if not d.exists():
        from distill.serving.export import export
        export(run, "onnx", d)
    return d


def damaged_export(damage: Callable[[Path], None]):
    """A copy of the export, damaged, then used by `distill predict`."""
    def case(tmp, raw, run):
        import shutil
        d = tmp / "export"
        shutil.copytree(export_of(run), d)
        damage(d)
        return ["predict", str(d), raw["data"]["test"], "-o", str(tmp / "out.parquet")]
    return case


def edit_encoders(change: Callable[[dict], None]):
    """encoders.json edited and its sha256 in the manifest updated: a consistent but wrong export
    (hand-edited, or written by a bug), which the checksum alone cannot catch."""
    def damage(d: Path) -> None:
        from distill.serving.export import sha256
        enc = json.loads((d / "encoders.json").read_text())
        change(enc)
        (d / "encoders.json").write_text(json.dumps(enc))
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["sha256"]["encoders.json"] = sha256(d / "encoders.json")
        (d / "manifest.json").write_text(json.dumps(manifest))
    return damage


def edit_manifest(change: Callable[[dict], object]):
    def damage(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps(change(manifest)))
    return damage


def feature(d: dict, name: str, key: str = "features") -> dict:
    return next(f for f in d[key] if f["name"] == name)


def on_run(args: Callable[[Path, Path], list[str]]):
    return lambda tmp, raw, run: args(tmp, run)


def damaged_run(damage: Callable[[Path], None], command: str = "evaluate"):
    def case(tmp, raw, run):
        copy_dir = tmp / "copy"
        import shutil
        shutil.copytree(run, copy_dir)
        damage(copy_dir)
        return [command, str(copy_dir)]
    return case


CASES: dict[str, tuple[Callable, str]] = {
    # ---------------------------------------------------------------- config
    "unknown key": (train_with(lambda r, t: r["train"].update(epocs=2)), "unknown key 'train.epocs' (did you mean 'epochs'?)"),
    "wrong type": (train_with(lambda r, t: r["train"].update(epochs="ten")), "train.epochs: Input should be a valid integer"),
    "missing key": (train_with(lambda r, t: r["task"].pop("label")), "missing key 'task.label'"),
    "misspelt choice": (train_with(lambda r, t: r["distillation"].update(mode="asink")),
                        "distillation.mode: Input should be 'sync', 'async', 'offline' or 'none' (did you mean 'async'?)"),
    "feature twice": (train_with(lambda r, t: r["features"].append({"name": "price", "type": "numeric"})), "feature 'price' is listed twice"),
    "student privileged": (train_with(lambda r, t: r["student"].update(features=["user", "intent"])), "student.features: 'intent' is privileged"),
    "unknown model": (train_with(lambda r, t: r["teacher"].update(model="resnet")), "teacher.model: unknown model 'resnet'"),
    "invalid yaml": (raw_text("data: {train: [unclosed\n"), "not valid YAML"),
    "offline without column": (train_with(lambda r, t: r["distillation"].update(mode="offline")), "distillation.soft_label: mode 'offline' needs"),
    "share with other dims": (train_with(lambda r, t: (r["distillation"].update(share_embeddings=True), r["student"].update(embedding_dim=4))),
                              "teacher.embedding_dim and student.embedding_dim differ"),
    "lambda out of range": (train_with(lambda r, t: r["distillation"].update(weight=1.5)), "distillation.weight: Input should be less than or equal to 1"),
    "two tower multiclass": (train_with(lambda r, t: (r["task"].update(type="multiclass"), r["student"].update(model="two_tower", user_features=["user"]))),
                             "two_tower scores one user-item pair"),
    "bad override": (lambda tmp, raw, run: ["train", "nope.yaml", "--set", "x"], "write it as key=value"),
    # ---------------------------------------------------------------- data files
    "missing data file": (train_with(lambda r, t: r["data"].update(valid=str(t / "gone.parquet"))), "gone.parquet: file not found"),
    "empty file": (train_with(lambda r, t: ((t / "e.csv").write_text(""), r["data"].update(train=str(t / "e.csv")))), "e.csv: the file is empty"),
    "ragged csv": (train_with(lambda r, t: ((t / "r.csv").write_text("user,click\n1,0\n2,1,7\n"), r["data"].update(train=str(t / "r.csv")))),
                   "r.csv: cannot read as csv"),
    "not parquet": (train_with(lambda r, t: Path(r["data"]["test"]).write_bytes(b"PAR1 this is not a parquet file")), "test.parquet: cannot read as parquet"),
    "numeric column of strings": (train_with(lambda r, t: put(r, "train", replace_col(table(r, "train"), "price", ["cheap"] * 600)))
                                  , "column 'price' is string, expected numbers"),
    "missing column": (train_with(lambda r, t: put(r, "valid", table(r, "valid").drop_columns(["tags"]))), "valid.parquet: missing column 'tags'"),
    "binary label 2": (train_with(lambda r, t: put(r, "train", replace_col(table(r, "train"), "click", [2] * 600))), "label 'click' must be 0 or 1"),
    "label missing values": (train_with(lambda r, t: put(r, "train", replace_col(table(r, "train"), "click", pa.array([None] * 600, pa.int64())))),
                             "label 'click' has 600 missing value(s)"),
    "unseen class in test": (train_with(lambda r, t: (r["task"].update(type="multiclass"),
                                                     put(r, "test", replace_col(table(r, "test"), "click", [7] * 300)))),
                             "test.parquet: label 'click' has class(es) not in the training split: 7"),
    "empty split": (train_with(lambda r, t: put(r, "valid", table(r, "valid").slice(0, 0))), "valid.parquet: the split has no rows"),
    "negative weights": (train_with(lambda r, t: (r["task"].update(weight="weight"), put(r, "train", replace_col(table(r, "train"), "weight", [-1.0] * 600)))),
                         "weight column 'weight' must be finite and non-negative"),
    "soft label not a probability": (train_with(lambda r, t: (r["distillation"].update(mode="offline", soft_label="price"))),
                                     "soft label 'price' must be a probability in [0, 1]"),
    "streaming csv": (train_with(lambda r, t: (pacsv.write_csv(table(r, "train"), t / "s.csv"), r["data"].update(train=str(t / "s.csv"), streaming=True))),
                      "data.streaming reads Parquet"),
    # ---------------------------------------------------------------- checkpoints and runs
    "teacher checkpoint missing": (train_with(lambda r, t: r["distillation"].update(mode="async", teacher_checkpoint=str(t / "none"))),
                                   "holds no teacher.safetensors"),
    "teacher checkpoint from another schema": (lambda tmp, raw, run: train_with(lambda r, t: (
        r["features"][2].update(type="categorical"), r["distillation"].update(mode="async", teacher_checkpoint=str(run))))(tmp, raw, run),
        "was trained on another schema (feature 'price'"),
    "evaluate a non-run": (on_run(lambda tmp, run: ["evaluate", str(tmp)]), "not a distill run directory"),
    "corrupt checkpoint": (damaged_run(lambda d: (d / "student.safetensors").write_bytes(b"\x00" * 40)), "student.safetensors: cannot load the checkpoint"),
    "corrupt encoders": (damaged_run(lambda d: (d / "encoders.json").write_text("{")), "the run directory is incomplete or corrupt"),
    "evaluate data of another schema": (lambda tmp, raw, run: (put({"data": {"x": str(tmp / "o.parquet")}}, "x", table(raw, "test").drop_columns(["click"])),
                                                               ["evaluate", str(run), "--data", str(tmp / "o.parquet")])[1],
                                        "missing column 'click'"),
    "resume with nothing to resume": (lambda tmp, raw, run: train_with(lambda r, t: None)(tmp, raw, run) + ["--resume", str(tmp / "never")],
                                      "no interrupted run there"),
    "predict without a serving column": (lambda tmp, raw, run: (put({"data": {"x": str(tmp / "p.parquet")}}, "x", table(raw, "test").drop_columns(["price"])),
                                                                ["predict", str(run), str(tmp / "p.parquet"), "-o", str(tmp / "out.parquet")])[1],
                                         "p.parquet: missing serving feature 'price'"),
    "export an unknown format": (on_run(lambda tmp, run: ["export", str(run), "--format", "tflite"]), "tflite"),
    # ---------------------------------------------------------------- splits of several files, float categories
    "split files disagree on a type (train)": (train_with(split_dir), "split: column 'user' is int64 in a.parquet but string in b.parquet"),
    "split files disagree on a type (validate)": (validate_with(split_dir), "split: column 'user' is int64 in a.parquet but string in b.parquet"),
    "float category beyond 2^53 (train)": (train_with(lambda r, t: float_users(r, "train", 2.0 ** 60)),
                                           "train.parquet: column 'user' holds 1 float value(s) of magnitude 2^53 or more (e.g. 1.152921504606847e+18)"),
    "float category beyond 2^53 (validate)": (validate_with(lambda r, t: float_users(r, "valid", 2.0 ** 60)),
                                              "valid.parquet: column 'user' holds 1 float value(s) of magnitude 2^53 or more"),
    "float category beyond 2^53 (predict)": (predict_on(scored_file(lambda t: replace_col(t, "user", [2.0 ** 60] + [1.0] * (t.num_rows - 1)))),
                                             "p.parquet: column 'user' holds 1 float value(s) of magnitude 2^53 or more"),
    # ---------------------------------------------------------------- predict: input and output
    "predict a file with a column twice": (predict_on(scored_file(lambda t: t.append_column("price", t.column("price")))),
                                           "p.parquet: 2 columns are named 'price' (a serving feature)"),
    "predict -o a directory": (lambda tmp, raw, run: ["predict", str(export_of(run)), raw["data"]["test"], "-o", str(tmp)],
                               "is a directory; -o takes the Parquet file to write"),
    "predict -o in a missing directory": (predict_on(lambda tmp, raw: Path(raw["data"]["test"]), out="nowhere/out.parquet"),
                                          "nowhere/out.parquet: cannot write there: "),
    # ---------------------------------------------------------------- corrupt exports (checksums updated: only the checks can tell)
    "export manifest is a list": (damaged_export(edit_manifest(lambda m: [m])), "manifest.json: expected a JSON object, found a list"),
    "export lacks an encoder": (damaged_export(edit_encoders(lambda e: e["features"].remove(feature(e, "price")))),
                                "encoders.json: no encoder for serving feature 'price' (listed in manifest.json)"),
    "export vocab holds null": (damaged_export(edit_encoders(lambda e: feature(e, "user").update(vocab=[None]))),
                                "encoders.json: features[0] ('user'): vocab[0] is null"),
    "export kinds disagree": (damaged_export(edit_manifest(lambda m: (feature(m, "price", "serving").update(type="categorical"), m)[1])),
                              "encoders.json: feature 'price' is numeric here but categorical in manifest.json"),
    # ---------------------------------------------------------------- messages print literally
    "brackets in a message": (lambda tmp, raw, run: ["train", "nope.yaml", "--set", "train[report]"], "--set 'train[report]': write it as key=value"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(world, tmp_path, name):
    make, message = CASES[name]
    _, raw = world
    run = Path(raw["output"])
    args = make(tmp_path, raw, run)
    r = runner.invoke(app, args)
    text = r.output.replace("\n", " ")
    assert r.exit_code == 2, f"{name}: exit {r.exit_code}: {r.output}"
    assert message in " ".join(text.split()), f"{name}: {r.output}"
    assert "Traceback" not in r.output
    assert len([line for line in r.output.strip().splitlines() if line.startswith("error:")]) == 1
    for leftover in ("out", "out.partial", "out.parquet"):
        assert not (tmp_path / leftover).exists(), f"{name}: left {leftover} behind"


def test_float_categories_nan_and_inf_are_missing_said_once(world, tmp_path):
    """NaN and ±inf in a float categorical are missing values (the OOV bucket): train, validate and
    predict go on, and train and validate say how many, once."""
    _, raw = world
    config = train_with(lambda r, t: float_users(r, "train", float("nan")))(tmp_path, raw, Path(raw["output"]))[1]
    edited = yaml.safe_load(Path(config).read_text())
    t = table(edited, "train")
    users = t.column("user").to_numpy().copy()
    users[1], users[2] = float("inf"), float("-inf")
    put(edited, "train", replace_col(t, "user", users))
    r = runner.invoke(app, ["validate", config])
    assert r.exit_code == 0, r.output
    assert "filled in train (missing or non-finite, flagged): user 3" in r.output
    r = runner.invoke(app, ["train", config, "--no-report"])
    assert r.exit_code == 0, r.output
    said = [line for line in r.output.splitlines() if "'user': 3 missing or non-finite value(s)" in line]
    assert len(said) == 1 and "read as missing (the out-of-vocabulary bucket)" in said[0], r.output
    # predict: a NaN id scores exactly as a missing one
    test = table(raw, "test").slice(0, 4)
    ids = pa.array([float("nan"), None, float("inf"), 3.0], pa.float64())
    pq.write_table(replace_col(test, "user", ids), tmp_path / "f.parquet")
    r = runner.invoke(app, ["predict", str(export_of(Path(raw["output"]))), str(tmp_path / "f.parquet"), "-o", str(tmp_path / "f.out.parquet")])
    assert r.exit_code == 0, r.output
    prob = pq.read_table(tmp_path / "f.out.parquet").column("prob").to_pylist()
    same = replace_col(test, "user", pa.array([None, None, None, 3], pa.int64()))
    from distill.serving.load import load_model
    assert prob == load_model(export_of(Path(raw["output"]))).predict(same).tolist()


def test_predict_a_file_truncated_while_it_is_read(world, tmp_path, monkeypatch):
    """The file shrinks after predict opened it (another process rewrote it): one line naming it."""
    import os
    from distill.serving import predict as predict_module
    _, raw = world
    victim = tmp_path / "big.parquet"
    pq.write_table(table(raw, "test"), victim, row_group_size=50)

    class TruncatedWhileRead(pq.ParquetFile):
        def iter_batches(self, *args, **kwargs):  # the footer is read; the row groups are not yet
            os.truncate(victim, victim.stat().st_size // 2)
            return super().iter_batches(*args, **kwargs)

    monkeypatch.setattr(predict_module.pq, "ParquetFile", TruncatedWhileRead)
    r = runner.invoke(app, ["predict", str(export_of(Path(raw["output"]))), str(victim), "-o", str(tmp_path / "out.parquet"),
                            "--chunk-rows", "50"])
    assert r.exit_code == 2, r.output
    assert f"error: {victim}: cannot read as parquet: " in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.partial").exists()


@pytest.mark.parametrize("target", ["dir", "."])
def test_predict_checks_the_output_path_before_scoring(world, tmp_path, monkeypatch, target):
    from distill.serving import load
    _, raw = world

    def not_yet(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(load, "load_model", not_yet)
    out = str(tmp_path) if target == "dir" else "."
    r = runner.invoke(app, ["predict", raw["output"], raw["data"]["test"], "-o", out])
    assert r.exit_code == 2, r.output
    assert f"error: {out}: is a directory" in " ".join(r.output.split())


def test_markup_in_a_message_prints_literally(world, tmp_path, monkeypatch):
    """rich reads [report] as a style tag and drops it; the install hint must survive."""
    import distill.report
    from distill.errors import DistillError
    _, raw = world

    def no_matplotlib(*args, **kwargs):
        raise DistillError("the report needs matplotlib: pip install 'distill[report]'")

    monkeypatch.setattr(distill.report, "write_report", no_matplotlib)
    r = runner.invoke(app, ["report", raw["output"]])
    assert r.exit_code == 2
    assert "error: the report needs matplotlib: pip install 'distill[report]'" in r.output


SERVICE_CASES = {
    "privileged field": ({"user": 1, "item": "i1", "price": 3.0, "tags": "t1", "intent": 0.4}, "intent"),
    "unknown field": ({"user": 1, "item": "i1", "price": 3.0, "tags": "t1", "colour": "red"}, "colour"),
    "missing field": ({"user": 1, "item": "i1", "tags": "t1"}, "price"),
    "wrong type": ({"user": 1, "item": "i1", "price": "cheap", "tags": "t1"}, "price"),
}


@pytest.mark.parametrize("name", sorted(SERVICE_CASES))
def test_bad_service_request(world, name):
    from fastapi.testclient import TestClient
    from distill.serving.load import load_model
    from distill.serving.service import create_app
    _, raw = world
    client = TestClient(create_app(load_model(raw["output"])))
    body, field = SERVICE_CASES[name]
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    assert field in json.dumps(r.json())


def test_teacher_with_nothing_to_teach_is_a_warning(tmp_path):
    raw = base_config(tmp_path)
    raw["teacher"] = dict(raw["student"], features="serving")
    raw["train"]["epochs"] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["train", str(path)])
    assert r.exit_code == 0
    assert "warning: the teacher sees no feature the student does not" in " ".join(r.output.split())


def test_at_least_25_distinct_cases():
    assert len(CASES) + len(SERVICE_CASES) >= 51  # the count the README gives
