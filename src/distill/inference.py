"""A trained model's predictions on encoded data: logits in eval mode, and what a user reads from
them. Used by training (evaluation), the report and `Run.predict`; no training code here."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distill.data.batch import Encoded
from distill.data.encoders import LabelEncoder


@torch.no_grad()
def predict_logits(model: nn.Module, data: Encoded, features: list[str], batch_size: int = 8192) -> torch.Tensor:
    """Logits for every row of `data`, in eval mode; the model sees only `features`."""
    was_training = model.training
    model.eval()
    out = [model(b.select(features)) for b in data.batches(batch_size)]
    model.train(was_training)
    return torch.cat(out)  # (N,) or (N, C)


def to_output(logits: torch.Tensor, label: LabelEncoder, temperature: float = 1.0) -> np.ndarray:
    """Logits → what a user reads: probability, class probabilities, or a value on the label's scale."""
    if label.task == "binary":
        return torch.sigmoid(logits / temperature).numpy()
    if label.task == "multiclass":
        return torch.softmax(logits / temperature, dim=-1).numpy()
    return (logits * label.std + label.mean).numpy()


def label_values(data: Encoded, label: LabelEncoder) -> np.ndarray:
    assert data.y is not None
    y = data.y.numpy()
    return y * label.std + label.mean if label.task == "regression" else y
