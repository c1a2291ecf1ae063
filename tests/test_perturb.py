"""Tests of xai_helpers.perturb: affine round trips, colour swaps, text, masking, map agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats
from torch import nn

from xai_helpers import perturb as P
from xai_helpers.models import LoadedModel, imagenet_classes


def smooth_map(size: int = 64, seed: int = 0) -> np.ndarray:
    """A sum of a few Gaussian blobs: smooth, so bilinear resampling errors are small."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    out = np.zeros((size, size))
    for _ in range(4):
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        sigma = rng.uniform(0.12, 0.25) * size
        out += rng.uniform(0.5, 1.0) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return out


def random_image(size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)


def slow_warp(array: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: map every output pixel centre back with M^-1 and interpolate with scipy.

    Pixel (i, j) has its centre at (x, y) = (j + 0.5, i + 0.5); scipy indexes centres at integers,
    and mode="nearest" clamps at the border like grid_sample's padding_mode="border".
    """
    h, w = array.shape
    inv = np.linalg.inv(matrix)
    out = np.full((h, w), np.nan)
    valid = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            x, y, _ = inv @ np.array([j + 0.5, i + 0.5, 1.0])
            if 0 <= x <= w and 0 <= y <= h:
                valid[i, j] = True
                out[i, j] = ndimage.map_coordinates(
                    array, [[y - 0.5], [x - 0.5]], order=1, mode="nearest"
                )[0]
    return out, valid


# --------------------------------------------------------------------------------------------
# affine
# --------------------------------------------------------------------------------------------


def test_affine_matrix_identity_and_composition() -> None:
    np.testing.assert_allclose(P.affine_matrix((40, 60)), np.eye(3), atol=1e-15)
    m30 = P.affine_matrix((40, 60), angle=30)
    m60 = P.affine_matrix((40, 60), angle=60)
    np.testing.assert_allclose(m30 @ m30, m60, atol=1e-12)
    m = P.affine_matrix((40, 60), angle=25, scale=1.7, translate=(3.0, -5.0))
    # the centre goes to centre + translation
    np.testing.assert_allclose(m @ [30.0, 20.0, 1.0], [33.0, 15.0, 1.0], atol=1e-12)
    # distances scale by `scale`
    a, b = m @ [0.0, 0.0, 1.0], m @ [10.0, 0.0, 1.0]
    assert np.hypot(*(a - b)[:2]) == pytest.approx(17.0)


def test_rotation_is_counter_clockwise_on_screen() -> None:
    m = np.zeros((64, 64))
    m[32, 50] = 1.0  # right of the centre
    w = P.warp(m, P.affine_matrix((64, 64), angle=90), mode="nearest")
    ((row, col),) = np.argwhere(w.array > 0.5)
    assert row < 32 and col == 32  # now above the centre


def test_rotation_by_90_degrees_is_rot90_exactly() -> None:
    img = random_image(32)
    w = P.affine(img, angle=90)
    assert w.valid.all()
    np.testing.assert_allclose(w.array, np.rot90(img, k=1), atol=1e-6)
    assert w.array.dtype == np.float32


def test_warp_matches_slow_reference() -> None:
    a = np.random.default_rng(1).random((23, 29))
    for angle, scale, shift in [
        (17.0, 1.0, (0.0, 0.0)),
        (-40.0, 1.3, (2.5, -3.0)),
        (0, 0.6, (4, 1)),
    ]:
        m = P.affine_matrix(a.shape, angle=angle, scale=scale, translate=shift)
        got = P.warp(a, m, fill=np.nan)
        ref, ref_valid = slow_warp(a, m)
        np.testing.assert_array_equal(got.valid, ref_valid)
        np.testing.assert_allclose(got.array[ref_valid], ref[ref_valid], atol=1e-12)
        assert np.isnan(got.array[~ref_valid]).all()


def test_identity_warp_is_exact() -> None:
    img = random_image()
    w = P.affine(img)
    assert w.valid.all()
    np.testing.assert_allclose(w.array, img, atol=1e-7)


@pytest.mark.parametrize(
    ("angle", "scale", "translate"),
    [
        (30.0, 1.0, (0.0, 0.0)),
        (0.0, 1.5, (0.0, 0.0)),
        (0.0, 0.7, (0.0, 0.0)),
        (0.0, 1.0, (9.0, -6.0)),
        (-20.0, 1.25, (5.0, 4.0)),
    ],
)
def test_affine_round_trip_recovers_map_and_marks_invalid(angle, scale, translate) -> None:
    size = 96
    original = smooth_map(size)
    m = P.affine_matrix((size, size), angle=angle, scale=scale, translate=translate)
    forward = P.warp(original, m)
    back = P.unwarp(forward.array, m, valid=forward.valid)

    # recovered within interpolation error where valid
    err = np.abs(back.array - original)[back.valid]
    assert err.max() < 0.02 * original.max()
    assert np.isnan(back.array[~back.valid]).all()

    # invalid = exactly the pixels whose image under M leaves the frame; within a couple of
    # pixels of either frame's edge the interpolation may go either way, elsewhere it may not
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    qx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    qy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    margin = 1.5
    inner = (xs > 2.5) & (xs < size - 2.5) & (ys > 2.5) & (ys < size - 2.5)
    clearly_in = (qx > margin) & (qx < size - margin) & (qy > margin) & (qy < size - margin)
    clearly_in &= inner
    clearly_out = (qx < -margin) | (qx > size + margin) | (qy < -margin) | (qy > size + margin)
    assert back.valid[clearly_in].all()
    assert not back.valid[clearly_out].any()
    if angle or scale > 1 or translate != (0.0, 0.0):
        assert clearly_out.any()  # the test checks something


def test_unwarp_treats_nan_as_invalid_not_zero() -> None:
    original = smooth_map(40)
    hole = original.copy()
    hole[10:20, 10:20] = np.nan
    back = P.unwarp(hole, np.eye(3))
    assert not back.valid[10:20, 10:20].any()
    assert back.valid[25:, 25:].all()
    np.testing.assert_allclose(back.array[back.valid], original[back.valid], atol=1e-12)


def test_affine_errors_are_value_errors() -> None:
    with pytest.raises(P.PerturbationError, match="scale"):
        P.affine_matrix((10, 10), scale=0)
    with pytest.raises(ValueError, match="channels-first"):
        P.affine(np.zeros((3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.affine(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match="3x3"):
        P.warp(np.zeros((8, 8)), np.eye(2))
    with pytest.raises(ValueError, match="does not match"):
        P.unwarp(np.zeros((8, 8)), np.eye(3), valid=np.ones((4, 4), bool))


# --------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------


def test_bgr_swap_twice_is_identity() -> None:
    img = random_image()
    once = P.swap_rgb_bgr(img)
    np.testing.assert_array_equal(once[..., 0], img[..., 2])
    np.testing.assert_array_equal(once[..., 1], img[..., 1])
    assert not np.array_equal(once, img)
    np.testing.assert_array_equal(P.swap_rgb_bgr(once), img)


def test_grayscale_matches_pillow_luma() -> None:
    rgb = (random_image(40, seed=3) * 255).round().astype(np.uint8)
    grey = P.grayscale(rgb)
    assert grey.shape == (40, 40, 3)
    assert np.array_equal(grey[..., 0], grey[..., 2])
    pil = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255
    assert np.abs(grey[..., 0] - pil).max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="sum to 1"):
        P.grayscale(rgb, weights=(1.0, 1.0, 1.0))


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [None, "white"])
def test_text_changes_only_pixels_inside_its_box(background) -> None:
    img = random_image(128, seed=5)
    result = P.draw_text(img, "espresso", size=24, color="red", background=background)
    left, top, right, bottom = result.box
    assert 0 <= left < right <= 128 and 0 <= top < bottom <= 128
    inside = np.zeros((128, 128), dtype=bool)
    inside[top:bottom, left:right] = True
    changed = (result.image != img).any(axis=-1)
    assert not changed[~inside].any()
    assert changed.any()
    # the box is tight: every border row and column of it holds a changed pixel
    rows, cols = np.nonzero(changed)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (top, bottom, left, right)


def test_text_parameters_take_effect() -> None:
    img = np.zeros((128, 128, 3), dtype=np.float32)
    small = P.draw_text(img, "tabby", size=12).box
    large = P.draw_text(img, "tabby", size=36).box
    assert large[2] - large[0] > 2 * (small[2] - small[0])
    corner = P.draw_text(img, "tabby", size=12, position=(2, 2), anchor="lt")
    assert corner.box[0] < 10 and corner.box[1] < 10
    green = P.draw_text(img, "tabby", size=30, color=(0.0, 1.0, 0.0)).image
    assert green[..., 1].max() == pytest.approx(1.0) and green[..., 0].max() == 0
    serif = P.draw_text(img, "tabby", size=30, font="DejaVuSerif.ttf").image
    assert not np.array_equal(serif, P.draw_text(img, "tabby", size=30).image)
    with pytest.raises(ValueError, match="not found"):
        P.draw_text(img, "tabby", font="NoSuchFont.ttf")
    with pytest.raises(ValueError, match="empty"):
        P.draw_text(img, "")


# --------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.25, 0.5, 0.73, 1.0])
def test_top_k_mask_masks_exactly_k_percent(fraction) -> None:
    heat = np.random.default_rng(0).random((50, 40))
    mask = P.top_k_mask(heat, fraction)
    k = int(np.floor(fraction * heat.size + 0.5))
    assert mask.sum() == k
    if 0 < k < heat.size:
        assert heat[mask].min() > heat[~mask].max()


def test_top_k_mask_breaks_ties_in_raster_order() -> None:
    heat = np.zeros((10, 10))
    heat[5:, :] = 1.0  # 50 tied maxima, then 50 tied zeros
    mask = P.top_k_mask(heat, 0.25)
    expected = np.zeros(100, dtype=bool)
    expected[50:75] = True
    np.testing.assert_array_equal(mask.ravel(), expected)
    const = P.top_k_mask(np.ones((4, 5)), 0.3)  # 6 of 20: the first six in raster order
    np.testing.assert_array_equal(np.flatnonzero(const), np.arange(6))
    np.testing.assert_array_equal(P.top_k_mask(heat, 0.25), mask)  # deterministic


def test_top_k_mask_with_valid_region_and_nan() -> None:
    heat = np.arange(100, dtype=float).reshape(10, 10)
    valid = np.zeros((10, 10), dtype=bool)
    valid[:5] = True
    mask = P.top_k_mask(heat, 0.2, valid=valid)
    assert mask.sum() == 10 and not mask[5:].any()
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(40, 50))
    with pytest.raises(ValueError, match="NaN"):
        P.top_k_mask(np.where(valid, heat, np.nan), 0.2)
    with pytest.raises(ValueError, match="fraction"):
        P.top_k_mask(heat, 1.5)


def test_random_mask_exact_count_seeded_and_blocky() -> None:
    a = P.random_mask((64, 48), 0.3, seed=1)
    assert a.sum() == round(0.3 * 64 * 48)
    np.testing.assert_array_equal(a, P.random_mask((64, 48), 0.3, seed=1))
    assert not np.array_equal(a, P.random_mask((64, 48), 0.3, seed=2))
    blocks = P.random_mask((64, 48), 0.25, seed=0, block=16)
    assert blocks.sum() == 768
    # whole 16x16 squares: 768 = 3 blocks exactly
    sums = blocks.reshape(4, 16, 3, 16).sum(axis=(1, 3))
    assert sorted(sums.ravel().tolist())[-3:] == [256, 256, 256] and sums.sum() == 768


def test_box_mask() -> None:
    m = P.box_mask((20, 30), (5, 2, 15, 12))
    assert m.sum() == 100 and m[2, 5] and not m[12, 5] and not m[2, 15]
    assert P.box_mask((20, 30), (-5, -5, 3, 3)).sum() == 9
    with pytest.raises(ValueError, match="empty"):
        P.box_mask((20, 30), (5, 5, 5, 9))


@pytest.mark.parametrize("fill", ["zeros", "mean", "blur", 0.5, (1.0, 0.0, 0.0)])
def test_occlude_changes_only_masked_pixels(fill) -> None:
    img = random_image(40, seed=2)
    mask = P.box_mask((40, 40), (10, 10, 30, 25))
    out = P.occlude(img, mask, fill=fill)
    np.testing.assert_array_equal(out[~mask], img[~mask])
    if fill == "zeros":
        assert (out[mask] == 0).all()
    elif fill == "mean":
        np.testing.assert_allclose(out[mask], np.broadcast_to(img.mean(axis=(0, 1)), (300, 3)))
    elif fill == "blur":
        assert out[mask].std() < 0.5 * img[mask].std()  # detail gone
        assert abs(out[mask].mean() - img.mean()) < 0.05  # colour kept
    else:
        np.testing.assert_allclose(out[mask], np.broadcast_to(fill, (300, 3)))
    with pytest.raises(ValueError, match="unknown fill"):
        P.occlude(img, mask, fill="noise")


class BoxLogit(nn.Module):
    """Logit of class 0 = mean input over a box; other logits 0. Masking the box kills class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 8.0 * x[:, :, 8:24, 8:24].mean(dim=(1, 2, 3))
        return torch.cat([score[:, None], torch.zeros(x.shape[0], 999)], dim=1)


def tiny_loaded() -> LoadedModel:
    return LoadedModel(
        name="box_logit",
        model=BoxLogit().eval(),
        geometry=lambda im: im,
        transform=lambda im: torch.zeros(3, 32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        class_names=imagenet_classes(),
        cam_layer="",
        input_size=32,
        device=torch.device("cpu"),
        pretrained=False,
    )


def test_to_input_normalises_without_resizing() -> None:
    lm = tiny_loaded()
    img = random_image(32)
    x = P.to_input(lm, img)
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x[0], torch.from_numpy((img.transpose(2, 0, 1) - 0.5) / 0.5))
    assert P.to_input(lm, [img, img]).shape == (2, 3, 32, 32)


def test_masking_curve_top_k_beats_random() -> None:
    lm = tiny_loaded()
    img = np.ones((32, 32, 3), dtype=np.float32)
    heat = np.zeros((32, 32))
    heat[8:24, 8:24] = 1.0 + np.linspace(0, 1, 256).reshape(16, 16)
    curve = P.masking_curve(lm, img, heat, target=0, fractions=(0.1, 0.25), fill="zeros")
    assert curve.target == 0 and curve.random.shape == (3, 2)
    # base: logit 8 vs 999 zeros
    assert curve.base == pytest.approx(np.exp(8) / (np.exp(8) + 999), rel=1e-5)
    # 25 % = 256 pixels = the whole box: logit 8 -> -8
    assert curve.top_k[1] == pytest.approx(np.exp(-8) / (np.exp(-8) + 999), rel=1e-4)
    assert (curve.drop_top_k > curve.drop_random).all()


# --------------------------------------------------------------------------------------------
# agreement of maps
# --------------------------------------------------------------------------------------------


def test_rank_correlation_matches_scipy_with_ties_and_nan() -> None:
    rng = np.random.default_rng(4)
    a = rng.integers(0, 5, (20, 20)).astype(float)  # many ties
    b = a + rng.normal(0, 2, (20, 20))
    b[:3] = np.nan
    ok = np.isfinite(b)
    ref = stats.spearmanr(a[ok], b[ok]).statistic
    assert P.rank_correlation(a, b) == pytest.approx(ref, abs=1e-12)
    assert P.rank_correlation(a, 3 * a**3 + 1) == pytest.approx(1.0)
    assert P.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(P.rank_correlation(a, np.ones_like(a)))


def test_top_fraction_iou_and_compare_maps() -> None:
    a = np.arange(100, dtype=float).reshape(10, 10)
    assert P.top_fraction_iou(a, a) == 1.0
    assert P.top_fraction_iou(a, -a) == 0.0
    b = a.copy()
    b[8:] = -1  # a's top 20 % are rows 8-9; b's are rows 6-7
    assert P.top_fraction_iou(a, b) == 0.0
    assert P.top_fraction_iou(a, b, fraction=0.4) == pytest.approx(20 / 60)
    shifted = np.where(np.arange(100).reshape(10, 10) < 50, np.nan, a)
    agreement = P.compare_maps(a, shifted)
    assert agreement.valid_fraction == 0.5
    assert agreement.spearman == pytest.approx(1.0) and agreement.iou == 1.0
