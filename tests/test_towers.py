"""The two-tower student served as a retriever: the inner product of its towers is the fused
logit, each tower exports on its own serving features (leak-checked), `distill embed` writes one
vector per item whole or not at all, the service's /user_vector, and the retrieval metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.config import config_from_dict
from distill.data.batch import Batch
from distill.demo import make_log
from distill.inference import predict_logits
from distill.run import Run, train
from distill.serving import ExportedModel
from distill.serving.export import export

PRIVILEGED = ["user_cat_clicks_24h", "viewport_seconds"]
SERVING = ["user_id", "user_age", "item_id", "item_category", "item_price", "item_tags", "hour"]
USER = ["user_id", "user_age", "hour"]
ITEM = ["item_id", "item_category", "item_price", "item_tags"]


def features() -> list[dict]:
    kinds = {"item_price": "numeric", "item_tags": "multi_categorical"}
    return ([{"name": n, "type": kinds.get(n, "categorical")} for n in SERVING]
            + [{"name": n, "type": "numeric", "privileged": True} for n in PRIVILEGED])


def raw_config(d: Path, model: str = "two_tower") -> dict:
    return {
        "data": {"train": str(d / "train.parquet"), "valid": str(d / "valid.parquet"), "test": str(d / "test.parquet")},
        "task": {"type": "binary", "label": "click", "group": "user_id"},
        "features": features(),
        "teacher": {"model": "dnn", "hidden": [16], "embedding_dim": 4},
        "student": {"model": model, "hidden": [8], "embedding_dim": 4, "tower_dim": 4,
                    "user_features": USER if model == "two_tower" else None},
        "distillation": {"mode": "sync"},
        "train": {"epochs": 1, "batch_size": 256, "threads": 1, "early_stopping": None},
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train", 1500, 1), ("valid", 400, 2), ("test", 400, 3)):
        pq.write_table(make_log(n, seed, n_users=40, n_items=60), d / f"{name}.parquet")
    return d


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Run:
    torch.set_num_threads(1)
    return train(config_from_dict(raw_config(data)), output=tmp_path_factory.mktemp("runs") / "tt", quiet=True)


@pytest.fixture(scope="module")
def towers(run, tmp_path_factory) -> ExportedModel:
    return ExportedModel(export(run, "onnx", tmp_path_factory.mktemp("exp") / "towers", towers=True))


# ----------------------------------------------------------------------------- the model

def test_inner_product_of_the_towers_is_the_fused_logit(run, data):
    model = run.models["student"]
    table = pq.read_table(data / "valid.parquet")
    enc = run.encoders.encode(run.config, table, "valid", features=run.features["student"], label=False)
    batch = Batch(enc.features)
    with torch.no_grad():
        u, v = model.user_vector(batch.select(USER)), model.item_vector(batch.select(ITEM))
    logits = predict_logits(model, enc, run.features["student"])
    assert u.shape == v.shape == (table.num_rows, 4 + 1)
    assert model.bias.item() != 0.0  # the bias coordinate is exercised, not a zero
    assert torch.allclose((u * v).sum(1), logits, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- export --towers

def test_each_tower_graph_reads_only_its_own_serving_features(towers):
    import onnx
    for side, want in (("user", USER), ("item", ITEM)):
        spec = towers.manifest["towers"][side]
        graph = onnx.load(str(towers.directory / spec["file"])).graph
        assert [i.name for i in graph.input] == want == spec["inputs"]
        assert spec["dim"] == 5
        assert spec["leak_check"]["passed"]
        assert {c["check"] for c in spec["leak_check"]["checks"]} == {"inputs", "isolation", "agreement", "inner product"}
    assert (towers.directory / "model.onnx").is_file()  # the fused export is still there for /predict


def test_exported_towers_reproduce_the_fused_prediction(towers, data):
    table = pq.read_table(data / "valid.parquet")
    logit = (towers.vectors("user", table) * towers.vectors("item", table)).sum(1)
    prob = towers.predict(table)
    assert np.allclose(1 / (1 + np.exp(-logit)), prob, atol=1e-5)


def test_tower_leak_check_fails_a_tower_reading_another_towers_feature(run, towers, tmp_path):
    """Hand the item tower's graph to the user side: the check names the feature that leaked."""
    import shutil
    from distill.serving.leakcheck import tower_leak_check
    from distill.serving.manifest import sha256
    d = tmp_path / "bad"
    shutil.copytree(towers.directory, d)
    m = json.loads((d / "manifest.json").read_text())
    shutil.copy(d / "item_tower.onnx", d / "user_tower.onnx")
    m["towers"]["user"]["inputs"] = ITEM
    m["sha256"]["user_tower.onnx"] = sha256(d / "user_tower.onnx")
    (d / "manifest.json").write_text(json.dumps(m))
    report = tower_leak_check(run, d)["user"]
    assert not report.passed
    assert "'item_id' belongs to the item tower" in report.failure


