"""A small convolutional teacher for the MNIST benchmarks, as a `module:` model:

    teacher: {model: "module:benchmarks.mnist_conv:ConvNet"}

The 784 pixel features (p0 … p783, each a numeric feature's (value, missing) pair) are put back on
their 28 × 28 grid: conv 5×5 (16) → pool → conv 5×5 (32) → pool → 128 → 10. It sees what an MLP
student sees, but with the image's locality built in, so it is clearly better at this data size.
`hint_layer` opts it in to hint distillation (distill.hints): the input of `out` is its last hidden layer.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.names = [f.name for f in spec.features]
        if len(self.names) != 784:
            raise ValueError(f"ConvNet reads the 784 pixels of a 28x28 image, not {len(self.names)} features")
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(float(spec.options.get("dropout", 0.3))))
        self.out = nn.Linear(128, spec.out_dim)
        self.hint_layer = "out"

    def forward(self, batch) -> torch.Tensor:
        x = torch.stack([batch[n][:, 0] for n in self.names], dim=1).view(-1, 1, 28, 28)  # (B, 1, 28, 28)
        return self.out(self.fc(self.conv(x).flatten(1)))  # (B, 10) logits
