r"""What a removed pixel becomes: one vocabulary of baselines for every perturbation.

Deletion and insertion curves, Average Drop, occlusion, masking curves and Score-CAM's baseline
all replace pixels by "nothing". Which nothing is a choice that changes the numbers, so it is
always named, with these names, everywhere:

``"black"``
    RGB (0, 0, 0). In a normalised batch that is :math:`-\mu/\sigma` per channel, so it
    needs the model's normalisation (``mean``, ``std``).
``"dataset_mean"``
    The training set's mean colour, the normalisation's :math:`\mu`: the all-zero
    *normalised* tensor (mid-grey for EfficientNet-Lite, whose :math:`\mu = \sigma = 0.5`);
    what masking a normalised tensor, ``x * mask``, does.
``"image_mean"``
    Each image's own mean colour, per channel.
``"blur"``
    A Gaussian blur of the image (detail removed, colours and low frequencies kept; Petsiuk et
    al.'s insertion baseline).

Two spaces, one vocabulary: :func:`baseline_batch` works on normalised network batches
``(N, 3, H, W)`` (the metrics, Score-CAM), :func:`baseline_picture` on the pictures the network
sees, ``(H, W, 3)`` in [0, 1] (the perturbations). Their blurs are the ones each space has
always used (kept so that no number changes): in a batch torchvision's ``gaussian_blur`` with a
kernel of :math:`2\lceil 2\sigma\rceil + 1` pixels, reflect padding, default
:math:`\sigma = 5` (RISE's); on a picture scipy's ``gaussian_filter`` (truncated at
:math:`4\sigma`, reflect mode), default :math:`\sigma = 8`.

The old names are accepted with a ``DeprecationWarning``: in the metrics ``"zeros"`` meant the
dataset mean (now ``"dataset_mean"``), in the perturbations it meant black (now ``"black"``);
``"mean"`` was ``"image_mean"`` in both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "BASELINES",
    "BaselineName",
    "baseline_batch",
    "baseline_picture",
    "resolve_name",
]

BaselineName = Literal["black", "dataset_mean", "image_mean", "blur"]

#: The baseline names and what each replaces a pixel with (see the module docstring).
BASELINES: dict[str, str] = {
    "black": "RGB (0, 0, 0)",
    "dataset_mean": "the training set's mean colour (the all-zero normalised tensor)",
    "image_mean": "each image's own mean colour",
    "blur": "a Gaussian blur of the image",
}

# The names used before the vocabulary was unified, and what they meant where.
_LEGACY = {
    "batch": {"zeros": "dataset_mean", "mean": "image_mean"},
    "picture": {"zeros": "black", "mean": "image_mean"},
}


def resolve_name(
    name: str,
    space: Literal["batch", "picture"],
    error: type[Exception] = ValueError,
    what: str = "baseline",
) -> str:
    """The vocabulary name for ``name``; old names map (with a warning) to what they meant.

    ``what`` names the argument in the error message (``"baseline"``, ``"fill"``).
    """
    if name in BASELINES:
        return name
    if name in _LEGACY[space]:
        new = _LEGACY[space][name]
        warnings.warn(
            f"{what} {name!r} is ambiguous and deprecated; here it means {new!r}: pass "
            f"{new!r} (the names are {', '.join(map(repr, BASELINES))})",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    raise error(
        f"unknown {what} {name!r}; use one of {', '.join(map(repr, BASELINES))}"
        + (" or a tensor" if space == "batch" else ", a grey level or an RGB triple")
    )


def baseline_batch(
    x: torch.Tensor,
    baseline: str | torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    blur_sigma: float = 5.0,
    error: type[Exception] = ValueError,
) -> torch.Tensor:
    r"""The baseline of a normalised batch ``x`` (N, 3, H, W), same shape.

    ``baseline`` is a name of :data:`BASELINES` or a tensor broadcastable to ``x`` (values in
    the normalised space). ``"black"`` needs the normalisation ``mean``/``std`` (pixels in
    [0, 1]); ``"blur"`` uses ``blur_sigma`` pixels and a kernel of
    :math:`2\lceil 2\sigma\rceil + 1` pixels (Petsiuk et al. 2018 blur with :math:`\sigma = 5`).
    """
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError as err:
            raise error(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to x "
                f"{tuple(x.shape)}; pass (N, 3, H, W), (3, 1, 1) or a name"
            ) from err
    if not isinstance(baseline, str):
        raise error(f"baseline must be a name or a tensor, not {type(baseline).__name__}")
    name = resolve_name(baseline, "batch", error)
    if name == "dataset_mean":
        return torch.zeros_like(x)
    if name == "image_mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if name == "black":
        if mean is None or std is None:
            raise error(
                "baseline 'black' in a normalised batch is -mean/std: pass the model's "
                "normalisation (mean=loaded.mean, std=loaded.std)"
            )
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0.0 - m) / s).expand_as(x).clone()
    if blur_sigma <= 0:
        raise error(f"blur_sigma must be positive, got {blur_sigma}")
    k = 2 * math.ceil(2 * blur_sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[blur_sigma, blur_sigma])


def baseline_picture(
    image: np.ndarray,
    baseline: str,
    dataset_mean: Sequence[float] | None = None,
    blur_sigma: float = 8.0,
    error: type[Exception] = ValueError,
    what: str = "baseline",
) -> np.ndarray:
    """The baseline of a picture ``image`` (H, W, 3) in [0, 1], same shape and dtype.

    ``"dataset_mean"`` needs the colour (``dataset_mean=loaded.mean``); ``"blur"`` is scipy's
    ``gaussian_filter`` with ``blur_sigma`` pixels (reflect mode).
    """
    name = resolve_name(baseline, "picture", error, what)
    if name == "black":
        return np.zeros_like(image)
    if name == "image_mean":
        return np.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape)
    if name == "dataset_mean":
        if dataset_mean is None:
            raise error(
                "baseline 'dataset_mean' needs the training set's mean colour: pass "
                "dataset_mean=loaded.mean"
            )
        colour = np.asarray(dataset_mean, dtype=image.dtype).reshape(1, 1, -1)
        return np.broadcast_to(colour, image.shape)
    return ndimage.gaussian_filter(image, sigma=(blur_sigma, blur_sigma, 0), mode="reflect")
