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
    assert len(CASES) + len(SERVICE_CASES) >= 25
