"""Serving the student alone: export round trips for every built-in model in both formats, the leak
check (including that it refuses a model reading a privileged feature), chunked batch scoring, and
the HTTP service's validation and a real round trip over loopback."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from distill.config import config_from_dict
from distill.demo import make_log
from distill.errors import DistillError
from distill.run import Run, train
from distill.serving import ExportedModel, load_model
from distill.serving.export import FORMATS, ServingGraph, example_inputs, export, sha256, write_graph
from distill.serving.leakcheck import leak_check, perturb_privileged
from distill.serving.predict import score

MODELS = ["dnn", "wide_deep", "deepfm", "dcn_v2", "two_tower"]
PRIVILEGED = ["user_cat_clicks_24h", "viewport_seconds"]
SERVING = ["user_id", "user_age", "item_id", "item_category", "item_price", "item_tags", "hour"]


def features() -> list[dict]:
    kinds = {"item_price": "numeric", "item_tags": "multi_categorical"}
    return ([{"name": n, "type": kinds.get(n, "categorical")} for n in SERVING]
            + [{"name": n, "type": "numeric", "privileged": True} for n in PRIVILEGED])


def with_labels(t: pa.Table) -> pa.Table:
    """Extra labels for the multiclass and regression runs (derived, so they carry signal)."""
    click = t["click"].to_numpy()
    view = t["viewport_seconds"].to_numpy()
    t = t.append_column("engagement", pa.array(np.where(click == 1, "click", np.where(view > 1.5, "look", "skip"))))
    return t.append_column("dwell", pa.array(2.0 * view + 0.1 * t["item_price"].to_numpy()))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    pq.write_table(with_labels(make_log(1500, 1)), d / "train.parquet")
    pq.write_table(with_labels(make_log(400, 2)), d / "valid.parquet")
    return d


def make_run(data: Path, out: Path, student: str = "dnn", task: str = "binary", label: str = "click") -> Run:
    torch.set_num_threads(1)
    raw = {
        "data": {"train": str(data / "train.parquet"), "valid": str(data / "valid.parquet")},
        "task": {"type": task, "label": label},
        "features": features(),
        "teacher": {"model": "dnn", "hidden": [16], "embedding_dim": 4},
        "student": {"model": student, "hidden": [8], "embedding_dim": 4, "cross_layers": 1, "tower_dim": 4,
                    "user_features": ["user_id", "user_age", "hour"] if student == "two_tower" else None},
        "distillation": {"mode": "sync"},
        "train": {"epochs": 1, "batch_size": 256, "baseline": False, "threads": 1, "early_stopping": None},
    }
    return train(config_from_dict(raw), output=out, quiet=True)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("runs")
    out = {m: make_run(data, root / m, m) for m in MODELS}
    out["multiclass"] = make_run(data, root / "multiclass", "dnn", "multiclass", "engagement")
    out["regression"] = make_run(data, root / "regression", "deepfm", "regression", "dwell")
    return out


@pytest.fixture(scope="module")
def valid(data) -> pa.Table:
    return pq.read_table(data / "valid.parquet")


@pytest.fixture(scope="module")
def onnx_dnn(runs, tmp_path_factory) -> ExportedModel:
    return ExportedModel(export(runs["dnn"], "onnx", tmp_path_factory.mktemp("exp") / "dnn"))


# ----------------------------------------------------------------------------- export + leak check


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", MODELS + ["multiclass", "regression"])
def test_export_round_trip_and_leak_check(runs, valid, tmp_path, name, fmt):
    run = runs[name]
    d = export(run.path, fmt, tmp_path / "export")
    assert sorted(p.name for p in d.iterdir()) == sorted(["encoders.json", "manifest.json", FORMATS[fmt]])
    assert not (tmp_path / "export.partial").exists()
    manifest = json.loads((d / "manifest.json").read_text())
    assert [f["name"] for f in manifest["serving"]] == SERVING
    assert manifest["privileged"] == PRIVILEGED and manifest["metrics"] == run.metrics
    assert manifest["leak_check"]["passed"]
    # the encoders travel without the privileged ones
    assert [f["name"] for f in json.loads((d / "encoders.json").read_text())["features"]] == SERVING

    model = ExportedModel(d, trust_torchscript=True)  # (the tests wrote the TorchScript ones)
    assert model.graph_inputs == SERVING
    pred = model.predict(valid)
    expected = run.predict(valid)
    assert pred.shape == expected.shape == ((valid.num_rows, 3) if name == "multiclass" else (valid.num_rows,))
    np.testing.assert_allclose(pred, expected, atol=1e-5, rtol=0)
    if name == "multiclass":
        np.testing.assert_allclose(pred.sum(1), 1.0, atol=1e-5)
    # the three checks on real rows
    report = leak_check(run, d, table=valid)
    assert report.passed, report.failure
    assert [c["check"] for c in report.checks] == ["inputs", "isolation", "agreement"]


def test_privileged_columns_leave_predictions_bit_identical(runs, onnx_dnn, valid):
    changed = perturb_privileged(runs["dnn"], valid, seed=5)
    assert not changed["viewport_seconds"].equals(valid["viewport_seconds"])
    assert np.array_equal(onnx_dnn.predict(valid), onnx_dnn.predict(changed))
    assert np.array_equal(onnx_dnn.predict(valid), onnx_dnn.predict(valid.drop(PRIVILEGED)))


def test_export_refuses_a_model_that_reads_a_privileged_feature(runs, tmp_path):
    run = runs["dnn"]
    # a run whose "student" is the teacher, which reads the privileged columns
    leaky = Run(run.path, run.config, run.encoders, run.schema, run.metrics,
                models={"student": run.models["teacher"]}, features={"student": run.features["teacher"]})
    with pytest.raises(DistillError, match="leak check failed.*privileged"):
        export(leaky, "onnx", tmp_path / "leaky")
    assert not (tmp_path / "leaky").exists() and not (tmp_path / "leaky.partial").exists()


def test_leak_check_detects_foreign_weights(runs, tmp_path):
    run = runs["dnn"]
    d = export(run, "torchscript", tmp_path / "e")
    # the same inputs, but a graph that carries weights the student does not have (as teacher
    # leftovers would): the weight count must notice
    graph = ServingGraph(run.models["student"], SERVING, run.encoders.label)
    graph.leftover = torch.nn.Linear(3, 3)
    write_graph(graph, example_inputs(run.encoders, SERVING), [run.encoders.features[n].kind for n in SERVING],
                "torchscript", d / "model.pt")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["model.pt"] = sha256(d / "model.pt")
    (d / "manifest.json").write_text(json.dumps(manifest))
    report = leak_check(run, d)
    assert not report.passed and "weights" in report.failure
    assert report.failure.startswith("inputs")


def test_a_modified_export_is_refused(runs, tmp_path):
    d = export(runs["dnn"], "onnx", tmp_path / "e")
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DistillError, match="sha256"):
        ExportedModel(d)


# ----------------------------------------------------------------------------- batch prediction


def test_predict_streams_parquet_and_csv_in_chunks(onnx_dnn, data, valid, tmp_path):
    expected = onnx_dnn.predict(valid)
    pacsv.write_csv(valid, tmp_path / "valid.csv")
    for src in (data / "valid.parquet", tmp_path / "valid.csv"):
        said = []
        out = tmp_path / f"{src.suffix[1:]}.parquet"
        summary = score(onnx_dnn, src, out, keep=["user_id"], chunk_rows=97, on_ignored=said.append)
        assert summary.rows == valid.num_rows and summary.chunks == -(-valid.num_rows // 97)
        assert len(said) == 1 and set(said[0].ignored_privileged) == set(PRIVILEGED)
        got = pq.read_table(out)
        assert got.column_names == ["user_id", "prob"]
        assert got["user_id"].to_pylist() == valid["user_id"].to_pylist()
        np.testing.assert_allclose(got["prob"].to_numpy(), expected, atol=1e-6)
        assert not out.with_name(out.name + ".partial").exists()


def test_predict_names_a_missing_serving_column_and_writes_nothing(onnx_dnn, valid, tmp_path):
    pq.write_table(valid.drop(["item_tags"]), tmp_path / "x.parquet")
    with pytest.raises(DistillError, match="missing serving feature 'item_tags'"):
        score(onnx_dnn, tmp_path / "x.parquet", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.partial").exists()


def test_predict_and_embed_write_through_one_whole_or_nothing_helper(tmp_path):
    import errno

    from distill.serving.predict import whole_or_nothing
    serving = Path(__file__).parents[1] / "src" / "distill" / "serving"
    writers = sorted(p.name for p in serving.glob("*.py") if "ParquetWriter(" in p.read_text())
    assert writers == ["predict.py"]  # embed.py has no copy of its own
    out = tmp_path / "o.parquet"
    with whole_or_nothing(out, "the rows", "nothing to write") as write:
        write(pa.table({"a": [1, 2]}))
        write(pa.table({"a": [3]}))
        assert not out.exists()  # only once the block ends
    assert pq.read_table(out)["a"].to_pylist() == [1, 2, 3]
    for stop, expect in [(SystemExit(143), SystemExit), (OSError(errno.ENOSPC, "No space left on device"), DistillError)]:
        with pytest.raises(expect) as e:  # SIGTERM arrives as SystemExit; a full disk is one line
            with whole_or_nothing(out, "the rows", "nothing to write") as write:
                write(pa.table({"a": [9]}))
                raise stop
        assert pq.read_table(out)["a"].to_pylist() == [1, 2, 3] and not list(tmp_path.glob("*.partial"))
    assert "o.parquet: no space left on device while writing the rows; nothing was written" in str(e.value)
    with pytest.raises(DistillError, match="nothing to write"):
        with whole_or_nothing(tmp_path / "empty.parquet", "the rows", "nothing to write"):
            pass
    assert not (tmp_path / "empty.parquet").exists()


def test_cli_export_and_predict(runs, data, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app
    r = CliRunner().invoke(app, ["export", str(runs["two_tower"].path), "--format", "torchscript", "--out", str(tmp_path / "ts")])
    assert r.exit_code == 0, r.output
    assert "leak check, isolation: passed" in r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "ts"), str(data / "valid.parquet"), "-o", str(tmp_path / "p.parquet"),
                                 "--trust-torchscript"])
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 400
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "ts"), str(data / "valid.parquet"), "-o", str(tmp_path / "q.parquet"),
                                 "--keep", "no_such_id", "--trust-torchscript"])
    assert r.exit_code == 2 and "no_such_id" in r.output


# ----------------------------------------------------------------------------- HTTP service


ROW = {"user_id": 7, "user_age": 2, "item_id": "31", "item_category": 4, "item_price": 19.9, "item_tags": ["t1", "t7"], "hour": 20}


@pytest.fixture(scope="module")
def client(onnx_dnn):
    from fastapi.testclient import TestClient

    from distill.serving.service import create_app
    return TestClient(create_app(onnx_dnn))


def test_service_predicts_one_row_and_a_list(client, onnx_dnn, valid):
    rows = [{k: r[k] for k in SERVING} for r in valid.slice(0, 5).to_pylist()]
    one = client.post("/predict", json=rows[0])
    assert one.status_code == 200 and one.json()["outputs"] == ["prob"]
    many = client.post("/predict", json=rows).json()["predictions"]
    np.testing.assert_allclose(many, onnx_dnn.predict(valid.slice(0, 5)), atol=1e-6)
    assert many[0] == pytest.approx(one.json()["predictions"][0], abs=1e-6)
    # the string form of a multi-valued feature means the same as the list
    joined = client.post("/predict", json={**rows[0], "item_tags": " ".join(str(t) for t in ROW["item_tags"])}).json()
    listed = client.post("/predict", json={**rows[0], "item_tags": ROW["item_tags"]}).json()
    assert joined == listed


def test_unseen_categories_use_the_oov_bucket(client):
    unseen = client.post("/predict", json={**ROW, "user_id": "never-seen", "item_id": -12345}).json()["predictions"]
    null = client.post("/predict", json={**ROW, "user_id": None, "item_id": None}).json()["predictions"]
    known = client.post("/predict", json=ROW).json()["predictions"]
    assert unseen == null != known


def test_extreme_numeric_values_still_give_a_finite_prediction(client):
    # standardised values are clipped to ±1e4 by the encoder, so 1e308 cannot overflow to inf
    r = client.post("/predict", json={**ROW, "item_price": 1e308})
    assert r.status_code == 200
    assert 0.0 <= r.json()["predictions"][0] <= 1.0


@pytest.mark.parametrize("body, needle", [
    ({k: v for k, v in ROW.items() if k != "hour"}, "missing serving field 'hour'"),
    ({**ROW, "item_price": "cheap"}, "field 'item_price'"),
    ({**ROW, "user_id": 3.5}, "field 'user_id' (categorical): expected a category (string or integer)"),
    ({**ROW, "item_tags": {"a": 1}}, "field 'item_tags' (multi_categorical): expected a list of categories, or one string"),
    ({**ROW, "item_tags": [1.5]}, "field 'item_tags' (multi_categorical): expected a list of categories, or one string"),
    ({**ROW, "viewport_seconds": 3.0}, "'viewport_seconds' is privileged"),
    ({**ROW, "colour": "red"}, "'colour' is not a serving feature"),
    ({**ROW, "user_idd": 1}, "did you mean 'user_id'"),
    ([ROW, {**ROW, "hour": [1]}], "row 1: field 'hour'"),
    ([], "empty"),
    (5, "send an object"),
])
def test_service_validation_names_the_field(client, body, needle):
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]


def test_a_422_keeps_the_documented_detail_list_beside_its_one_line_error(client):
    """README ("The service") documents pydantic's `detail` list on a 422, beside `error`: API, kept."""
    r = client.post("/predict", json=[ROW, {**ROW, "hour": [1]}])
    body = r.json()
    assert r.status_code == 422 and set(body) == {"error", "detail"}
    assert body["error"].startswith("row 1: field 'hour'") and "\n" not in body["error"]
    assert any(d["loc"][2:4] == [1, "hour"] and d["msg"] and d["type"] for d in body["detail"])


