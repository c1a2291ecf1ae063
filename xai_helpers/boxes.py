r"""Object boxes: the data file, the mapping into the network's input, and the pixels inside.

One definition each, used by the metrics, the perturbations, the figures and the notebooks:

* **the data**: ``data/boxes.json``, one file for every sample photo's objects, each with its
  box ``[left, top, right, bottom]`` in the photo's own pixels and the ImageNet classes that
  count as it (:func:`load_photo_boxes`, :func:`sample_boxes`; how they were drawn:
  ``data/BOXES.md``);
* **into the input**: :func:`box_to_input_frame` maps a photo's box through the model's resize
  and centre crop (``LoadedModel.resize``, ``LoadedModel.input_size``), which is where
  explanations live; ``sample_boxes(name, loaded)`` does it for a sample photo;
* **box → pixels**: a pixel is inside a box when its *centre* :math:`(i + \tfrac12,
  j + \tfrac12)` lies in :math:`[\text{left}, \text{right}) \times [\text{top},
  \text{bottom})` (:func:`boxes_to_mask`, :func:`box_mask`). For integer boxes these are
  exactly the pixels ``[top:bottom, left:right]``; a box mapped into the input has fractional
  edges, and the centre rule takes a pixel when more than half of it lies inside.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BoxError

__all__ = [
    "BOXES_PATH",
    "Box",
    "BoxError",
    "PhotoObject",
    "box_mask",
    "box_to_input_frame",
    "boxes_to_mask",
    "load_photo_boxes",
    "model_geometry",
    "sample_boxes",
]

BOXES_PATH = Path(__file__).resolve().parents[1] / "data" / "boxes.json"

#: ``(left, top, right, bottom)`` in pixels; right and bottom exclusive.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PhotoObject:
    """An annotated object of a sample photo: its box in the photo's pixels and its classes."""

    image: str
    label: str
    box: tuple[int, int, int, int]
    classes: tuple[int, ...]


def _read(path: str | Path = BOXES_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_photo_boxes(path: str | Path = BOXES_PATH) -> list[PhotoObject]:
    """Every annotated object of the sample photos (``data/boxes.json``; see ``data/BOXES.md``
    for how they were drawn). ``classes`` are the ImageNet classes that count as this object
    (e.g. the five domestic cat classes)."""
    out = []
    for image, objects in _read(path).items():
        if image.startswith("_"):
            continue
        for label, entry in objects.items():
            out.append(PhotoObject(image, label, tuple(entry["box"]), tuple(entry["classes"])))
    return out


def sample_boxes(name: str, loaded: Any = None) -> dict[str, tuple[float, ...]]:
    """The object boxes ``{label: (left, top, right, bottom)}`` of a sample photo.

    Without ``loaded``: in the photo's own pixels (ints). With a
    :class:`~xai_helpers.models.LoadedModel`: in the pixels of the picture that model sees
    (after its resize and centre crop, :func:`box_to_input_frame`; fractional edges).
    """
    from .images import ImageLoadError, sample_path

    raw = _read()
    if name not in raw or name.startswith("_"):
        boxed = ", ".join(k for k in raw if not k.startswith("_"))
        raise ImageLoadError(
            f"no boxes for sample {name!r} in {BOXES_PATH.name}; annotated samples: {boxed}"
        )
    boxes = {label: tuple(entry["box"]) for label, entry in raw[name].items()}
    if loaded is None:
        return boxes
    from PIL import Image

    with Image.open(sample_path(name)) as image:  # the size is in the header: nothing decoded
        size = image.size
    resize, crop = model_geometry(loaded)
    return {label: box_to_input_frame(box, size, resize, crop) for label, box in boxes.items()}


def model_geometry(loaded: Any) -> tuple[int, int]:
    """``(resize, crop)`` of a :class:`~xai_helpers.models.LoadedModel`'s preprocessing: the
    short side is resized to ``resize``, then the centre ``crop`` x ``crop`` square is kept."""
    resize = getattr(loaded, "resize", None)
    crop = getattr(loaded, "input_size", None)
    if resize is None or crop is None:
        raise BoxError(
            "this model does not record its resize and crop; build it with load_model(), or "
            "pass resize and crop to box_to_input_frame yourself"
        )
    return int(resize), int(crop)


def _as_box(box: Sequence[float]) -> Box:
    if len(box) != 4:
        raise BoxError(f"box {tuple(box)!r} must be (left, top, right, bottom)")
    left, top, right, bottom = (float(v) for v in box)
    return left, top, right, bottom


def _check_not_empty(box: Box, given: Sequence[float]) -> None:
    left, top, right, bottom = box
    if not (right > left and bottom > top):
        raise BoxError(
            f"box {tuple(given)} is empty; boxes are (left, top, right, bottom) with "
            "left < right and top < bottom"
        )


def box_to_input_frame(
    box: Sequence[float], image_size: tuple[int, int], resize: int, crop: int
) -> Box:
    r"""Map a box from the original photo's pixels to the model input's pixels.

    The preprocessing resizes the short side to ``resize`` (the long side to
    :math:`\lfloor \text{resize} \cdot \text{long}/\text{short} \rfloor`, as torchvision does),
    then takes the centre ``crop`` x ``crop`` square whose corner is
    :math:`\mathrm{round}((W' - \text{crop})/2)`. A box
    :math:`(l, t, r, b)` (pixel edges; right and bottom exclusive) becomes
    :math:`(l s_x - o_x, t s_y - o_y, r s_x - o_x, b s_y - o_y)`, clipped to the crop.

    Parameters
    ----------
    box:
        ``(left, top, right, bottom)`` in the original image.
    image_size:
        ``(width, height)`` of the original image (PIL's ``.size``).
    """
    w, h = image_size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    off_x, off_y = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
    sx, sy = new_w / w, new_h / h
    left, top, right, bottom = _as_box(box)
    _check_not_empty((left, top, right, bottom), box)
    mapped = (left * sx - off_x, top * sy - off_y, right * sx - off_x, bottom * sy - off_y)
    return tuple(float(min(max(v, 0.0), crop)) for v in mapped)  # type: ignore[return-value]


def boxes_to_mask(
    boxes: Sequence[Sequence[float] | Sequence[Sequence[float]]], size: tuple[int, int]
) -> torch.Tensor:
    """Boolean masks ``(N, H, W)``: a pixel is inside when its centre lies in one of the boxes.

    ``boxes[i]`` is one box ``(left, top, right, bottom)`` or a list of boxes (their union), in
    the map's pixels (see :func:`box_to_input_frame`). An empty box (e.g. an object the crop
    cut away) selects no pixel.
    """
    h, w = size
    cy = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    cx = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, item in enumerate(boxes):
        group = [item] if len(item) == 4 and not isinstance(item[0], Sequence) else item
        for box in group:
            left, top, right, bottom = _as_box(box)
            masks[i] |= (cx >= left) & (cx < right) & (cy >= top) & (cy < bottom)
    return masks


def box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """An (H, W) bool mask of one box ``(left, top, right, bottom)`` in pixels: the pixels whose
    centre lies inside (see the module docstring); the box may reach beyond the image."""
    checked = _as_box(box)
    _check_not_empty(checked, box)
    return boxes_to_mask([checked], shape)[0].numpy()
