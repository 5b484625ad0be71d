"""The package's shape: every module imports on its own, the import graph has no cycle, serving an
export loads neither torch nor the training code, loading a run leaves torch's RNG alone, and
every feature kind's declared layout is what its encoder produces."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import base_config, cfg_of

import distill
from distill.config import FeatureConfig, FeatureType
from distill.data.kinds import KINDS, feature_from_dict, fit_feature

SRC = Path(distill.__file__).parent
# torch, and the parts of distill that train: none of them may load to serve an ONNX export
HEAVY = ("torch", "safetensors", "distill.run", "distill.training", "distill.distributed", "distill.models")


def module_names() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__main__":  # importing it runs the CLI
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def run_python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(SRC.parent), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def test_every_module_imports_on_its_own():
    """Each module imported first, in a process where no other distill module is loaded yet: a
    cycle shows up as an ImportError of a partly initialised module for some order."""
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for m in [m for m in sys.modules if m == 'distill' or m.startswith('distill.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
    )
    names = module_names()
    assert "distill.data.kinds.numeric" in names and "distill.serving.load" in names
    result = run_python(code, *names, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """The distill modules `name` imports anywhere in its file (at the top or inside functions:
    a lazy import closes a cycle too), except under `if TYPE_CHECKING:`. Importing a.b.c imports
    the packages a and a.b first, so those count too."""
    tree = ast.parse(path.read_text())
    package = name if is_package else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    out = set()
    for target in found:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            out.add(".".join(parts[:i]))
    return out


def test_the_import_graph_has_no_cycle():
    names = set(module_names())
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        # a module's own packages are always initialised before it: an edge back to one is no cycle
        ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
        graph[name] = {t for t in imports_of(path, name, is_package) if t in names and t != name and t not in ancestors}
    assert graph["distill.serving.exported"] >= {"distill.data.kinds", "distill.serving.manifest"}  # the check sees edges

    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} → {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from distill.run import train
    tmp = tmp_path_factory.mktemp("tiny")
    raw = base_config(tmp, n_train=200)
    raw["distillation"] = {"mode": "none"}
    raw["train"].update(epochs=1, baseline=True)
    train(cfg_of(raw), output=tmp / "run", quiet=True)
    return tmp / "run"


def test_serving_an_onnx_export_imports_neither_torch_nor_training(tiny_run, tmp_path):
    """`distill serve EXPORT`, as the CLI runs it (up to listening: run_service is stubbed out),
    then one request."""
    from distill.serving.export import export
    out = export(tiny_run, "onnx", tmp_path / "export")
    code = (
        "import json, sys\n"
        "from distill.serving import service\n"
        "served = {}\n"
        "service.run_service = lambda app, *args, **kwargs: served.update(app=app)\n"
        "from distill.cli import app\n"
        "try:\n"
        "    app(['serve', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "from fastapi.testclient import TestClient\n"
        "r = TestClient(served['app']).post('/predict', json={'user': 3, 'item': 'i4', 'price': 7.5, 'tags': 't1 t2'})\n"
        "heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in sys.argv[2:]))\n"
        "print(json.dumps({'status': r.status_code, 'body': r.json(), 'heavy': heavy}))\n"
    )
    result = run_python(code, str(out), *HEAVY)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200 and 0 < seen["body"]["predictions"][0] < 1
    assert seen["heavy"] == []


def test_load_run_leaves_torchs_rng_as_it_was(tiny_run):
    from distill.run import load_run
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    run = load_run(tiny_run)
    assert "baseline" in run.models
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------- feature kinds


COLUMNS = {"categorical": ["a", "b", None, "a"], "numeric": [1.0, None, 3.5, float("inf")],
           "multi_categorical": ["a b", "", None, "c a b"], "sequence": ["a b", "", None, "c a b"]}


def test_the_config_offers_exactly_the_registered_kinds():
    assert set(typing.get_args(FeatureType)) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_encodes_to_the_layout_it_declares(kind):
    spec = FeatureConfig(name="f", type=kind)
    col = pa.chunked_array([pa.array(COLUMNS[kind])])
    enc = fit_feature(spec, col, "t")
    arr, filled = enc.encode(col, "t")
    k = KINDS[kind]
    assert arr.dtype == np.dtype(k.dtype)
    assert arr.ndim == 1 + len(k.row_shape) and len(arr) == 4
    assert all(isinstance(s, str) or arr.shape[i + 1] == s for i, s in enumerate(k.row_shape))
    assert filled == 1 + (kind == "numeric")  # null (and inf), or the null bag
    assert feature_from_dict(json.loads(json.dumps(enc.to_dict()))).to_dict() == enc.to_dict()
    assert k.graph_input()["shape"][0] == "batch"


def test_streaming_fits_with_the_in_memory_code(tmp_path):
    """One row group: the streamed encoders are the in-memory ones to the bit. Many: the same
    vocabularies, the same moments to rounding, and the same filled counts (every kind)."""
    from distill.data.dataset import Encoders
    from distill.data.stream import fit_streaming
    raw = base_config(tmp_path, n_train=500, data={"streaming": True})
    table = pq.read_table(raw["data"]["train"])
    table = table.set_column(0, "user", pa.array([None if i % 17 == 0 else u for i, u in enumerate(table["user"].to_pylist())]))
    cfg = cfg_of(raw)
    memory = Encoders.fit(cfg, table, "train")
    missing_in_memory = memory.encode(cfg, table, "train").missing
    assert missing_in_memory["user"] == 30
    for rows in (len(table), 60):
        pq.write_table(table, raw["data"]["train"], row_group_size=rows)
        streamed, missing = fit_streaming(cfg)
        assert missing == missing_in_memory
        for name, enc in memory.features.items():
            got = streamed.features[name].to_dict()
            if rows == len(table) or enc.kind != "numeric":
                assert got == enc.to_dict(), name
            else:
                assert got["mean"] == pytest.approx(enc.mean, rel=1e-12) and got["std"] == pytest.approx(enc.std, rel=1e-12)


def test_vocabulary_counts_add_up_over_chunks_of_either_type():
    """min_count applies to the total over chunks; a chunk of integers and one of strings count the
    same categories (a category is its string form)."""
    from distill.data.kinds.categorical import CategoryCounts
    counts = CategoryCounts()
    counts.add(pa.chunked_array([pa.array([3, 5, 5, None], pa.int64())]))
    counts.add(pa.chunked_array([pa.array(["3", "x", None])]))
    assert counts.index(min_count=2).vocab == ["3", "5"]
    assert counts.index(min_count=1).vocab == ["3", "5", "x"]
    ints = CategoryCounts()
    for chunk in ([12, 3], [3, -1]):
        ints.add(pa.chunked_array([pa.array(chunk, pa.int64())]))
    index = ints.index(min_count=1)
    assert index.vocab == ["-1", "12", "3"] and list(index.encode(pa.array([3, 12, 99], pa.int64()))) == [4, 3, 1]


def test_each_kind_says_what_is_wrong_with_a_stored_encoder():
    """What the export loader reports (after 'encoders.json: features[i] (name): ') for each kind."""
    assert KINDS["numeric"].check({"mean": float("nan"), "std": 1.0}) == "'mean' must be a finite number"
    assert KINDS["numeric"].check({"mean": 0.5, "std": "1"}) == "'std' must be a finite number"
    assert KINDS["numeric"].check({"mean": 0.5, "std": 2.0}) is None
    for kind in ("categorical", "multi_categorical"):
        assert KINDS[kind].check({"vocab": ["a", 3]}).startswith("vocab[1] is 3; the vocabulary holds strings only")
        assert KINDS[kind].check({"hash_buckets": 0}) == "'hash_buckets' must be a positive integer"
        assert KINDS[kind].check({"vocab": None}) == "needs a 'vocab' list or 'hash_buckets'"
        assert KINDS[kind].check({"vocab": ["a"]}) is None and KINDS[kind].check({"hash_buckets": 8}) is None


def test_every_config_field_has_a_row_in_the_readmes_config_reference():
    """A field a user can set is documented where users look it up (the README's Config reference
    table); sections' own fields as `section.field`, features' as `features[].field`, models' as `.field`."""
    import typing
    from pydantic import BaseModel
    from distill.config import Config
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("## Config reference")
    table = readme[start:readme.index("### Models", start)]
    missing = []
    for name, field in Config.model_fields.items():
        models = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models or name in ("teachers", "tune"):  # a value, or a section documented as one row
            missing += [] if f"`{name}" in table else [name]
            continue
        for sub in models[0].model_fields:
            key = {"features": f"features[].{sub}", "teacher": f".{sub}", "student": f".{sub}"}.get(name, f"{name}.{sub}")
            if key not in table and not (name == "features" and f"/ `.{sub}`" in table):
                missing.append(key)
    assert not missing, f"config fields without a row in README's Config reference: {missing}"
