"""Serving the student alone: export (ONNX / TorchScript: distill.serving.export), the leak check,
batch prediction and the HTTP service. Every path predicts through `ExportedModel`.

Loading an export needs neither torch nor the training code, so this package imports neither;
exporting needs both (`from distill.serving.export import export`)."""
from distill.serving.exported import ExportedModel
from distill.serving.load import load_model

__all__ = ["ExportedModel", "load_model"]