@pytest.mark.parametrize("raw", [b"", b"{", b"null", b"[[]]", b'{"user_id": NaN}', b"\xff\xfe", b'"text"'])
def test_malformed_bodies_are_422_never_500(client, raw):
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]


def test_health_metadata_and_openapi(client, runs):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["task"]["type"] == "binary" and meta["metrics"] == runs["dnn"].metrics
    assert [f["name"] for f in meta["serving"]] == SERVING and meta["leak_check"]["passed"]
    assert {"distill", "torch", "onnxruntime"} <= set(meta["versions"])
    row = client.get("/openapi.json").json()["components"]["schemas"]["Row"]
    assert row["required"] == SERVING and set(row["properties"]) == set(SERVING)
    assert row["additionalProperties"] is False


def test_service_multiclass_returns_class_probabilities(runs, tmp_path):
    from fastapi.testclient import TestClient

    from distill.serving.service import create_app
    c = TestClient(create_app(load_model(runs["multiclass"].path, "torchscript", trust_torchscript=True)))
    p = c.post("/predict", json=ROW).json()
    assert p["outputs"] == ["prob_click", "prob_look", "prob_skip"]
    assert set(p["predictions"][0]) == {"click", "look", "skip"}
    assert sum(p["predictions"][0].values()) == pytest.approx(1.0, abs=1e-5)


