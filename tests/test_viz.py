"""Overlays and figures: shapes, value ranges, colours in RGB order, files for slides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from xai_helpers.viz import (
    color_limits,
    grey_image,
    normalize_map,
    overlay,
    plot_grid,
    save_figure,
    show_map,
    signed_overlay,
    to_numpy_image,
    upsample_map,
)


def test_upsample_shapes_and_constant_maps():
    low = np.arange(49, dtype=np.float32).reshape(7, 7)
    up = upsample_map(low, (224, 224))
    assert up.shape == (224, 224)
    assert low.min() - 1e-5 <= up.min() and up.max() <= low.max() + 1e-5
    batch = upsample_map(torch.ones(3, 7, 7), (50, 60))
    assert batch.shape == (3, 50, 60)
    np.testing.assert_allclose(batch, 1.0, atol=1e-6)


def test_normalize_map_range_and_constant():
    m = normalize_map(np.array([[1.0, 3.0], [2.0, 5.0]]))
    assert m.min() == 0.0 and m.max() == 1.0
    assert not np.isnan(normalize_map(np.zeros((7, 7)))).any()
    assert (normalize_map(np.full((7, 7), 3.0)) == 0).all()


def test_overlay_is_rgb_in_unit_range():
    image = np.zeros((32, 48, 3), np.uint8)
    heat = np.zeros((4, 6))
    heat[0, 0] = 1.0
    out = overlay(image, heat, cmap="jet", alpha=1.0)
    assert out.shape == (32, 48, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # alpha=1 shows the colormap itself, in RGB order: jet's top is red, its bottom blue
    top = colormaps["jet"](1.0)[:3]
    bottom = colormaps["jet"](0.0)[:3]
    np.testing.assert_allclose(out[0, 0], top, atol=0.05)
    np.testing.assert_allclose(out[-1, -1], bottom, atol=1e-6)
    assert out[0, 0, 0] > out[0, 0, 2]  # red, not blue: no BGR swap


def test_overlay_alpha_zero_is_the_image():
    rng = np.random.default_rng(0)
    image = rng.random((20, 20, 3)).astype(np.float32)
    np.testing.assert_allclose(overlay(image, rng.random((5, 5)), alpha=0.0), image, atol=1e-6)


def test_to_numpy_image_accepts_chw_tensors():
    t = torch.rand(3, 10, 12)
    assert to_numpy_image(t).shape == (10, 12, 3)
    with pytest.raises(ValueError, match="expected an RGB image"):
        to_numpy_image(np.zeros((10, 12)))


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_grid_and_save(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64, 3)) for _ in range(2)]
    maps = {
        "Grad-CAM": [rng.random((7, 7)) for _ in range(2)],
        "LRP": [rng.standard_normal((64, 64)), None],
    }
    fig = plot_grid(images, maps, row_titles=["a", "b"], scales={"LRP": "signed"})
    assert len(fig.axes) == 2 * 3 + 3  # three maps with a colorbar each
    path = save_figure(fig, tmp_path / f"grid{suffix}", dpi=50)
    assert path.stat().st_size > 1000


def test_grid_rejects_mismatched_columns():
    with pytest.raises(ValueError, match="has 1 maps for 2 images"):
        plot_grid([np.zeros((8, 8, 3))] * 2, {"CAM": [np.zeros((2, 2))]})


def test_save_figure_rejects_unknown_format(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    with pytest.raises(ValueError, match="unsupported figure format"):
        save_figure(fig, tmp_path / "x.bmp")


def _colorbar_of(ax):
    return next(a for a in ax.figure.axes if a is not ax and a.get_label() == "<colorbar>"), None


def test_colorbar_shows_the_computed_values_unless_told_otherwise():
    import matplotlib.pyplot as plt

    m = np.linspace(0, 19.0, 49).reshape(7, 7)
    fig, ax = plt.subplots()
    show_map(ax, m)  # default: the values as computed
    bar, _ = _colorbar_of(ax)
    assert bar.get_ylim() == pytest.approx((0.0, 19.0))
    assert bar.get_ylabel() == "value"
    fig, ax = plt.subplots()
    show_map(ax, m, scale="minmax")
    bar, _ = _colorbar_of(ax)
    assert bar.get_ylim() == pytest.approx((0.0, 1.0))
    assert "min-max normalised" in bar.get_ylabel() and "19" in bar.get_ylabel()
    plt.close("all")


def test_signed_scale_is_symmetric_and_clipped_at_the_percentile():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((64, 64))
    m[0, 0] = 1000.0  # one outlier must not wash the rest out
    h, lo, hi, label = color_limits(m, "signed", clip=99.0)
    assert lo == -hi and hi == pytest.approx(np.percentile(np.abs(m), 99.0))
    assert hi < 5 and "clipped at the 99th pct" in label
    assert color_limits(m, "signed", clip=100)[2] == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="scale must be"):
        color_limits(m, "symmetric")


def test_signed_overlay_keeps_the_grey_photo_where_relevance_is_zero():
    image = np.full((8, 8, 3), 0.5)
    image[..., 0] = 1.0  # a reddish photo: grey where nothing is relevant, not red
    m = np.zeros((8, 8))
    m[0, 0], m[-1, -1] = 2.0, -2.0
    out = signed_overlay(image, m, bound=1.0)
    np.testing.assert_allclose(out[4, 4], grey_image(image)[4, 4])
    assert out[4, 4, 0] == pytest.approx(out[4, 4, 2])  # grey: equal channels
    assert out[0, 0, 0] > 0.9 and out[0, 0, 2] < 0.1  # saturated red
    assert out[-1, -1, 2] > 0.9 and out[-1, -1, 0] < 0.1  # saturated blue


def test_mark_invalid_covers_exactly_the_invalid_pixels():
    import matplotlib.pyplot as plt

    from xai_helpers.viz import mark_invalid

    heat = np.linspace(0, 1, 40 * 30).reshape(30, 40)
    valid = np.ones((30, 40), bool)
    valid[:, :10] = False  # e.g. the corner a rotation brought in
    back = np.where(valid, heat, np.nan)
    fig, ax = plt.subplots()
    show_map(ax, np.nan_to_num(back), np.full((30, 40, 3), 0.5), colorbar=False)
    handle = mark_invalid(ax, valid)
    layer = ax.get_images()[-1].get_array()
    np.testing.assert_array_equal(layer[..., 3], ~valid)  # opaque where invalid, clear elsewhere
    assert len(ax.collections) == 1 and list(ax.collections[0].hatches) == ["///"]
    assert handle.get_label() == "no data" and handle.get_hatch() == "///"
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert rgb.std() > 0  # something was drawn
    with pytest.raises(ValueError, match="bool"):
        mark_invalid(ax, valid.astype(float))
    with pytest.raises(ValueError, match="does not match"):
        mark_invalid(ax, valid[:, :20])
    plt.close(fig)
    fig, ax = plt.subplots()
    show_map(ax, heat, colorbar=False)
    mark_invalid(ax, np.ones((30, 40), bool))  # nothing invalid: no hatch, a clear layer
    assert not ax.collections and ax.get_images()[-1].get_array()[..., 3].max() == 0
    plt.close(fig)
