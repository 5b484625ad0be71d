"""Load an exported student and predict with it: the one path `distill predict`, `distill serve`
and the leak check all go through (encoders from encoders.json, then ONNX Runtime or TorchScript).

    >>> m = ExportedModel("runs/demo/export-onnx")                       # doctest: +SKIP
    >>> m.predict([{"user_id": 7, "user_age": 2, "item_id": 31, "item_category": 4,
    ...             "item_price": 19.9, "item_tags": ["t1", "t7"], "hour": 20}])
    array([0.183], dtype=float32)
"""
from __future__ import annotations

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
from distill.serving.manifest import INPUT_NAMES, sha256

# Column types a row's values are put in before encoding (the encoders accept these for any file).
ROW_TYPES = {name: kind.row_type for name, kind in KINDS.items()}


class ExportedModel:
    """An export directory, loaded: `predict(table or rows) -> (N,) or (N, C)` float32."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        self.directory = Path(directory)
        self._tmp: tempfile.TemporaryDirectory | None = None  # set by load_model for an on-the-fly export
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise DistillError(f"{self.directory}: not an exported model (no manifest.json)")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
            self.format: str = self.manifest["format"]
            graph_file = self.directory / self.manifest["file"]
            for name, digest in self.manifest["sha256"].items():
                if not name.startswith("source:") and sha256(self.directory / name) != digest:
                    raise DistillError(f"{self.directory / name}: does not match the manifest's sha256 (modified or corrupt)")
            self.encoders = Encoders.load(self.directory / "encoders.json")
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise DistillError(f"{self.directory}: the export is incomplete or corrupt ({e})") from None
        self.names: list[str] = [f["name"] for f in self.manifest["serving"]]
        self.kinds: dict[str, str] = {f["name"]: f["type"] for f in self.manifest["serving"]}
        unknown = [k for k in self.kinds.values() if k not in KINDS]
        if unknown:
            raise DistillError(f"{path}: unknown feature type '{unknown[0]}' (known: {', '.join(KINDS)})")
        self.privileged: list[str] = list(self.manifest.get("privileged", []))
        self.outputs: list[str] = list(self.manifest["outputs"])
        self.threads = threads
        try:
            self._load_graph(graph_file, threads)
        except DistillError:
            raise
        except Exception as e:  # the runtimes raise their own types for a file they cannot read
            raise DistillError(f"{graph_file}: cannot load the {self.format} graph ({str(e).strip().splitlines()[0]})") from None

    def _load_graph(self, path: Path, threads: int | None) -> None:
        if self.format == "onnx":
            import onnxruntime as ort
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.graph_inputs = [i.name for i in self._session.get_inputs()]
        elif self.format == "torchscript":
            import torch
            if threads:
                torch.set_num_threads(threads)
            extra = {INPUT_NAMES: ""}
            with warnings.catch_warnings():  # "deprecated": TorchScript is the format asked for
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(str(path), _extra_files=extra).eval()
            arity = len(list(self._module.graph.inputs())) - 1  # after `self`
            named = json.loads(extra[INPUT_NAMES] or "[]")
            # the archive's names for the positional inputs; a count mismatch shows as extra "?"s
            self.graph_inputs = named[:arity] + ["?"] * (arity - len(named))
        else:
            raise DistillError(f"{self.directory}: unknown export format '{self.format}'")

    # ------------------------------------------------------------------ inputs

    def input_spec(self) -> list[dict[str, Any]]:
        """The graph's inputs as the runtime reports them: name, element type, shape."""
        if self.format == "onnx":
            return [{"name": i.name, "type": i.type, "shape": list(i.shape)} for i in self._session.get_inputs()]
        return [{"name": n, "type": str(i.type())} for n, i in zip(self.graph_inputs, list(self._module.graph.inputs())[1:])]

    def table_from_rows(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        """Rows (dicts keyed by serving feature) → a table in the column types the encoders read.

        Extra keys are ignored here (the service rejects them before this point); a missing one
        is an error naming it.
        """
        columns: dict[str, pa.Array] = {}
        for name in self.names:
            kind = self.kinds[name]
            values = []
            for i, row in enumerate(rows):
                if name not in row:
                    raise DistillError(f"row {i}: missing serving feature '{name}'")
                value = row[name]  # null means missing, whatever the kind
                values.append(None if value is None else KINDS[kind].from_json(value, name, i, self.encoders.features[name]))
            try:
                columns[name] = pa.array(values, ROW_TYPES[kind])
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

    def columns(self, pred: np.ndarray) -> dict[str, np.ndarray]:
        """A prediction as named columns: prob | prob_<class>... | value."""
        if pred.ndim == 1:
            return {self.outputs[0]: pred}
        return {name: pred[:, j] for j, name in enumerate(self.outputs)}
