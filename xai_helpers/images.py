"""Loading images the way a classifier needs them: RGB, 8 bit, upright, large enough.

Every loader in the course goes through :func:`load_image`, so the classic traps are handled once:

* EXIF orientation is applied (a phone photo that *looks* upright in a viewer is often stored
  sideways, and the network would see it sideways);
* every Pillow mode (``L``, ``LA``, ``P``, ``RGBA``, ``CMYK``, ``I;16``, ``I``, ``F`` ...) becomes
  ``RGB``; transparent pixels are composited on white, 16-bit and 32-bit images are rescaled to
  8 bit instead of being clipped;
* numpy arrays are read as height x width (x channels), ``uint8``/``uint16``/float in [0, 1]; a
  channels-first array gets an error that says so instead of a nonsense picture.

:func:`to_rgb_array` is the one conversion of a picture that is already RGB (a PIL image, an
array, a tensor) into the float (H, W, 3) array in [0, 1] that the figures and the
perturbations work on; it raises on anything else instead of clipping it.

The photos in ``data/`` come from scikit-image's wheel (see ``data/README.md``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .boxes import sample_boxes

__all__ = [
    "DATA_DIR",
    "SAMPLE_NAMES",
    "ImageInput",
    "ImageLoadError",
    "decode_image",
    "load_image",
    "sample_boxes",
    "sample_image",
    "sample_path",
    "to_rgb_array",
]

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

#: Named sample images shipped in ``data/`` (file stem -> what it shows).
SAMPLE_NAMES: dict[str, str] = {
    "chelsea": "Chelsea the cat (tabby / Egyptian cat)",
    "coffee": "a cup of espresso on a saucer",
    "rocket": "a rocket on its launch pad (space shuttle / missile)",
    "astronaut": "astronaut Eileen Collins in front of the US flag",
    "cat_and_coffee": "two objects: the cat (left) beside the espresso (right)",
}

#: Smallest side, in pixels, that we accept; the networks downsample by 32.
MIN_SIZE = 32

#: Largest upload :func:`decode_image` accepts by default: bytes and pixels (a 48-megapixel
#: phone photo fits; a decompression bomb does not).
MAX_BYTES = 25 * 2**20
MAX_PIXELS = 50_000_000

ImageInput = str | Path | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An image could not be turned into an RGB picture; the message says why and what to do."""


def sample_path(name: str) -> Path:
    """Path of a named sample image in ``data/`` (see :data:`SAMPLE_NAMES`)."""
    if name not in SAMPLE_NAMES:
        raise ImageLoadError(
            f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_NAMES)}"
        )
    path = DATA_DIR / f"{name}.png"
    if not path.is_file():
        raise ImageLoadError(
            f"sample image {path} is missing; run `python scripts/make_sample_data.py` "
            "from the repository root to recreate data/"
        )
    return path


def sample_image(name: str) -> Image.Image:
    """Load a named sample image as an RGB PIL image."""
    return load_image(sample_path(name))


def load_image(source: ImageInput, min_size: int = MIN_SIZE) -> Image.Image:
    """Return ``source`` as an upright 8-bit RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    source:
        A file path, a PIL image, or a numpy array of shape (H, W), (H, W, 1), (H, W, 3) or
        (H, W, 4) with dtype uint8, uint16, bool or float (values in [0, 1]).
    min_size:
        Smallest accepted side in pixels.

    Raises
    ------
    ImageLoadError
        For a missing file, a file that is not an image, an unsupported array, or an image
        smaller than ``min_size`` -- always with a one-line message that names the fix.
    """
    if isinstance(source, (str, Path)):
        image = _open_file(Path(source))
    elif isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    else:
        raise ImageLoadError(
            f"cannot load an image from {type(source).__name__}; "
            "pass a file path, a PIL.Image or a numpy array (H, W, 3)"
        )
    rgb = _to_rgb(image)
    if min(rgb.size) < min_size:
        raise ImageLoadError(
            f"image is {rgb.width}x{rgb.height} pixels, too small to classify; "
            f"use an image at least {min_size}x{min_size} (ideally 224x224 or larger)"
        )
    return rgb