def test_http_round_trip_on_loopback(onnx_dnn, valid):
    import httpx
    import uvicorn

    from distill.serving.service import create_app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(onnx_dnn), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        rows = [{k: r[k] for k in SERVING} for r in valid.slice(0, 20).to_pylist()]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/health").json() == {"status": "ok"}
            got = http.post("/predict", json=rows).json()["predictions"]
            bad = http.post("/predict", json={**rows[0], "viewport_seconds": 1.0})
        np.testing.assert_allclose(got, onnx_dnn.predict(valid.slice(0, 20)), atol=1e-6)
        assert bad.status_code == 422 and "privileged" in bad.json()["error"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ----------------------------------------------------------------------------- service limits and lifecycle


@pytest.fixture(scope="module")
def small_limits(onnx_dnn):
    from fastapi.testclient import TestClient

    from distill.serving.service import create_app
    lines: list[str] = []
    return TestClient(create_app(onnx_dnn, max_body_bytes=2_000, max_rows=5, access_log=lines.append)), lines


def test_service_refuses_a_body_or_a_batch_over_the_limits_with_413(small_limits):
    client, lines = small_limits
    big = client.post("/predict", json=[ROW] * 30)  # ~4 kB, with a Content-Length
    assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"] and set(big.json()) == {"error"}
    rows = client.post("/predict", json=[ROW] * 6)
    assert rows.status_code == 413 and set(rows.json()) == {"error"}
    assert "6 rows" in rows.json()["error"] and "--max-rows" in rows.json()["error"]
    assert client.post("/predict", json=[ROW] * 5).status_code == 200
    # the access log: one line per request, rows included
    assert lines[-3].startswith("POST /predict 413 ") and "rows" not in lines[-3]
    assert lines[-2].startswith("POST /predict 413 ") and lines[-2].endswith(" 6 rows")
    assert lines[-1].startswith("POST /predict 200 ") and lines[-1].endswith(" ms 5 rows")


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole(onnx_dnn):
    import asyncio

    import httpx

    from distill.serving.service import create_app
    app = create_app(onnx_dnn, max_body_bytes=2_000)
    pulled = []

    async def chunks():  # no Content-Length: the body streams, 500 bytes at a time, 100 kB in all
        for i in range(200):
            pulled.append(i)
            yield b" " * 500

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    r = asyncio.run(post())
    assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]
    assert len(pulled) <= 6  # stopped at the first chunk past 2,000 bytes, not after 200


