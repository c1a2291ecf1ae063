"""The small CNN the CAM, CAM-variant and occlusion tests share (one definition)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-ReLU-conv (`features.2`, the target) -ReLU-conv-ReLU-GAP-Linear.

    The head after `features.2` is non-linear, so gradients vary over positions and activations
    can be negative: Grad-CAM++'s alpha is not constant. `features.5`'s output is what GAP sees.
    `features.1` is an in-place ReLU: the hooks must survive it. In float64 it is exact enough to
    compare sums term by term.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 5, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(5, 4, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))

    def head_from(self, a: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the output of features[start - 1]: the rest of the network."""
        return self.fc(self.pool(self.features[start:](a)).flatten(1))


def tiny_net() -> TinyNet:
    """A TinyNet in float64 and eval mode, its weights seeded (0): the same net in every test."""
    torch.manual_seed(0)
    return TinyNet().double().eval()
