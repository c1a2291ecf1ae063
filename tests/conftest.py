"""Shared fixtures: the real offline model is loaded once per test session."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from tiny_net import TinyNet, tiny_net

matplotlib.use("Agg")  # no display in CI


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its real ImageNet weights, on the CPU."""
    from xai_helpers.models import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def tiny() -> TinyNet:
    """The shared small float64 CNN (tests/tiny_net.py), fresh for each test module."""
    return tiny_net()


@pytest.fixture(scope="module")
def cat_x(lite0) -> torch.Tensor:
    """The cat photo and the cat-and-coffee photo, preprocessed for Lite0."""
    return lite0.preprocess(["data/chelsea.png", "data/cat_and_coffee.png"])
