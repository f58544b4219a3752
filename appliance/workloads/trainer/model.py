"""The tabular MLP, with input scaling and output post-processing inside the module.

Scaling statistics are buffers of the module, so the exported ONNX graph takes raw features and
returns what a caller wants (class probabilities, or the prediction in target units); the
serving side never needs to know how the model was trained.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TabularMLP(nn.Module):
    """Standardize -> [Linear -> ReLU -> Dropout] x N -> Linear, emitting logits or scaled values."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def set_scaling(
        self, x_mean: np.ndarray, x_std: np.ndarray, y_mean: float = 0.0, y_std: float = 1.0
    ) -> None:
        """Load the statistics fitted on the training split."""
        self.x_mean.copy_(torch.as_tensor(x_mean))
        self.x_std.copy_(torch.as_tensor(x_std))
        self.y_mean.fill_(y_mean)
        self.y_std.fill_(y_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or the standardized target (regression), from raw features."""
        out: torch.Tensor = self.net((x - self.x_mean) / self.x_std)
        return out


class ServingModel(nn.Module):
    """What gets exported: softmax probabilities, or the prediction in target units."""

    def __init__(self, mlp: TabularMLP, task: str) -> None:
        super().__init__()
        self.mlp = mlp
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        return out * self.mlp.y_std + self.mlp.y_mean


def build(n_features: int, n_outputs: int, hidden: tuple[int, ...], dropout: float) -> TabularMLP:
    return TabularMLP(n_features, n_outputs, hidden, dropout)
