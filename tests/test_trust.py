"""The trust boundary (README, "Trust boundary"): nothing runs that the user did not knowingly ask for.

A TorchScript export is code and loads only with --trust-torchscript; the manifest's sha256 keys
are file names inside the export and every file the loader reads is listed; serving or exporting
the student never imports the teacher's `module:` factory; `python -m distill` does not import
from the working directory."""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

import distill
from distill.cli import app
from distill.errors import DistillError
from distill.serving import ExportedModel, load_model
from distill.serving.export import export, sha256

from conftest import trained_config

SRC = Path(distill.__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return Path(trained_config(tmp_path_factory.mktemp("trust"))["output"])


@pytest.fixture
def no_server(monkeypatch):
    """The service's runner replaced by a recorder: `distill serve` returns instead of listening."""
    import distill.serving.service
    started: list = []
    monkeypatch.setattr(distill.serving.service, "run_service", lambda app, *a, **kw: started.append(app))
    return started


# ----------------------------------------------------------------------------- TorchScript is code


class ReadsAFile(torch.nn.Module):
    """What a crafted model.pt can do: its forward returns the bytes of a file it was never given."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.from_file(self.path, size=self.size, dtype=torch.uint8).float()[: a.shape[0]]


@pytest.fixture(scope="module")
def crafted(run_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A TorchScript export whose model.pt reads `secret`, with a manifest that hashes it correctly
    (whoever writes the model writes the manifest)."""
    tmp = tmp_path_factory.mktemp("crafted")
    secret = tmp / "secret"
    secret.write_bytes(bytes([11, 22, 33, 44]))
    d = export(run_dir, "torchscript", tmp / "export")
    torch.jit.save(torch.jit.script(ReadsAFile(str(secret), 4)), str(d / "model.pt"),
                   _extra_files={"inputs.json": json.dumps(["user", "item", "price", "tags"])})
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["model.pt"] = sha256(d / "model.pt")
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d, secret


def test_a_torchscript_export_is_refused_without_the_flag(crafted, run_dir, tmp_path, no_server):
    d, _ = crafted
    data = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["test"])
    r = invoke("predict", d, data, "-o", tmp_path / "p.parquet")
    assert r.exit_code == 2, r.output
    assert "--trust-torchscript" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.parquet").exists()

    r = invoke("serve", d)
    assert r.exit_code == 2 and "--trust-torchscript" in r.output
    assert no_server == []
    with pytest.raises(DistillError, match="trust_torchscript=True"):
        load_model(d)
    with pytest.raises(DistillError, match="--trust-torchscript"):
        ExportedModel(d)
    # a run directory exported on the fly to TorchScript needs the same consent, asked before exporting
    with pytest.raises(DistillError, match="--trust-torchscript"):
        load_model(run_dir, "torchscript")


def test_with_the_flag_it_loads_and_runs_as_code(crafted, tmp_path, no_server):
    d, secret = crafted
    rows = [{"user": 1, "item": "i1", "price": 2.0, "tags": ["t1"]}] * 3
    # what the flag consents to: this model.pt returns the bytes of a file it was never given
    assert load_model(d, trust_torchscript=True).predict(rows).tolist() == [11.0, 22.0, 33.0]
    r = invoke("serve", d, "--trust-torchscript")
    assert r.exit_code == 0, r.output
    assert len(no_server) == 1


# ----------------------------------------------------------------------------- the manifest names files of the export


@pytest.fixture
def onnx_export(run_dir, tmp_path) -> Path:
    return export(run_dir, "onnx", tmp_path / "export")


def _add_key(d: Path, key: str, digest: str) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"][key] = digest
    (d / "manifest.json").write_text(json.dumps(manifest))


