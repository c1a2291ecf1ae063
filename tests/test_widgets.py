"""Tests of xai_helpers.widgets with a tiny model and an exactly equivariant stand-in map."""

from __future__ import annotations

import ipywidgets
import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from xai_helpers import perturb as P
from xai_helpers.models import LoadedModel, imagenet_classes
from xai_helpers.widgets import explore, plot_exploration, robustness_explorer

matplotlib.use("Agg")


class MeanLogit(nn.Module):
    """Logit of class 3 = 8 + 4 x mean of the red channel; the rest 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 1000, dtype=x.dtype)
        logits[:, 3] = 8.0 + 4.0 * x[:, 0].mean(dim=(1, 2))
        return logits


def tiny_loaded(size: int = 48) -> LoadedModel:
    return LoadedModel(
        name="mean_logit",
        model=MeanLogit().eval(),
        geometry=lambda im: im,
        transform=lambda im: torch.zeros(3, size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        class_names=imagenet_classes(),
        cam_layer="",
        input_size=size,
        device=torch.device("cpu"),
        pretrained=False,
    )


def brightness(loaded, x, method, target):
    """A 'map' that moves exactly with the picture: its mean intensity (rotation-equivariant)."""
    assert method == "brightness"
    return x.mean(dim=1)


def smooth_picture(size: int = 48) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    blob = np.exp(-((xs - 0.35 * size) ** 2 + (ys - 0.6 * size) ** 2) / (2 * (0.15 * size) ** 2))
    return np.stack([blob, 0.5 * blob, 1 - blob], axis=-1).astype(np.float32)


def test_explore_identity_agrees_perfectly() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    res = explore(lm, pic, "brightness", explain_fn=brightness)
    assert res.target == 3 and res.before.top1[0] == 3
    assert res.p_after == pytest.approx(res.p_before)
    assert res.agreement.spearman == pytest.approx(1.0) and res.agreement.iou == 1.0
    assert res.valid.all()


def test_explore_rotation_is_aligned_back() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    res = explore(lm, pic, "brightness", angle=90, explain_fn=brightness)
    np.testing.assert_allclose(res.perturbed, np.rot90(pic), atol=1e-6)
    assert res.agreement.spearman > 0.999 and res.agreement.iou > 0.95
    res30 = explore(lm, pic, "brightness", angle=30, scale=1.2, explain_fn=brightness)
    assert res30.agreement.valid_fraction < 0.95
    assert np.isnan(res30.aligned[~res30.valid]).all()
    assert res30.agreement.spearman > 0.98


def test_explore_masks_text_and_target() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    masked = explore(lm, pic, "brightness", mask_fraction=0.25, fill="zeros", explain_fn=brightness)
    changed = (masked.perturbed != pic).any(axis=-1)
    assert changed.sum() <= round(0.25 * 48 * 48)
    # the brightest pixels were masked, so the red mean (and the class probability) falls
    assert masked.p_after < masked.p_before
    text = explore(lm, pic, "brightness", text="cat", text_size=16, explain_fn=brightness)
    assert not np.array_equal(text.perturbed, pic)
    other = explore(lm, pic, "brightness", target=5, explain_fn=brightness)
    assert other.target == 5


def test_plot_and_widget_build_without_a_browser() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    fig = plot_exploration(explore(lm, pic, "brightness", angle=20, explain_fn=brightness))
    assert len(fig.axes) == 5
    matplotlib.pyplot.close(fig)
    box = robustness_explorer(lm, pic, methods=("brightness",), explain_fn=brightness)
    assert isinstance(box, ipywidgets.VBox)
    sliders = [w for row in box.children[:2] for w in row.children]
    assert {s.description for s in sliders} >= {"angle", "scale", "text size", "mask top-k"}
    for s in sliders:  # moving a slider re-runs explore without error
        if s.description == "angle":
            s.value = 45.0


def test_explore_rejects_bad_picture() -> None:
    lm = tiny_loaded()
    with pytest.raises(P.PerturbationError):
        explore(lm, np.zeros((3, 48, 48), np.float32), "brightness", explain_fn=brightness)
