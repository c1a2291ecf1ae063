"""The one-call dispatcher returns each method's map at input resolution, unchanged."""

from __future__ import annotations

import pytest
import torch

from xai_helpers.cams import grad_cam
from xai_helpers.explain import LABELS, METHODS, SIGNED, UnknownMethodError, explain
from xai_helpers.images import sample_path
from xai_helpers.lrp import lrp


@pytest.fixture(scope="module")
def small_batch(lite0):
    # 96 px keeps Score-CAM cheap (3 x 3 feature maps); the network accepts any size
    x = lite0.preprocess([sample_path("chelsea"), sample_path("coffee")])
    return torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", antialias=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_an_input_sized_map(lite0, small_batch, method):
    # Score-CAM: one forward pass per channel, so explain a 320-channel block, not 1280-channel bn2
    kwargs = {"progress": False, "layer": "blocks.6"} if method == "score_cam" else {}
    if method == "rise":  # one forward pass per mask: a few masks suffice for shapes and ranges
        kwargs = {"progress": False, "n_masks": 16}
    maps = explain(lite0, small_batch, method, target=[285, 967], **kwargs)
    assert maps.shape == (2, 96, 96)
    assert torch.isfinite(maps).all()
    assert not maps.requires_grad
    if method not in SIGNED:
        assert maps.min() >= 0 and maps.max() <= 1
    assert method in LABELS


def test_dispatch_is_the_method_itself(lite0, small_batch):
    direct = grad_cam(lite0, small_batch, "espresso").upsampled
    torch.testing.assert_close(explain(lite0, small_batch, "grad_cam", "espresso"), direct)
    relevance = lrp(lite0, small_batch, 967, composite="epsilon").relevance
    torch.testing.assert_close(
        explain(lite0, small_batch, "lrp", 967, composite="epsilon"), relevance
    )


def test_unknown_method(lite0, small_batch):
    with pytest.raises(UnknownMethodError, match="unknown method 'gradcam'.*grad_cam"):
        explain(lite0, small_batch, "gradcam")
