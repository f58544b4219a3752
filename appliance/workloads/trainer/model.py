"""The built-in models (a tabular MLP, a small image CNN), with scaling and post-processing inside.

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


class ImageCNN(nn.Module):
    """Standardize -> [Conv3x3 -> ReLU] x 2 -> MaxPool -> Linear -> ReLU -> Dropout -> Linear.

    Takes images [batch, channels, rows, cols] (the served tensor) and has the same buffers and
    outputs as the MLP, so ``ServingModel``, evaluation and export treat both alike. Pixels share
    one mean and scale (a per-pixel scale would blow up the always-blank borders of a digit).
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(
        self, shape: tuple[int, int, int], n_outputs: int, width: int = 16, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.input_shape = tuple(shape)
        channels, rows, cols = self.input_shape
        self.register_buffer("x_mean", torch.zeros(1))
        self.register_buffer("x_std", torch.ones(1))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 2 * width * (rows // 2) * (cols // 2)
        self.head = nn.Sequential(
            nn.Linear(flat, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, n_outputs)
        )

    def set_scaling(
        self, x_mean: np.ndarray, x_std: np.ndarray, y_mean: float = 0.0, y_std: float = 1.0
    ) -> None:
        """One mean and scale for every pixel (the per-feature statistics are averaged)."""
        self.x_mean.fill_(float(np.mean(x_mean)))
        self.x_std.fill_(float(np.sqrt(np.mean(np.square(x_std)))) or 1.0)
        self.y_mean.fill_(y_mean)
        self.y_std.fill_(y_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features((x - self.x_mean) / self.x_std))
        return out


def as_input(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Rows of flat features as the model takes them: images for the CNN, the table otherwise."""
    shape = getattr(model, "input_shape", None)
    return x.reshape(-1, *shape) if shape is not None else x


class ServingModel(nn.Module):
    """What gets exported: softmax probabilities, or the prediction in target units."""

    def __init__(self, mlp: TabularMLP | ImageCNN, task: str) -> None:
        super().__init__()
        self.mlp = mlp
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        return out * self.mlp.y_std + self.mlp.y_mean


def build(arch: dict) -> TabularMLP | ImageCNN:
    """The untrained model ``arch`` describes (what ``model.pt`` records next to the weights)."""
    if arch.get("kind") == "cnn":
        return ImageCNN(tuple(arch["image_shape"]), arch["n_outputs"], dropout=arch["dropout"])
    return TabularMLP(arch["n_features"], arch["n_outputs"], tuple(arch["hidden"]), arch["dropout"])
