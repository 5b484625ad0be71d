"""`load_model`: what `distill predict` and `distill serve` open. An export directory loads without
torch or the training code; a run directory is exported first (that needs both).

    >>> model = load_model("runs/demo/export-onnx")                      # doctest: +SKIP
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from distill.errors import DistillError
from distill.serving.exported import ExportedModel


def load_model(source: str | Path, fmt: str = "onnx", threads: int | None = None) -> ExportedModel:
    """An export directory, or a run directory exported on the fly (to a temporary directory that
    lives as long as the returned model)."""
    source = Path(source)
    if (source / "manifest.json").is_file():
        return ExportedModel(source, threads)
    if not (source / "config.yaml").is_file():
        raise DistillError(f"{source}: neither a run directory (config.yaml) nor an exported model (manifest.json)")
    from distill.serving.export import export  # torch and the run: only a run directory needs them
    tmp = tempfile.TemporaryDirectory(prefix="distill-export-")
    model = ExportedModel(export(source, fmt, Path(tmp.name) / "model"), threads)
    model._tmp = tmp  # the directory goes when the model does
    return model
