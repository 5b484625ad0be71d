"""Serving the student alone: export (ONNX / TorchScript), the leak check, batch prediction and
the HTTP service. Every path predicts through `ExportedModel`."""
from distill.serving.export import export
from distill.serving.exported import ExportedModel, load_model

__all__ = ["ExportedModel", "export", "load_model"]