def _record_opens(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = io.open

    def recording(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            opened.append(os.path.realpath(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording)
    monkeypatch.setattr(io, "open", recording)
    return opened


@pytest.mark.parametrize("how", ["../secret", "absolute", "link"])
def test_a_sha256_key_outside_the_export_is_refused_and_never_opened(onnx_export, tmp_path, monkeypatch, how):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0")
    key = {"../secret": "../secret", "absolute": str(secret), "link": "link"}[how]
    if how == "link":
        (onnx_export / "link").symlink_to(secret)
    _add_key(onnx_export, key, sha256(secret))  # the right digest: only the key is wrong
    opened = _record_opens(monkeypatch)
    with pytest.raises(DistillError) as e:
        ExportedModel(onnx_export)
    assert f"sha256 key '{key}' is not a file name inside the export" in str(e.value)
    assert str(secret.resolve()) not in opened


def test_every_file_the_loader_reads_is_listed(onnx_export):
    manifest = json.loads((onnx_export / "manifest.json").read_text())
    del manifest["sha256"]["encoders.json"]
    (onnx_export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DistillError, match="'encoders.json' has no sha256 entry"):
        ExportedModel(onnx_export)


def test_an_onnx_graph_cannot_pull_in_external_data(onnx_export, monkeypatch):
    # ONNX Runtime is given the verified bytes, not a path: it has no directory to read
    # external-data files from, even ones inside the export and listed in the manifest
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(onnx_export / "model.onnx"),
                    save_as_external_data=True, location="weights.bin", size_threshold=0)
    _add_key(onnx_export, "model.onnx", sha256(onnx_export / "model.onnx"))
    _add_key(onnx_export, "weights.bin", sha256(onnx_export / "weights.bin"))
    opened = _record_opens(monkeypatch)
    with pytest.raises(DistillError, match="model.onnx: cannot load the onnx graph"):
        ExportedModel(onnx_export)
    assert str((onnx_export / "weights.bin").resolve()) not in opened


# ----------------------------------------------------------------------------- a run directory's module: models are code

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")  # what any import of this module does

def make(spec):
    from distill.models import MODELS
    return MODELS["dnn"](spec)
"""


@pytest.fixture
def evil_run(run_dir, tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """A copy of the run whose teacher is `module:evilpkg:make` (the same DNN, built by code that
    leaves a marker file when imported), with evilpkg importable."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["teacher"]["model"] = "module:evilpkg:make"
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    pkg, marker = tmp_path / "pkg", tmp_path / "MARKER"
    pkg.mkdir()
    (pkg / "evilpkg.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "evilpkg", raising=False)
    yield run, pkg, marker
    sys.modules.pop("evilpkg", None)


def test_serving_and_exporting_the_student_do_not_import_the_teachers_factory(evil_run, tmp_path, no_server):
    run, _, marker = evil_run
    data = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["test"])
    r = invoke("export", run, "--out", tmp_path / "e")
    assert r.exit_code == 0, r.output
    r = invoke("predict", run, data, "-o", tmp_path / "p.parquet")
    assert r.exit_code == 0, r.output
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 300
    r = invoke("serve", run)
    assert r.exit_code == 0 and len(no_server) == 1
    assert not marker.exists() and "evilpkg" not in sys.modules
    r = invoke("evaluate", run, "--role", "student", "--json")
    assert r.exit_code == 0 and set(json.loads(r.output)) == {"student"}
    assert not marker.exists() and "evilpkg" not in sys.modules


def test_evaluating_the_teacher_imports_its_factory(evil_run):
    run, _, marker = evil_run
    r = invoke("evaluate", run, "--json")  # documented: a run directory with a module: model is code
    assert r.exit_code == 0, r.output
    assert "teacher" in json.loads(r.output) and marker.read_text() == "imported"
    r = invoke("evaluate", run, "--role", "nobody")
    assert r.exit_code == 2 and "--role: 'nobody'" in r.output


def _python_m_distill(args: list, cwd: Path, path: list[Path]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(map(str, path)), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_m_distill_imports_nothing_from_the_working_directory(evil_run, tmp_path):
    run, pkg, marker = evil_run
    # beside the user: the module the config names, and one that shadows a library distill imports
    (pkg / "yaml.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'YAML')!r}).write_text('x')\n")
    p = _python_m_distill(["evaluate", run], cwd=pkg, path=[SRC])
    assert p.returncode == 2, p.stderr
    assert "cannot import 'evilpkg'" in p.stderr and "PYTHONPATH" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists() and not (tmp_path / "YAML").exists()


def test_a_module_model_imports_from_pythonpath(evil_run):
    run, pkg, marker = evil_run
    p = _python_m_distill(["evaluate", run, "--json"], cwd=pkg.parent, path=[pkg, SRC])
    assert p.returncode == 0, p.stderr
    assert "teacher" in json.loads(p.stdout) and marker.exists()
