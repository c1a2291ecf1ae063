"""Image loading: every Pillow mode becomes RGB, EXIF orientation, clear errors for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xai_helpers.images import (
    SAMPLE_NAMES,
    ImageLoadError,
    decode_image,
    load_image,
    sample_boxes,
    sample_image,
    sample_path,
)


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    """An RGB test card whose pixels are all different, so any channel mix-up shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


def _save(image: Image.Image, tmp_path, name: str) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


@pytest.mark.parametrize("name", list(SAMPLE_NAMES))
def test_samples_are_rgb(name):
    image = sample_image(name)
    assert image.mode == "RGB"
    assert min(image.size) >= 224


def test_sample_boxes_are_inside_the_image():
    w, h = sample_image("cat_and_coffee").size
    boxes = sample_boxes("cat_and_coffee")
    assert set(boxes) == {"cat", "espresso"}
    for left, top, right, bottom in boxes.values():
        assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_rgb_round_trip_from_file_pil_and_array(tmp_path):
    card = _gradient()
    from_array = load_image(card)
    from_pil = load_image(Image.fromarray(card))
    from_file = load_image(_save(Image.fromarray(card), tmp_path, "card.png"))
    for image in (from_array, from_pil, from_file):
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), card)


def test_grey_modes(tmp_path):
    grey = _gradient()[..., 0]
    for image in (Image.fromarray(grey), Image.fromarray(grey).convert("LA")):
        rgb = np.asarray(load_image(_save(image, tmp_path, f"{image.mode}.png")))
        assert rgb.shape == (*grey.shape, 3)
        for c in range(3):
            np.testing.assert_array_equal(rgb[..., c], grey)


def test_palette_image(tmp_path):
    card = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgb = load_image(_save(card, tmp_path, "palette.png"))
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb), np.asarray(card.convert("RGB")))


def test_rgba_is_composited_on_white(tmp_path):
    card = _gradient()
    alpha = np.zeros(card.shape[:2], np.uint8)
    alpha[:, : card.shape[1] // 2] = 255  # left half opaque, right half transparent
    rgba = Image.fromarray(np.dstack([card, alpha]))
    rgb = np.asarray(load_image(_save(rgba, tmp_path, "rgba.png")))
    half = card.shape[1] // 2
    np.testing.assert_array_equal(rgb[:, :half], card[:, :half])
    assert (rgb[:, half:] == 255).all()


def test_cmyk(tmp_path):
    cmyk = Image.fromarray(_gradient()).convert("CMYK")
    rgb = load_image(_save(cmyk, tmp_path, "cmyk.jpg"))
    assert rgb.mode == "RGB" and rgb.size == cmyk.size


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    image = Image.fromarray(values)  # mode I;16
    rgb = np.asarray(load_image(_save(image, tmp_path, "deep.png")))
    expected = np.round(values / 257.0).astype(np.uint8)
    # PNG reloads as mode I or I;16 depending on Pillow; either way full range must survive
    assert rgb[..., 0].max() == 255 and rgb[..., 0].min() == 0
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    from_array = np.asarray(load_image(values))
    assert np.abs(from_array[..., 0].astype(int) - expected).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    card = Image.fromarray(_gradient(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    card.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.size == (40, 60)  # width and height swapped


def test_float_and_bool_arrays():
    f = _gradient().astype(np.float32) / 255.0
    np.testing.assert_array_equal(np.asarray(load_image(f)), _gradient())
    mask = np.zeros((40, 60), bool)
    mask[10:20] = True
    assert np.asarray(load_image(mask))[15, 0, 0] == 255


@pytest.mark.parametrize(
    "source,message",
    [
        ("no/such/file.png", "not found"),
        (np.zeros((3, 40, 60), np.uint8), "channels-first"),
        (np.zeros((40, 60, 5), np.uint8), "not an image"),
        (np.full((40, 60, 3), 2.0), r"floats must lie in \[0, 1\]"),
        (np.zeros((40, 60, 3), np.int64), "dtype int64 is not supported"),
        (np.zeros((8, 8, 3), np.uint8), "too small to classify"),
        (42, "cannot load an image from int"),
    ],
)
def test_bad_input_gives_one_line_errors(source, message):
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(source)
    assert "\n" not in str(info.value)


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a PNG")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_unknown_sample():
    with pytest.raises(ImageLoadError, match="unknown sample image 'dog'"):
        sample_path("dog")


def _encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_decode_image_matches_load_image(tmp_path):
    rgba = Image.fromarray(np.dstack([_gradient(), np.full((40, 60), 100, np.uint8)]), "RGBA")
    from_bytes = decode_image(_encoded(rgba), "card.png")
    from_file = load_image(_save(rgba, tmp_path, "card.png"))
    assert from_bytes.mode == "RGB" and np.array_equal(
        np.asarray(from_bytes), np.asarray(from_file)
    )


def test_decode_image_applies_exif_orientation():
    image = Image.fromarray(_gradient())
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright = decode_image(_encoded(image, "JPEG", exif=exif, quality=95))
    assert upright.size == (40, 60)


def test_decode_image_checks_size_before_decoding():
    # 8000 x 8000 black pixels compress to a few kB: the pixel count must be read from the header
    bomb = _encoded(Image.new("L", (8000, 8000)))
    assert len(bomb) < 200_000
    with pytest.raises(ImageLoadError, match="8000x8000 pixels .64 megapixels., over the 50-"):
        decode_image(bomb, "bomb.png")
    with pytest.raises(ImageLoadError, match=r"big.png is 0.2 MB, over the 0 MB limit"):
        decode_image(b"x" * 200_000, "big.png", max_bytes=100_000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "upload is empty"),
        (b"hello", "upload is not a readable image"),
        (_encoded(Image.new("RGB", (64, 64)))[:50], "upload is not a readable image"),
        (_encoded(Image.new("RGB", (8, 8))), "too small to classify"),
    ],
)
def test_decode_image_one_line_errors(data, message):
    with pytest.raises(ImageLoadError, match=message) as info:
        decode_image(data)
    assert "\n" not in str(info.value)