def decode_image(
    data: bytes,
    name: str = "upload",
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    min_size: int = MIN_SIZE,
) -> Image.Image:
    """Decode the bytes of an image file (an upload) into an upright 8-bit RGB PIL image.

    The size is checked *before* the pixels are decoded, so a huge or malicious file costs
    nothing. Raises :class:`ImageLoadError` with a one-line message for an empty file, a file
    over ``max_bytes``, an image over ``max_pixels``, or bytes that are not an image; then
    :func:`load_image`'s conversions (EXIF orientation, any mode to RGB) apply.
    """
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes); upload the image file itself")
    if len(data) > max_bytes:
        raise ImageLoadError(
            f"{name} is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit; "
            "downscale or recompress it first"
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), "
                    f"over the {max_pixels / 1e6:.0f}-megapixel limit; downscale it first"
                )
            opened.load()
            image = opened.copy()
            image.info.update(opened.info)
            exif = opened.getexif()
    except ImageLoadError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:
        raise ImageLoadError(
            f"{name} is not a readable image ({err.__class__.__name__}); "
            "upload a PNG, JPEG, TIFF or another format Pillow can open"
        ) from err
    if exif:
        image.getexif().update(exif)
    return load_image(image, min_size=min_size)


def _open_file(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageLoadError(f"image file not found: {path}; check the path (cwd is {Path.cwd()})")
    if path.is_dir():
        raise ImageLoadError(f"{path} is a directory; pass the path of one image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
            image.info.update(opened.info)
            exif = opened.getexif()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageLoadError(
            f"{path} is not a readable image ({err.__class__.__name__}); "
            "use a PNG, JPEG, TIFF or another format Pillow can open"
        ) from err
    if exif:
        image.getexif().update(exif)
    return ImageOps.exif_transpose(image)


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        raise ImageLoadError(
            f"array of shape {a.shape} looks channels-first; pass it as (H, W, C), "
            "e.g. array.transpose(1, 2, 0)"
        )
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"array of shape {a.shape} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)"
        )
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _rescale_to_uint8(a.astype(np.float64), 65535.0)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageLoadError("float image contains NaN or inf; clean it before loading")
        if a.min() < 0 or a.max() > 1:
            raise ImageLoadError(
                f"float image has values in [{a.min():.3g}, {a.max():.3g}]; "
                "floats must lie in [0, 1] (divide uint8 data by 255)"
            )
        a = _rescale_to_uint8(a, 1.0)
    elif a.dtype != np.uint8:
        raise ImageLoadError(
            f"array dtype {a.dtype} is not supported; use uint8, uint16, bool or float in [0, 1]"
        )
    # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return Image.fromarray(np.ascontiguousarray(a))


def _rescale_to_uint8(a: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.round(a * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without clipping or dropping information silently."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey: scale 0..65535 to 0..255 (a plain convert("L") clips at 255)
        a = np.asarray(image, dtype=np.float64)
        return Image.fromarray(_rescale_to_uint8(a, 65535.0)).convert("RGB")
    if mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray(_rescale_to_uint8(np.clip(a, 0, None), top)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def to_rgb_array(image: Any, error: type[Exception] = ImageLoadError) -> np.ndarray:
    """An RGB picture as an (H, W, 3) float array in [0, 1]: the one image -> array conversion.

    Accepts a PIL image (any mode, converted as :func:`load_image` converts it), a numpy array
    (H, W, 3), or a torch tensor (H, W, 3) or (3, H, W) (torch's channels-first layout).
    ``uint8`` is divided by 255 (float32); a float array keeps its dtype and must be finite
    and within [0, 1]. Anything else raises ``error`` with the fix: a channels-first numpy
    array, another shape, another dtype, values outside [0, 1] (they are not clipped: a
    picture outside [0, 1] is a bug upstream, e.g. a normalised tensor passed as a picture).
    """
    if isinstance(image, Image.Image):
        return np.asarray(_to_rgb(image), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        a = image.detach().cpu().numpy()
        if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
            a = a.transpose(1, 2, 0)
    else:
        a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        hint = (
            " (channels-first? use .transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] == 3 else ""
        )
        raise error(f"expected an RGB image (H, W, 3), got shape {a.shape}{hint}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise error(f"image dtype {a.dtype} is not supported; use uint8 or float in [0, 1]")
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise error(
            "float image must be finite and in [0, 1]; use LoadedModel.view(image) for the "
            "picture the network sees, or LoadedModel.unnormalize(x) for a normalised tensor"
        )
    return a

