"""The service under schemathesis: requests generated from its own OpenAPI schema, valid and not,
never get a 5xx; and a bounded load leaves no errors and no memory growth."""
import gc
import tracemalloc

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from conftest import trained_config


@pytest.fixture(scope="module")
def service_app(tmp_path_factory):
    from distill.serving.load import load_model
    from distill.serving.service import create_app
    raw = trained_config(tmp_path_factory.mktemp("svc"))
    return create_app(load_model(raw["output"]))


@pytest.fixture(scope="module")
def api_schema(service_app):
    return schemathesis.openapi.from_asgi("/openapi.json", service_app)


def test_no_server_errors(api_schema):
    # schemathesis' pytest plugin does not load under pytest 9, so the operations are driven with
    # hypothesis directly: the same generated cases, valid and invalid by the schema.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /predict", "GET /health", "GET /metadata"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call()
            assert response.status_code < 500, f"{op.method} {op.path}: {response.status_code} {response.text}"
        check()


def test_bounded_load_has_no_errors_and_no_memory_growth(service_app):
    from fastapi.testclient import TestClient
    client = TestClient(service_app)
    row = {"user": 3, "item": "i4", "price": 7.5, "tags": "t1 t2"}
    bad = {"user": 3, "item": "i4", "price": 7.5, "tags": "t1", "intent": 1.0}

    def burst(n):
        for i in range(n):
            r = client.post("/predict", json=[row] * (1 + i % 8))
            assert r.status_code == 200
            assert client.post("/predict", json=bad).status_code == 422

    burst(200)  # warm up: caches, lazy imports
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    burst(600)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 2_000_000, f"Python heap grew by {growth} bytes over 1,200 requests"
