"""Load an exported student and predict with it: the one path `distill predict`, `distill serve`
and the leak check all go through (encoders from encoders.json, then ONNX Runtime or TorchScript).

    >>> m = ExportedModel("runs/demo/export-onnx")                       # doctest: +SKIP
    >>> m.predict([{"user_id": 7, "user_age": 2, "item_id": 31, "item_category": 4,
    ...             "item_price": 19.9, "item_tags": ["t1", "t7"], "hour": 20}])
    array([0.183], dtype=float32)
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from distill.data.encoders import Encoders
from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.serving.manifest import INPUT_NAMES

TORCHSCRIPT_IS_CODE = ("{where}: a TorchScript export is code and can do anything (read or overwrite files); "
                       "load it only if you trust who wrote it, with --trust-torchscript (Python: trust_torchscript=True), "
                       "or serve an ONNX export")


class ExportedModel:
    """An export directory, loaded: `predict(table or rows) -> (N,) or (N, C)` float32."""

    def __init__(self, directory: str | Path, threads: int | None = None, trust_torchscript: bool = False):
        self.directory = Path(directory)
        self._tmp: tempfile.TemporaryDirectory | None = None  # set by load_model for an on-the-fly export
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise DistillError(f"{self.directory}: not an exported model (no manifest.json)")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
            check_manifest(path, self.manifest)
            self.format: str = self.manifest["format"]
            if self.format == "torchscript" and not trust_torchscript:
                raise DistillError(TORCHSCRIPT_IS_CODE.format(where=self.directory))
            graph_file = self.directory / self.manifest["file"]
            for key in self.manifest["sha256"]:  # (source:* keys name files of the run, never opened here)
                if not key.startswith("source:") and not _plain_name(self.directory, key):
                    raise DistillError(f"{path}: sha256 key '{key}' is not a file name inside the export")
            # Each file is read once, checked against the manifest, and loaded from those bytes.
            graph_bytes = self._verified(self.manifest["file"])
            self.encoders = load_encoders(self.directory / "encoders.json", self.manifest, self._verified("encoders.json"))
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise DistillError(f"{self.directory}: the export is incomplete or corrupt ({e})") from None
        self.names: list[str] = [f["name"] for f in self.manifest["serving"]]
        self.kinds: dict[str, str] = {f["name"]: f["type"] for f in self.manifest["serving"]}
        self.privileged: list[str] = list(self.manifest.get("privileged", []))
        self.outputs: list[str] = list(self.manifest["outputs"])
        self.threads = threads
        # the two-tower retriever's graphs (export --towers): side → {"file", "inputs", "dim"}
        self.towers: dict[str, dict[str, Any]] = {}
        try:
            for side, spec in _towers_spec(path, self.manifest).items():
                if not _plain_name(self.directory, spec["file"]):
                    raise DistillError(f"{path}: towers.{side}.file '{spec['file']}' is not a file name inside the export")
                self.towers[side] = {**spec, "bytes": self._verified(spec["file"])}
        except OSError as e:
            raise DistillError(f"{self.directory}: the export is incomplete or corrupt ({e})") from None
        try:
            self._load_graph(graph_bytes, threads)
            for side, spec in self.towers.items():
                spec["session"] = self._onnx_session(spec.pop("bytes"), threads)
        except DistillError:
            raise
        except Exception as e:  # the runtimes raise their own types for a file they cannot read
            raise DistillError(f"{graph_file}: cannot load the {self.format} graph ({str(e).strip().splitlines()[0]})") from None

    def _verified(self, name: str) -> bytes:
        """The bytes of `name`, a file of the export listed in the manifest's sha256 with its digest.

        The manifest is written by whoever wrote the model, so it proves nothing about who that
        was; what it can do is stop the loader reading anything but the export's own files.
        """
        digests = self.manifest["sha256"]
        if name not in digests or name.startswith("source:"):
            raise DistillError(f"{self.directory / 'manifest.json'}: '{name}' has no sha256 entry")
        data = (self.directory / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digests[name]:
            raise DistillError(f"{self.directory / name}: does not match the manifest's sha256 (modified or corrupt)")
        return data

    def _load_graph(self, graph: bytes, threads: int | None) -> None:
        if self.format == "onnx":
            self._session = self._onnx_session(graph, threads)
            self.graph_inputs = [i.name for i in self._session.get_inputs()]
        elif self.format == "torchscript":
            import torch
            if threads:
                torch.set_num_threads(threads)
            extra = {INPUT_NAMES: ""}
            with warnings.catch_warnings():  # "deprecated": TorchScript is the format asked for
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(io.BytesIO(graph), _extra_files=extra).eval()
            arity = len(list(self._module.graph.inputs())) - 1  # after `self`
            named = json.loads(extra[INPUT_NAMES] or "[]")
            # the archive's names for the positional inputs; a count mismatch shows as extra "?"s
            self.graph_inputs = named[:arity] + ["?"] * (arity - len(named))
        else:
            raise DistillError(f"{self.directory}: unknown export format '{self.format}'")

    @staticmethod
    def _onnx_session(graph: bytes, threads: int | None) -> Any:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # from bytes: ONNX Runtime then has no directory to resolve external-data files in
        return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    # ------------------------------------------------------------------ inputs

    def input_spec(self) -> list[dict[str, Any]]:
        """The graph's inputs as the runtime reports them: name, element type, shape."""
        if self.format == "onnx":
            return [{"name": i.name, "type": i.type, "shape": list(i.shape)} for i in self._session.get_inputs()]
        return [{"name": n, "type": str(i.type())} for n, i in zip(self.graph_inputs, list(self._module.graph.inputs())[1:])]

    def table_from_rows(self, rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> pa.Table:
        """Rows (dicts keyed by serving feature) → a table in the column types the encoders read.

        Extra keys are ignored here (the service rejects them before this point); a missing one
        is an error naming it.
        """
        columns: dict[str, pa.Array] = {}
        for name in self.names if names is None else names:
            kind = self.kinds[name]
            values = []
            for i, row in enumerate(rows):
                if name not in row:
                    raise DistillError(f"row {i}: missing serving feature '{name}'")
                value = row[name]  # null means missing, whatever the kind
                values.append(None if value is None else KINDS[kind].from_json(value, name, i, self.encoders.features[name]))
            try:
                columns[name] = pa.array(values, KINDS[kind].row_type)  # a type the encoders read from any file
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                raise DistillError(f"feature '{name}': {str(e).splitlines()[0]}") from None
        return pa.table(columns)

    def encode(self, table: pa.Table, where: str = "data") -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The graph's inputs for `table` (serving columns only are read) and the filled counts."""
        return self.encoders.encode_arrays(table, where, self.names, workers=self.threads)

    # ------------------------------------------------------------------ prediction

    def run_graph(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph alone on encoded inputs: (B,) or (B, C) float32."""
        if self.format == "onnx":
            return self._session.run(None, {n: inputs[n] for n in self.names})[0]
        import torch
        with torch.inference_mode():
            return self._module(*[torch.from_numpy(inputs[n]) for n in self.names]).numpy()

    def predict(self, data: pa.Table | Sequence[Mapping[str, Any]] | Mapping[str, Any], where: str = "data") -> np.ndarray:
        """Probabilities (binary), class probabilities (multiclass, (N, C)) or values (regression)."""
        if isinstance(data, Mapping):
            data = [data]
        table = data if isinstance(data, pa.Table) else self.table_from_rows(data)
        if table.num_rows == 0:
            return np.zeros((0, len(self.outputs)) if len(self.outputs) > 1 else (0,), dtype=np.float32)
        inputs, _ = self.encode(table, where)
        return self.run_graph(inputs)

    def vectors(self, side: str, data: pa.Table | Sequence[Mapping[str, Any]], where: str = "data") -> np.ndarray:
        """The `side` ("user" or "item") tower's vectors, (N, dim) float32, from that tower's
        features alone; ⟨user vector, item vector⟩ is the student's logit."""
        if side not in self.towers:
            raise DistillError(f"{self.directory}: the export has no {side} tower (export the run with --towers)")
        spec = self.towers[side]
        table = data if isinstance(data, pa.Table) else self.table_from_rows(data, spec["inputs"])
        if table.num_rows == 0:
            return np.zeros((0, spec["dim"]), dtype=np.float32)
        inputs, _ = self.encoders.encode_arrays(table, where, spec["inputs"], workers=self.threads)
        return spec["session"].run(None, {n: inputs[n] for n in spec["inputs"]})[0]

    def columns(self, pred: np.ndarray) -> dict[str, np.ndarray]:
        """A prediction as named columns: prob | prob_<class>... | value."""
        if pred.ndim == 1:
            return {self.outputs[0]: pred}
        return {name: pred[:, j] for j, name in enumerate(self.outputs)}


def _plain_name(directory: Path, name: str) -> bool:
    """`name` is one file name inside `directory`: no separator, no '..', not absolute, and it
    does not resolve (through a link) to somewhere else."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        return False
    return (directory / name).resolve().parent == directory.resolve()


# ---------------------------------------------------------------------- a corrupt export is one line

_JSON = {dict: "an object", list: "a list", str: "a string"}


def check_manifest(path: Path, manifest: Any) -> None:
    """The keys the loader reads, in the shapes it reads them: a hand-edited or damaged manifest
    is one line naming the key, not a KeyError or TypeError later on."""
    if not isinstance(manifest, dict):
        raise DistillError(f"{path}: expected a JSON object, found {_JSON.get(type(manifest), type(manifest).__name__)}")
    for key, kind in (("format", str), ("file", str), ("sha256", dict), ("task", dict), ("serving", list), ("outputs", list)):
        if key not in manifest:
            raise DistillError(f"{path}: missing key '{key}'")
        if not isinstance(manifest[key], kind):
            raise DistillError(f"{path}: '{key}' must be {_JSON[kind]}")
    for i, f in enumerate(manifest["serving"]):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or f.get("type") not in KINDS:
            raise DistillError(f"{path}: serving[{i}] must be an object with a 'name' and a 'type' ({', '.join(KINDS)})")


def _towers_spec(path: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's "towers" entry, checked: {} when the export has none."""
    towers = manifest.get("towers")
    if towers is None:
        return {}
    serving = {f["name"] for f in manifest["serving"]}
    if not isinstance(towers, dict) or set(towers) != {"user", "item"}:
        raise DistillError(f"{path}: 'towers' must be an object with 'user' and 'item'")
    out = {}
    for side, spec in towers.items():
        if (not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or not isinstance(spec.get("dim"), int)
                or not isinstance(spec.get("inputs"), list) or not set(spec["inputs"]) <= serving):
            raise DistillError(f"{path}: towers.{side} must be an object with 'file', 'dim' and 'inputs' (serving features)")
        out[side] = {"file": spec["file"], "inputs": list(spec["inputs"]), "dim": spec["dim"]}
    return out


def load_encoders(path: Path, manifest: dict[str, Any], data: bytes) -> Encoders:
    """encoders.json (`data`, its verified bytes), checked against itself and against the
    manifest's serving features."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("features"), list) or not isinstance(raw.get("label"), dict):
        raise DistillError(f"{path}: expected an object with 'features' (a list) and 'label' (an object)")
    by_name: dict[str, dict[str, Any]] = {}
    for i, f in enumerate(raw["features"]):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or f.get("kind") not in KINDS:
            raise DistillError(f"{path}: features[{i}] must be an object with a 'name' and a 'kind' ({', '.join(KINDS)})")
        by_name[f["name"]] = f
        problem = KINDS[f["kind"]].check(f)
        if problem:
            raise DistillError(f"{path}: features[{i}] ('{f['name']}'): {problem}")
    for f in manifest["serving"]:
        enc = by_name.get(f["name"])
        if enc is None:
            raise DistillError(f"{path}: no encoder for serving feature '{f['name']}' (listed in manifest.json)")
        if enc["kind"] != f["type"]:
            raise DistillError(f"{path}: feature '{f['name']}' is {enc['kind']} here but {f['type']} in manifest.json")
    return Encoders.from_dict(raw)
