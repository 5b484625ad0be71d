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
    """Logits for every row of `data`, in eval mode, on the model's device; the model sees only
    `features`, batches are moved to where its weights are (the split stays where it is)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = [model(b.select(features).to(device)).float() for b in data.batches(batch_size)]
    model.train(was_training)
    return torch.cat(out)  # (N,) or (N, C)


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s weights live (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_output(logits: torch.Tensor, label: LabelEncoder, temperature: float = 1.0) -> np.ndarray:
    """Logits → what a user reads: probability, class probabilities, or a value on the label's scale."""
    logits = logits.detach().cpu()  # .numpy() reads host memory: a GPU's logits are copied first
    if label.task == "binary":
        return torch.sigmoid(logits / temperature).numpy()
    if label.task == "multiclass":
        return torch.softmax(logits / temperature, dim=-1).numpy()
    return (logits * label.std + label.mean).numpy()


def label_values(data: Encoded, label: LabelEncoder) -> np.ndarray:
    assert data.y is not None
    y = data.y.cpu().numpy()
    return y * label.std + label.mean if label.task == "regression" else y
