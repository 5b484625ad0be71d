"""`load_model`: what `distill predict` and `distill serve` open. An export directory loads without
torch or the training code; a run directory is exported first (that needs both).

    >>> model = load_model("runs/demo/export-onnx")                      # doctest: +SKIP
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from distill.errors import DistillError
from distill.serving.exported import TORCHSCRIPT_IS_CODE, ExportedModel


def load_model(source: str | Path, fmt: str = "onnx", threads: int | None = None,
               trust_torchscript: bool = False, towers: bool = False) -> ExportedModel:
    """An export directory, or a run directory exported on the fly (to a temporary directory that
    lives as long as the returned model). A TorchScript export is code: it loads only with
    `trust_torchscript=True` (README, "Trust boundary"). `towers`: a run is exported with its
    two-tower graphs too (export --towers)."""
    source = Path(source)
    if (source / "manifest.json").is_file():
        return ExportedModel(source, threads, trust_torchscript)
    if not (source / "config.yaml").is_file():
        raise DistillError(f"{source}: neither a run directory (config.yaml) nor an exported model (manifest.json)")
    if fmt == "torchscript" and not trust_torchscript:
        raise DistillError(TORCHSCRIPT_IS_CODE.format(where=source))
    from distill.serving.export import export  # torch and the run: only a run directory needs them
    tmp = tempfile.TemporaryDirectory(prefix="distill-export-")
    model = ExportedModel(export(source, fmt, Path(tmp.name) / "model", towers=towers), threads, trust_torchscript)
    model._tmp = tmp  # the directory goes when the model does
    return model
