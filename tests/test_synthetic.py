"""The synthetic localisation set: reproducible from its seed, boxes exact to the pixel."""

from __future__ import annotations

import numpy as np
import pytest

from xai_helpers.synthetic import OBJECTS, SyntheticSetError, make_localization_set


@pytest.fixture(scope="module")
def small_set():
    return make_localization_set(n=12, seed=0)


def test_same_seed_same_images_other_seed_other_images(small_set) -> None:
    again = make_localization_set(n=12, seed=0)
    assert np.array_equal(again.images, small_set.images)
    assert np.array_equal(again.boxes, small_set.boxes)
    assert again.labels == small_set.labels and again.textures == small_set.textures
    other = make_localization_set(n=12, seed=1)
    assert not np.array_equal(other.boxes, small_set.boxes)
    # images are drawn one after the other, so the first ones do not depend on n
    assert np.array_equal(make_localization_set(n=4, seed=0).images, small_set.images[:4])


def test_boxes_are_exact(small_set) -> None:
    # The textures are grey (R = G = B) and the objects are colour photos, so the tight box of
    # the non-grey pixels must be the stored box, to the pixel.
    for image, box in zip(small_set.images, small_set.boxes, strict=True):
        colour = (image[..., 0] != image[..., 1]) | (image[..., 1] != image[..., 2])
        rows, cols = np.nonzero(colour)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == tuple(box)


def test_layout_labels_and_margins(small_set) -> None:
    assert len(small_set) == 12 and small_set.images.shape == (12, 256, 256, 3)
    assert small_set.images.dtype == np.uint8
    assert small_set.labels == ["cat", "espresso"] * 6
    assert [int(c) for c in small_set.classes] == [285, 967] * 6
    assert small_set.accepted(0) == OBJECTS["cat"].accepted
    left, top, right, bottom = small_set.boxes.T
    assert (
        (left >= 16).all() and (top >= 16).all() and (right <= 240).all() and (bottom <= 240).all()
    )
    longer = np.maximum(right - left, bottom - top)
    assert (longer >= np.floor(0.55 * 224)).all() and (longer <= np.ceil(0.8 * 224)).all()
    sub = small_set.subset(slice(2, 5))
    assert len(sub) == 3 and np.array_equal(sub.images, small_set.images[2:5])


def test_bad_parameters() -> None:
    with pytest.raises(SyntheticSetError, match="at least 1"):
        make_localization_set(n=0)
    with pytest.raises(SyntheticSetError, match="unknown objects"):
        make_localization_set(n=2, objects=("dog",))
    with pytest.raises(SyntheticSetError, match="no room"):
        make_localization_set(n=2, size=40, margin=16)
