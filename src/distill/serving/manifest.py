"""What an export directory holds and how its manifest names things: the graph's file per format,
the digests, the output columns. Shared by the exporter (torch) and the loader (no torch)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from distill.data.encoders import LabelEncoder

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAMES = "inputs.json"  # inside a TorchScript archive: the positional inputs' names


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def serving_role(run: Any) -> str:
    """The model that serves (of a `Run`): the distilled student, or the baseline of a run without distillation."""
    return "student" if "student" in run.models else "baseline"


def output_names(label: LabelEncoder) -> list[str]:
    """Column names of a prediction: prob (binary), prob_<class> (multiclass), value (regression)."""
    if label.task == "binary":
        return ["prob"]
    if label.task == "multiclass":
        return [f"prob_{c}" for c in label.classes]
    return ["value"]