@pytest.mark.parametrize("request_kwargs, status, needle", [
    ({"content": json.dumps(ROW), "headers": {"content-type": "text/plain"}}, 415, "Content-Type: application/json (got 'text/plain')"),
    ({"content": json.dumps(ROW)}, 415, "none was sent"),
    ({"content": b'{"user_id": 7,', "headers": {"content-type": "application/json"}}, 422, "not valid JSON: Expecting property name"),
])
def test_wrong_content_type_and_bad_json_get_one_clear_error(client, request_kwargs, status, needle):
    r = client.post("/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"] and "Input should be" not in r.json()["error"]


def test_routes_errors_keep_the_error_shape(client):
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.get("/predict")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"} and r.headers["allow"] == "POST"


def test_health_answers_while_a_large_batch_scores(onnx_dnn, monkeypatch):
    import httpx
    import uvicorn

    from distill.serving.service import create_app
    entered, release = threading.Event(), threading.Event()
    real = onnx_dnn.predict

    def held(rows):  # a batch that scores until the test lets it go: no timing guesswork
        entered.set()
        release.wait(10)
        return real(rows)
    monkeypatch.setattr(onnx_dnn, "predict", held)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(onnx_dnn), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    batch: dict = {}
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        scoring = threading.Thread(target=lambda: batch.update(r=httpx.post(f"{base}/predict", json=[ROW] * 2000, timeout=20)))
        scoring.start()
        assert entered.wait(10)
        start = time.perf_counter()
        health = httpx.get(f"{base}/health", timeout=3)
        took = time.perf_counter() - start
        assert health.json() == {"status": "ok"} and took < 1.0
        assert scoring.is_alive() and "r" not in batch  # the batch was still scoring all along
        release.set()
        scoring.join(20)
        assert batch["r"].status_code == 200 and len(batch["r"].json()["predictions"]) == 2000
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _serve(run_dir: Path, tmp: Path, *flags: str):
    """`python -m distill serve RUN --port 0` with TMPDIR=tmp, once it says it is ready: the process,
    its base URL and its stderr lines so far (a thread keeps adding to them)."""
    import os
    import re
    import subprocess
    import sys
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "serve", str(run_dir), "--port", "0", *flags],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    proc.reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[attr-defined]
    proc.reader.start()  # type: ignore[attr-defined]
    deadline = time.time() + 60
    while not lines and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    found = re.search(r"serving the dnn student of .* \(onnx\) on (http://127\.0\.0\.1:\d+), docs at /docs", lines[0] if lines else "")
    if not found:
        proc.kill()
        raise AssertionError(f"no ready line within 60 s: {lines}")
    return proc, found.group(1), lines


