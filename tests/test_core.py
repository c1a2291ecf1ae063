"""The shared core: one normalisation, one upsampling, one pixel ranking, one baseline
vocabulary, one box -> mask, one image -> array, one file of boxes."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xai_helpers import metrics
from xai_helpers import perturb as P
from xai_helpers.baselines import BASELINES, baseline_batch, baseline_picture
from xai_helpers.boxes import (
    BOXES_PATH,
    BoxError,
    box_mask,
    box_to_input_frame,
    boxes_to_mask,
    load_photo_boxes,
    model_geometry,
    sample_boxes,
)
from xai_helpers.images import ImageLoadError, sample_image, to_rgb_array
from xai_helpers.maps import normalize_per_image, rank_pixels, upsample
from xai_helpers.models import load_model
from xai_helpers.viz import draw_boxes, normalize_map

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_lite0():
    return load_model("efficientnet_lite0", device="cpu", weights=None)


# --------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------


def test_normalisation_constant_maps_and_nan() -> None:
    maps = torch.stack([torch.arange(6.0).view(2, 3), torch.full((2, 3), 7.0)])
    out = normalize_per_image(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).view(2, 3) / 5)
    assert (out[1] == 0).all()  # constant: zeros, not NaN
    holes = maps.clone()
    holes[0, 0, 0] = float("nan")
    out = normalize_per_image(holes)
    assert torch.isnan(out[0, 0, 0]) and out[0, 0, 1] == 0 and out[0, 1, 2] == 1
    assert normalize_map(holes[0].numpy())[0, 1] == 0  # the figures use the same function


def test_upsampling_is_bilinear_half_pixel() -> None:
    low = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = upsample(low, (4, 4))
    expected = F.interpolate(low[:, None], size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected[:, 0])
    assert up[0, 0, 0] == 0.0 and up[0, -1, -1] == 3.0  # corners clamp to the corner cells


def test_rank_pixels_tie_rules() -> None:
    flat = torch.zeros(1, 2, 3)
    flat[0, 1, 1] = 5.0
    raster = rank_pixels(flat, "raster")[0]
    assert raster[4] == 0 and raster.tolist() == [1, 2, 3, 4, 0, 5]  # ties in raster order
    gen = torch.Generator().manual_seed(0)
    shuffled = rank_pixels(flat, "random", gen)[0]
    assert shuffled[4] == 0 and sorted(shuffled.tolist()) == list(range(6))
    assert shuffled.tolist() != raster.tolist()  # the ties were shuffled
    valid = torch.tensor([[[True, False, True], [True, True, True]]])
    assert rank_pixels(flat, "raster", valid=valid)[0, 1] == 5  # invalid pixels last
    with pytest.raises(ValueError, match="ties"):
        rank_pixels(flat, "stable")  # type: ignore[arg-type]


def test_top_k_masks_and_deletion_share_the_ranking() -> None:
    heat = np.array([[1.0, 3.0, 3.0], [0.0, 3.0, 2.0]])
    assert P.top_k_mask(heat, 0.5).tolist() == [[False, True, True], [False, True, False]]
    random = P.top_k_mask(heat, 2 / 6, ties="random", seed=1)
    assert random.sum() == 2 and random[heat < 3].sum() == 0


# --------------------------------------------------------------------------------------------
# baselines: one vocabulary, the same colours in both spaces
# --------------------------------------------------------------------------------------------


def test_baseline_names_mean_the_same_in_batches_and_pictures(random_lite0) -> None:
    lm = random_lite0
    picture = lm.view(sample_image("chelsea"))
    x = P.to_input(lm, picture)
    assert set(BASELINES) == {"black", "dataset_mean", "image_mean", "blur"}
    for name in ("black", "dataset_mean", "image_mean"):
        in_batch = baseline_batch(x, name, lm.mean, lm.std)
        in_picture = P.to_input(lm, baseline_picture(picture, name, dataset_mean=lm.mean))
        # image_mean: a float32 mean over 50k pixels, accumulated differently in numpy and torch
        tol = 1e-3 if name == "image_mean" else 1e-5
        torch.testing.assert_close(in_batch, in_picture, rtol=tol, atol=tol, msg=name)
    black = baseline_picture(picture, "black")
    assert (black == 0).all() and (baseline_batch(x, "dataset_mean") == 0).all()


def test_old_baseline_names_warn_and_keep_their_meaning(random_lite0) -> None:
    x = torch.rand(1, 3, 8, 8)
    picture = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="here it means 'dataset_mean'"):
        torch.testing.assert_close(metrics.make_baseline(x, "zeros"), torch.zeros_like(x))
    with pytest.warns(DeprecationWarning, match="here it means 'black'"):
        assert (P.occlude(picture, np.ones((8, 8), bool), fill="zeros") == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.make_baseline(x, "image_mean")  # the new names do not warn
    with pytest.raises(metrics.MetricError, match="mean=loaded.mean"):
        metrics.make_baseline(x, "black")
    with pytest.raises(P.PerturbationError, match="dataset_mean=loaded.mean"):
        P.occlude(picture, np.ones((8, 8), bool), fill="dataset_mean")


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def test_one_box_definition_pixel_centres() -> None:
    box = (10.5, 2.4, 20.5, 8.6)  # a pixel is inside when more than half of it is
    mask = box_mask((12, 24), box)
    assert mask.sum(1)[3] == 10 and mask[:, 10].any() and not mask[:, 20].any()
    assert mask[2:9].any(1).all() and not mask[9].any() and not mask[1].any()
    np.testing.assert_array_equal(mask, boxes_to_mask([box], (12, 24))[0].numpy())
    # integer boxes: exactly the slice [top:bottom, left:right]
    expected = np.zeros((12, 24), bool)
    expected[2:9, 10:20] = True
    np.testing.assert_array_equal(box_mask((12, 24), (10, 2, 20, 9)), expected)
    with pytest.raises(BoxError, match="empty"):
        box_mask((12, 24), (5, 5, 5, 9))
    assert issubclass(BoxError, metrics.MetricError) and issubclass(BoxError, P.PerturbationError)


def test_boxes_live_in_one_file(random_lite0) -> None:
    raw = json.loads(BOXES_PATH.read_text())
    assert not (REPO / "data" / "cat_and_coffee_boxes.json").exists()
    assert sample_boxes("cat_and_coffee") == {
        label: tuple(entry["box"]) for label, entry in raw["cat_and_coffee"].items()
    }
    assert {o.image for o in load_photo_boxes()} == {
        "chelsea",
        "coffee",
        "rocket",
        "cat_and_coffee",
    }
    with pytest.raises(ImageLoadError, match="no boxes for sample 'astronaut'"):
        sample_boxes("astronaut")
    # in the model's input: the resize and crop the LoadedModel keeps
    assert model_geometry(random_lite0) == (random_lite0.resize, 224) == (256, 224)
    inside = sample_boxes("cat_and_coffee", random_lite0)
    assert inside["cat"] == box_to_input_frame(
        raw["cat_and_coffee"]["cat"]["box"], (512, 512), 256, 224
    )
    assert inside["espresso"] == (112.0, 52.5, 224.0, 171.5)


def test_make_sample_data_writes_the_boxes_into_boxes_json(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_sample_data", REPO / "scripts/make_sample_data.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    target = tmp_path / "boxes.json"
    target.write_text(BOXES_PATH.read_text())
    _, boxes = script.make_two_objects()
    script.write_boxes(boxes, target)
    assert target.read_text() == BOXES_PATH.read_text()  # byte for byte: the boxes are exact
    script.write_boxes({"cat": [1, 2, 3, 4], "espresso": boxes["espresso"]}, target)
    written = json.loads(target.read_text())
    assert written["cat_and_coffee"]["cat"] == {
        "box": [1, 2, 3, 4],
        "classes": [281, 282, 283, 284, 285],
    }
    assert written["rocket"] == json.loads(BOXES_PATH.read_text())["rocket"]  # the rest kept


def test_box_share_and_draw_boxes() -> None:
    heat = torch.zeros(10, 10)
    heat[2:4, 2:4] = 1.0
    heat[8, 8] = 2.0
    assert metrics.box_share(heat, (2, 2, 4, 4)) == pytest.approx(4 / 6)
    both = metrics.box_share(torch.stack([heat, 2 * heat]), (0, 0, 5, 5))
    torch.testing.assert_close(both, torch.tensor([4 / 6, 4 / 6], dtype=torch.float64))
    assert np.isnan(metrics.box_share(torch.zeros(4, 4), (0, 0, 2, 2)))
    unit = metrics.energy_pointing_game(heat[None], boxes_to_mask([(2, 2, 4, 4)], (10, 10)))
    assert metrics.box_share(heat / 2, (2, 2, 4, 4)) == pytest.approx(float(unit[0]))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    draw_boxes(ax, {"cat": (1.5, 2.0, 4.0, 6.5), "cup": (5, 5, 9, 9)})
    assert [p.get_xy() for p in ax.patches] == [(1.0, 1.5), (4.5, 4.5)]  # pixel edges
    assert [t.get_text() for t in ax.texts] == ["cat", "cup"]
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# image -> array
# --------------------------------------------------------------------------------------------


def test_one_image_to_array_conversion() -> None:
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 0))
    assert (to_rgb_array(rgba) == 1.0).all()  # transparent composited on white, as load_image
    chw = torch.rand(3, 5, 6)
    assert to_rgb_array(chw).shape == (5, 6, 3)  # torch's channels-first layout
    with pytest.raises(ImageLoadError, match="channels-first"):
        to_rgb_array(np.zeros((3, 5, 6), np.float32))  # numpy's is channels-last
    with pytest.raises(ImageLoadError, match=r"\[0, 1\].*unnormalize"):
        to_rgb_array(np.full((4, 4, 3), 1.5))  # not clipped: an error
    with pytest.raises(ImageLoadError, match="dtype uint16"):
        to_rgb_array(np.zeros((4, 4, 3), np.uint16))
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    np.testing.assert_array_equal(to_rgb_array(pixels), pixels.astype(np.float32) / 255)
