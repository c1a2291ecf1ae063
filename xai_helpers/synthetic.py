"""A synthetic localisation set with exact ground truth, generated in memory from a seed.

Photos with hand-drawn boxes are few and their boxes are approximate. Here each image is an object
crop from scikit-image's sample photos -- Chelsea's face (an ImageNet "Egyptian cat", class 285)
or the cup of espresso (class 967) -- pasted at a random size and position onto a random patch of
a grey-scale texture that ships with scikit-image (``brick``, ``grass``, ``gravel``, made RGB). The
pasted rectangle *is* the bounding box, to the pixel.

The canvas is ``size`` x ``size`` (default 256) and the object lies at least ``margin`` pixels from
every edge (default 16), so after the models' resize-256 / centre-crop-224 preprocessing the object
is never cut: map the boxes with :func:`xai_helpers.metrics.box_to_input_frame`.

The rocket photo is left out on purpose: pasted at these sizes EfficientNet-Lite0 never calls it a
missile, projectile or space shuttle, and explanations of a wrong prediction say nothing about
localisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import skimage.data
from PIL import Image

__all__ = [
    "OBJECTS",
    "TEXTURES",
    "LocalizationSet",
    "SyntheticObject",
    "SyntheticSetError",
    "make_localization_set",
]


class SyntheticSetError(ValueError):
    """Parameters of the synthetic set cannot produce the images asked for."""


@dataclass(frozen=True)
class SyntheticObject:
    """An object to paste: where it comes from, its ImageNet class and the classes that count."""

    loader: Callable[[], np.ndarray]
    crop: tuple[int, int, int, int]
    imagenet_class: int
    accepted: tuple[int, ...]


#: Object name -> source photo, crop box (left, top, right, bottom), explained ImageNet class and
#: the classes that count as a correct prediction (any domestic cat class for the cat).
OBJECTS: dict[str, SyntheticObject] = {
    "cat": SyntheticObject(skimage.data.chelsea, (40, 0, 340, 300), 285, (281, 282, 283, 284, 285)),
    "espresso": SyntheticObject(skimage.data.coffee, (70, 10, 490, 400), 967, (967,)),
}

#: Grey-scale 512 x 512 textures shipped inside scikit-image's wheel (no download).
TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skimage.data.brick,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
}


@dataclass(frozen=True)
class LocalizationSet:
    """Images, exact boxes and labels of the synthetic set.

    Attributes
    ----------
    images:
        ``(N, size, size, 3)`` uint8 RGB images.
    boxes:
        ``(N, 4)`` int boxes ``(left, top, right, bottom)`` of the pasted object, right and bottom
        exclusive, in the image's pixels.
    labels:
        Object name of each image (a key of :data:`OBJECTS`).
    classes:
        ``(N,)`` ImageNet class of each object (the class to explain).
    textures:
        Texture name of each image's background.
    seed:
        The seed that generated the set.
    """

    images: np.ndarray
    boxes: np.ndarray
    labels: list[str]
    classes: np.ndarray
    textures: list[str]
    seed: int

    def __len__(self) -> int:
        return len(self.labels)

    def accepted(self, i: int) -> tuple[int, ...]:
        """ImageNet classes counted as a correct prediction for image ``i``."""
        return OBJECTS[self.labels[i]].accepted

    def subset(self, indices: slice | list[int] | np.ndarray) -> LocalizationSet:
        """The images at ``indices`` (e.g. ``slice(0, 20)``), as a new set."""
        idx = np.arange(len(self))[indices]
        return LocalizationSet(
            images=self.images[idx],
            boxes=self.boxes[idx],
            labels=[self.labels[i] for i in idx],
            classes=self.classes[idx],
            textures=[self.textures[i] for i in idx],
            seed=self.seed,
        )


def make_localization_set(
    n: int = 100,
    seed: int = 0,
    size: int = 256,
    margin: int = 16,
    scale: tuple[float, float] = (0.55, 0.8),
    objects: tuple[str, ...] = ("cat", "espresso"),
) -> LocalizationSet:
    r"""Generate ``n`` images, each one object on a texture, reproducibly from ``seed``.

    For each image, with ``rng = numpy.random.default_rng(seed)``: the object alternates through
    ``objects`` (balanced classes); the texture, a random ``size`` x ``size`` patch of it and a
    random horizontal flip of the patch are drawn; the object crop is resized (bicubic) so its
    longer side is a uniform fraction in ``scale`` of the usable width ``size - 2 margin``,
    randomly mirrored, and pasted at a uniform position inside the margins.

    Parameters
    ----------
    n:
        Number of images (the course uses at least 100).
    seed:
        Same seed, same images, byte for byte.
    size, margin:
        Canvas side and the object-free border, in pixels.
    scale:
        Range of the object's longer side as a fraction of ``size - 2 * margin``. Below about
        0.5 EfficientNet-Lite0 often misses the espresso.
    objects:
        Names from :data:`OBJECTS`.
    """
    if n < 1:
        raise SyntheticSetError(f"n must be at least 1, got {n}")
    unknown = [o for o in objects if o not in OBJECTS]
    if unknown or not objects:
        raise SyntheticSetError(f"unknown objects {unknown}; choose from {', '.join(OBJECTS)}")
    usable = size - 2 * margin
    if usable < 32 or not 0 < scale[0] <= scale[1] <= 1:
        raise SyntheticSetError(
            f"size {size} with margin {margin} and scale {scale} leave no room; "
            "use size - 2 * margin >= 32 and 0 < scale[0] <= scale[1] <= 1"
        )
    rng = np.random.default_rng(seed)
    crops = {
        name: Image.fromarray(OBJECTS[name].loader()).crop(OBJECTS[name].crop) for name in objects
    }
    textures = {name: load() for name, load in TEXTURES.items()}
    texture_names = list(TEXTURES)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    labels, classes, used = [], np.empty(n, dtype=np.int64), []
    for i in range(n):
        label = objects[i % len(objects)]
        texture = texture_names[int(rng.integers(len(texture_names)))]
        grey = textures[texture]
        top = int(rng.integers(grey.shape[0] - size + 1))
        left = int(rng.integers(grey.shape[1] - size + 1))
        patch = grey[top : top + size, left : left + size]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        canvas = np.repeat(patch[..., None], 3, axis=2)

        crop = crops[label]
        longer = rng.uniform(*scale) * usable
        factor = longer / max(crop.size)
        w, h = max(1, round(crop.width * factor)), max(1, round(crop.height * factor))
        obj = crop.resize((w, h), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x0 = margin + int(rng.integers(usable - w + 1))
        y0 = margin + int(rng.integers(usable - h + 1))
        canvas[y0 : y0 + h, x0 : x0 + w] = np.asarray(obj)

        images[i] = canvas
        boxes[i] = (x0, y0, x0 + w, y0 + h)
        labels.append(label)
        classes[i] = OBJECTS[label].imagenet_class
        used.append(texture)
    return LocalizationSet(images, boxes, labels, classes, used, seed)