def test_serve_a_run_cleans_its_export_on_sigterm_and_a_restart_sweeps_a_killed_ones(runs, tmp_path, monkeypatch):
    import signal
    import tempfile

    import httpx

    from distill.serving.scratch import scratch_export
    scratch = tmp_path / f"distill-serve-{__import__('os').getuid()}"
    proc, base, lines = _serve(runs["dnn"].path, tmp_path)
    try:
        exports = list(scratch.glob("export-*"))
        assert len(exports) == 1 and (exports[0] / "model" / "manifest.json").is_file()
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.post(f"{base}/predict", json=[ROW, ROW]).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    proc.reader.join(10)  # stderr closed: every line is in
    log = "".join(lines)
    assert "GET /health 200 " in log and "POST /predict 200 " in log and " ms 2 rows" in log
    assert list(scratch.iterdir()) == [] and not list(tmp_path.glob("distill-export-*"))

    # SIGKILL leaves the export; the next start removes it, and nothing it did not make
    proc, base, lines = _serve(runs["dnn"].path, tmp_path, "--no-access-log")
    try:
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        proc.kill()
    proc.wait(20)
    proc.reader.join(10)
    assert len(lines) == 1 and "GET /health" not in "".join(lines)  # --no-access-log: the ready line only
    leftover = list(scratch.glob("export-*"))
    assert len(leftover) == 1
    (scratch / "export-1-foreign").mkdir()  # no marker: not distill's
    # what `distill serve RUN` does first when it starts again, in process (a third server costs seconds)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_export(runs["dnn"].path, "onnx") as source:
        assert not leftover[0].exists() and (scratch / "export-1-foreign").is_dir()
        assert source.parent.parent == scratch and (source / "manifest.json").is_file()
    assert [p.name for p in scratch.iterdir()] == ["export-1-foreign"]


