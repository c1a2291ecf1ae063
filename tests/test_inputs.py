"""Inputs checked at the door: every public entry point gives the same clear, one-line error
for the batches a new user tries first, instead of an error from deep inside torch."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from xai_helpers import cams, metrics
from xai_helpers.explain import explain
from xai_helpers.inputs import InputError, check_batch, resolve_targets
from xai_helpers.lrp import LrpError, lrp


def make_net() -> nn.Sequential:
    """conv-ReLU-conv-ReLU-GAP-Linear in float32, as a named Sequential: every method applies."""
    features = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
    )
    parts = [("features", features), ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict([*parts, ("fc", nn.Linear(5, 3))])).eval()


@pytest.fixture(scope="module")
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return make_net()


def layer_kwargs(**extra):
    return {"layer": "features.3", **extra}


ENTRY_POINTS = {
    "cam": (cams.CamError, lambda m, x: cams.cam(m, x, 0, **layer_kwargs())),
    "grad_cam": (cams.CamError, lambda m, x: cams.grad_cam(m, x, 0, **layer_kwargs())),
    "grad_cam_pp": (cams.CamError, lambda m, x: cams.grad_cam_pp(m, x, 0, **layer_kwargs())),
    "score_cam": (
        cams.CamError,
        lambda m, x: cams.score_cam(m, x, 0, **layer_kwargs(progress=False)),
    ),
    "xgrad_cam": (cams.CamError, lambda m, x: cams.xgrad_cam(m, x, 0, **layer_kwargs())),
    "layer_cam": (cams.CamError, lambda m, x: cams.layer_cam(m, x, 0, **layer_kwargs())),
    "eigen_cam": (cams.CamError, lambda m, x: cams.eigen_cam(m, x, 0, **layer_kwargs())),
    "ablation_cam": (
        cams.CamError,
        lambda m, x: cams.ablation_cam(m, x, 0, **layer_kwargs(progress=False)),
    ),
    "lrp": (LrpError, lambda m, x: lrp(m, x, 0, bounds=(-1.0, 1.0))),
    "explain": (InputError, lambda m, x: explain(m, x, "grad_cam", 0, layer="features.3")),
    "deletion": (
        metrics.MetricError,
        lambda m, x: metrics.deletion(m, x, torch.zeros(len(x), *x.shape[-2:]), 0, steps=2),
    ),
    "average_drop_increase": (
        metrics.MetricError,
        lambda m, x: metrics.average_drop_increase(m, x, torch.ones(len(x), *x.shape[-2:]), 0),
    ),
}

BAD_INPUTS = {
    "one channel": (torch.rand(2, 1, 8, 8), r"1 channel, the model expects 3.*expand\(-1, 3"),
    "float64": (
        torch.rand(2, 3, 8, 8, dtype=torch.float64),
        r"torch.float64 but the model's weights are torch.float32.*x.to\(torch.float32\)",
    ),
    "integer": (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), r"loaded.preprocess"),
    "all NaN": (torch.full((2, 3, 8, 8), float("nan")), r"all NaN.*check the preprocessing"),
    "empty": (torch.zeros(0, 3, 8, 8), r"empty batch"),
    "one image": (torch.rand(3, 8, 8), r"x\[None\]"),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_names_the_fix(net, entry, bad) -> None:
    error, call = ENTRY_POINTS[entry]
    x, message = BAD_INPUTS[bad]
    with pytest.raises(error, match=message) as info:
        call(net, x)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_good_batch_passes(net, entry) -> None:
    _, call = ENTRY_POINTS[entry]
    call(net, torch.rand(2, 3, 8, 8))


def test_a_few_nan_values_are_counted() -> None:
    x = torch.rand(1, 3, 4, 4)
    x[0, 1, 2, 2] = float("inf")
    with pytest.raises(InputError, match="contains 1 NaN or inf values"):
        check_batch(x)
    huge = torch.full((1, 3, 4, 4), 3e38)  # finite values whose sum overflows: accepted
    assert check_batch(huge) is huge


def test_channels_without_a_convolution() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert check_batch(torch.rand(1, 3, 2, 2), mlp).shape == (1, 3, 2, 2)
    with pytest.raises(InputError, match="4 channels, the model expects 3.*x\\[:, :3\\]"):
        check_batch(torch.rand(1, 4, 2, 2), mlp, channels=3)


def test_targets_resolved_once() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_targets(None, logits).tolist() == [1, 0]
    assert resolve_targets(2, logits).tolist() == [2, 2]
    assert resolve_targets([2], logits).tolist() == [2, 2]  # one for all
    assert resolve_targets(torch.tensor([0, 1]), logits).tolist() == [0, 1]
    with pytest.raises(InputError, match="out of range: not a class index in 0..2"):
        resolve_targets(3, logits)
    with pytest.raises(InputError, match="3 targets for a batch of 2 images"):
        resolve_targets([0, 1, 2], logits)
    with pytest.raises(InputError, match="class names need a LoadedModel"):
        resolve_targets("cat", logits)
    with pytest.raises(InputError, match="class index or name, not float"):
        resolve_targets([0.5, 1], logits)
    names = {"a": 0, "b": 1}.__getitem__
    assert resolve_targets(["b", "a"], logits, class_index=names).tolist() == [1, 0]
