"""One call for every method of the course, for the comparison and robustness notebooks.

``explain(lm, x, "grad_cam")`` returns an (N, H, W) map at input resolution, whatever the method:

* CAM, Grad-CAM, Grad-CAM++, Score-CAM: :attr:`CamResult.upsampled`, non-negative and min-max
  normalised per image to [0, 1];
* LRP: :attr:`LrpResult.relevance`, the *signed* pixel relevance summed over colour channels
  (its scale is the logit's; compare ranks, not values, across methods).

Metrics that rank pixels (deletion, insertion, pointing game, top-k masking) are invariant to
these scale conventions; the figures use :data:`SIGNED` to choose the colour map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .cams import Target, cam, grad_cam, grad_cam_pp, score_cam
from .lrp import lrp
from .models import LoadedModel

__all__ = ["LABELS", "METHODS", "SIGNED", "UnknownMethodError", "explain"]


def _cam_family(fn: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def run(lm: LoadedModel, x: torch.Tensor, target: Target, **kwargs: Any) -> torch.Tensor:
        return fn(lm, x, target, **kwargs).upsampled

    return run


def _lrp(lm: LoadedModel, x: torch.Tensor, target: Target, **kwargs: Any) -> torch.Tensor:
    return lrp(lm, x, target, **kwargs).relevance


#: method name -> function ``(lm, x, target, **kwargs) -> (N, H, W)`` map.
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "cam": _cam_family(cam),
    "grad_cam": _cam_family(grad_cam),
    "grad_cam_pp": _cam_family(grad_cam_pp),
    "score_cam": _cam_family(score_cam),
    "lrp": _lrp,
}

#: Display names, as the papers write them.
LABELS: dict[str, str] = {
    "cam": "CAM",
    "grad_cam": "Grad-CAM",
    "grad_cam_pp": "Grad-CAM++",
    "score_cam": "Score-CAM",
    "lrp": "LRP",
}

#: Methods whose maps are signed (draw them with a diverging colour map centred at zero).
SIGNED: frozenset[str] = frozenset({"lrp"})


class UnknownMethodError(ValueError):
    """The method name is not one of :data:`METHODS`."""


def explain(
    lm: LoadedModel,
    x: torch.Tensor,
    method: str,
    target: Target = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Explain ``target`` (default: each image's top-1 class) for the batch ``x`` with ``method``.

    Parameters
    ----------
    lm:
        The loaded model (its default CAM layer and normalisation are used).
    x:
        (N, 3, H, W) preprocessed batch.
    method:
        One of ``"cam"``, ``"grad_cam"``, ``"grad_cam_pp"``, ``"score_cam"``, ``"lrp"``.
    target:
        ``None``, a class index or name, or a sequence of N of them.
    **kwargs:
        Passed to the method (e.g. ``batch_size``/``progress`` for Score-CAM, ``composite`` for
        LRP, ``layer`` for the CAM family).

    Returns
    -------
    torch.Tensor
        (N, H, W) map, detached.
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method](lm, x, target, **kwargs).detach()