@pytest.mark.parametrize("command, source", [("predict", "run"), ("predict", "export"), ("embed", "run")])
def test_predict_and_embed_on_sigterm_leave_no_export_and_no_output(runs, onnx_dnn, valid, tmp_path, command, source):
    """`distill predict RUN` (and `embed RUN`) exports to the scratch folder first, as serve does:
    SIGTERM mid-run removes that export and the partial output; the output never appears. An export
    is scored in place, and its partial output goes too."""
    import os
    import signal
    import subprocess
    import sys
    big = pa.concat_tables([valid] * 2500)  # 1M rows: seconds to score
    if command == "embed":  # every row a new item, so every chunk is embedded
        big = big.set_column(big.schema.get_field_index("item_id"), "item_id", pa.array(np.arange(big.num_rows)))
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=50_000)
    out = tmp_path / "out.parquet"
    scratch = tmp_path / f"distill-serve-{os.getuid()}"
    model = runs["two_tower" if command == "embed" else "dnn"].path if source == "run" else onnx_dnn.directory
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "distill", command, str(model), str(tmp_path / "big.parquet"),
                             "-o", str(out), "--chunk-rows", "512"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120  # a loaded machine: wait for the first chunk, however long that takes
        partial = out.with_name(out.name + ".partial")
        while not partial.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None and partial.exists(), proc.stderr.read() if proc.poll() is not None else "no partial output in 120 s"
        if source == "run":
            assert len(list(scratch.glob("export-*/model/manifest.json"))) == 1  # the export it scores
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait(10)
    assert "Traceback" not in proc.stderr.read()
    assert not out.exists() and not partial.exists()
    assert not list(scratch.glob("export-*")) and not list(tmp_path.glob("distill-export-*"))


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_missing_input_is_said_before_a_runs_export(runs, tmp_path, monkeypatch, command):
    from typer.testing import CliRunner

    import distill.serving.export
    from distill.cli import app

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the input was checked")
    monkeypatch.setattr(distill.serving.export, "export", no_export)
    r = CliRunner().invoke(app, [command, str(runs["two_tower"].path), str(tmp_path / "nope.parquet"),
                                 "-o", str(tmp_path / "out.parquet")])
    assert r.exit_code == 2 and "nope.parquet: file not found" in r.output, r.output


def test_serve_on_a_port_in_use_is_one_clear_line(onnx_dnn):
    from typer.testing import CliRunner

    from distill.cli import app
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(onnx_dnn.directory), "--port", str(port)])
    assert r.exit_code == 2 and f"--port {port}: cannot listen there" in r.output and "Traceback" not in r.output
