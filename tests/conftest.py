"""Shared fixtures: the real offline model is loaded once per test session."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")  # no display in CI


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its real ImageNet weights, on the CPU."""
    from xai_helpers.models import load_model

    return load_model("efficientnet_lite0", device="cpu")