def test_towers_refused_for_a_student_that_is_not_two_tower(data, tmp_path):
    r = train(config_from_dict({**raw_config(data, "dnn"), "train": {"epochs": 1, "threads": 1, "baseline": False, "early_stopping": None}}),
              output=tmp_path / "dnn", quiet=True)
    res = CliRunner().invoke(app, ["export", str(r.path), "--towers", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2
    assert "not a two_tower model" in res.output
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------- distill embed

def test_embed_writes_one_vector_per_distinct_item_readable_by_numpy(towers, data, tmp_path):
    items = pq.read_table(data / "train.parquet")  # impressions: each item many times
    out = tmp_path / "item_vectors.parquet"
    res = CliRunner().invoke(app, ["embed", str(towers.directory), str(data / "train.parquet"), "-o", str(out), "--chunk-rows", "100"])
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t.column_names == ["item_id", "vector"]
    assert pa.types.is_fixed_size_list(t.schema.field("vector").type) and t.schema.field("vector").type.list_size == 5
    ids = t["item_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(set(items["item_id"].to_pylist()))
    vectors = np.stack(t["vector"].to_numpy(zero_copy_only=False))  # how FAISS would take them
    first = {}
    for i, v in enumerate(items["item_id"].to_pylist()):
        first.setdefault(v, i)
    want = towers.vectors("item", items.take([first[v] for v in ids]))
    assert vectors.dtype == np.float32 and np.array_equal(vectors, want)


def test_embed_is_whole_or_nothing(towers, data, tmp_path, monkeypatch):
    from distill.serving.embed import embed
    out = tmp_path / "v.parquet"
    pq.write_table(pa.table({"x": [1]}), out)  # an earlier output: it must survive the failure
    before = out.read_bytes()
    calls = {"n": 0}
    real = towers.vectors

    def failing(side, table, where="data"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed mid-write")
        return real(side, table, where)
    monkeypatch.setattr(towers, "vectors", failing)
    with pytest.raises(RuntimeError):
        embed(towers, data / "train.parquet", out, chunk_rows=20)
    assert calls["n"] == 3  # two chunks were written to the partial file before the failure
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.parquet"]


def test_embed_names_a_missing_item_column_and_needs_towers(towers, run, data, tmp_path):
    pq.write_table(pq.read_table(data / "train.parquet").drop_columns(["item_price"]), tmp_path / "items.parquet")
    r = CliRunner().invoke(app, ["embed", str(towers.directory), str(tmp_path / "items.parquet"), "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "missing item-tower feature 'item_price'" in r.output
    plain = export(run, "onnx", tmp_path / "plain")
    r = CliRunner().invoke(app, ["embed", str(plain), str(data / "train.parquet"), "-o", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "no item tower" in r.output
    assert not (tmp_path / "o.parquet").exists()


# ----------------------------------------------------------------------------- the service

def test_user_vector_endpoint_beside_predict(towers, data):
    from fastapi.testclient import TestClient
    from distill.serving.service import create_app
    client = TestClient(create_app(towers, max_rows=3))
    rows = pq.read_table(data / "valid.parquet").slice(0, 2).to_pylist()
    users = [{k: r[k] for k in USER} for r in rows]
    r = client.post("/user_vector", json=users)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["vectors"], dtype=np.float32)
    assert r.json()["dim"] == 5 and np.allclose(got, towers.vectors("user", users), atol=1e-6)
    # the inner product with the item vectors is the logit /predict turns into a probability
    items = towers.vectors("item", [{k: row[k] for k in ITEM} for row in rows])
    probs = client.post("/predict", json=[{k: row[k] for k in SERVING} for row in rows]).json()["predictions"]
    assert np.allclose(1 / (1 + np.exp(-(got * items).sum(1))), probs, atol=1e-5)
    single = client.post("/user_vector", json=users[0])
    assert single.status_code == 200 and len(single.json()["vectors"]) == 1


@pytest.mark.parametrize("body, message", [
    ({"user_id": 1, "user_age": 2}, "missing user-tower field 'hour'"),
    ({"user_id": 1, "user_age": 2, "hour": 3, "item_id": 4}, "field 'item_id' is not a user-tower feature"),
    ({"user_id": 1, "user_age": 2, "hour": 3, "viewport_seconds": 1.0}, "field 'viewport_seconds' is privileged"),
])
def test_user_vector_422_names_the_field(towers, body, message):
    from fastapi.testclient import TestClient
    from distill.serving.service import create_app
    r = TestClient(create_app(towers, max_rows=3)).post("/user_vector", json=body)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_user_vector_413_and_absent_without_towers(towers, run, tmp_path):
    from fastapi.testclient import TestClient
    from distill.serving.service import create_app
    row = {"user_id": 1, "user_age": 2, "hour": 3}
    r = TestClient(create_app(towers, max_rows=3)).post("/user_vector", json=[row] * 4)
    assert r.status_code == 413 and "at most 3" in r.json()["error"]
    plain = TestClient(create_app(ExportedModel(export(run, "onnx", tmp_path / "plain"))))
    assert plain.post("/user_vector", json=row).status_code == 404


# ----------------------------------------------------------------------------- validate, run.json

def test_validate_and_run_json_list_each_towers_features(run, data, tmp_path):
    import yaml
    info = json.loads((run.path / "run.json").read_text())
    assert info["towers"]["student"] == {"user": USER, "item": ITEM}
    assert info["towers"]["baseline"] == {"user": USER, "item": ITEM}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config(data)))
    r = CliRunner().invoke(app, ["validate", str(path)], terminal_width=300)
    assert r.exit_code == 0, r.output
    assert "student towers: user [user_id, user_age, hour], item [item_id, item_category, item_price, item_tags]" in r.output


# ----------------------------------------------------------------------------- retrieval metrics

def test_retrieval_metrics_by_hand_on_a_tiny_catalogue():
    from distill.retrieval import ranking_metrics, top_k
    items = np.array([[1, 0], [0, 1], [2, 0], [1, 1], [-1, 0]], dtype=np.float32)  # ids 0..4
    users = np.array([[1, 0], [0, 1]], dtype=np.float32)
    # user 0 scores: 1, 0, 2, 1, -1 → order 2, 0|3, 1, 4; item 2 excluded (clicked in train)
    top = top_k(users, items, [np.array([2]), np.array([], dtype=np.int64)], k=3, batch=1)
    assert top[0].tolist() == [0, 3, 1]  # ties keep catalogue order
    assert top[1].tolist() == [1, 3, 0]  # scores 0, 1, 0, 1, 0 → 1, 3, then the first 0
    m = ranking_metrics([top[0], top[1]], [{3, 4}, {0}], ks=(1, 2))
    # user 0: hits at rank 2 only → recall@1 0, recall@2 1/2, ndcg@2 = (1/log2 3) / (1 + 1/log2 3)
    # user 1: item 0 is ranked 3rd → 0 at both k
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx((0.5 + 0) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 0) / 2)
    assert m["ndcg@1"] == 0.0


def test_retrieval_metrics_of_a_run_rank_the_whole_catalogue(run, data):
    from distill.retrieval import retrieval_metrics
    r = retrieval_metrics(run, ks=(10, 1000))
    train, test = pq.read_table(data / "train.parquet"), pq.read_table(data / "test.parquet")
    assert r["items"] == len(set(train["item_id"].to_pylist()) | set(test["item_id"].to_pylist()))
    assert set(r["catalogue"]) == {"student", "baseline"} and set(r["logged"]) == {"teacher", "student", "baseline"}
    for role in r["catalogue"]:
        m = r["catalogue"][role]
        assert 0 <= m["recall@10"] <= 1 and 0 <= m["ndcg@10"] <= 1
        assert m["recall@1000"] == 1.0  # k over the catalogue: every positive is found (none was excluded)
    assert all(r["logged"][role]["recall@1000"] == 1.0 for role in r["logged"])


def test_evaluate_retrieval_through_the_cli(run):
    res = CliRunner().invoke(app, ["evaluate", str(run.path), "--retrieval", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["retrieval"]
    assert set(got["catalogue"]) == {"student", "baseline"} and "recall@10" in got["catalogue"]["student"]


def test_compare_retrieval_writes_verdicts_and_refuses_a_student_that_is_not_two_tower(data, tmp_path):
    import yaml
    raw = raw_config(data)
    raw["output"] = str(tmp_path / "out")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["compare", str(path), "--seeds", "3", "--retrieval", "--no-report", "-q",
                                 "--output", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())["retrieval"]
    assert len(summary["seeds"]) == 3
    v = summary["verdict"]["catalogue"]["metrics"]["recall@10"]
    assert v["verdict"] in ("gain", "harm", "no gain (within noise)") and v["low"] <= v["gain"] <= v["high"]
    assert "the whole catalogue ranked by" in (tmp_path / "cmp" / "compare.md").read_text()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    report = next((tmp_path / "cmp").rglob("report.md")).read_text()
    assert "Retrieval: distilled vs baseline two-tower student" in report and "recall@10" in report
    raw["student"] = {"model": "dnn", "hidden": [8]}
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["compare", str(path), "--retrieval", "--output", str(tmp_path / "cmp2")])
    assert r.exit_code == 2 and "student.model is dnn" in r.output and not (tmp_path / "cmp2").exists()


def test_embed_from_a_run_directory_exports_the_towers_on_the_fly(run, towers, data, tmp_path):
    out = tmp_path / "v.parquet"
    r = CliRunner().invoke(app, ["embed", str(run.path), str(data / "test.parquet"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    want = towers.vectors("item", pq.read_table(data / "test.parquet").take(
        [pq.read_table(data / "test.parquet")["item_id"].to_pylist().index(i) for i in t["item_id"].to_pylist()]))
    assert np.allclose(np.stack(t["vector"].to_numpy(zero_copy_only=False)), want, atol=1e-6)
