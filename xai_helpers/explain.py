"""One call for every method of the course: ``explain(lm, x, "grad_cam")``.

It returns an (N, H, W) map at input resolution, whatever the method; what the values mean is
in the method's record (:mod:`xai_helpers.registry`):

* unsigned methods (the CAM family): non-negative, min-max normalised per image to [0, 1];
* signed methods (LRP): the signed pixel relevance summed over colour channels (its scale is
  the logit's; compare ranks, not values, across methods).

Metrics that rank pixels (deletion, insertion, pointing game, top-k masking) are invariant to
these scale conventions; figures read ``get_method(name).signed`` to choose the colour map.
"""

from __future__ import annotations

from typing import Any

import torch

from .inputs import InputError, Target, check_batch
from .models import LoadedModel
from .registry import METHODS, UnknownMethodError, get_method

__all__ = ["METHODS", "InputError", "UnknownMethodError", "explain"]


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
        (N, 3, H, W) preprocessed batch, checked once here
        (:func:`xai_helpers.inputs.check_batch`: a bad batch raises
        :class:`~xai_helpers.inputs.InputError` naming the fix, whatever the method).
    method:
        A name in :data:`xai_helpers.registry.METHODS` (``"cam"``, ``"grad_cam"``,
        ``"grad_cam_pp"``, ``"score_cam"``, ``"lrp"``, ...).
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
    record = get_method(method)
    model = lm.model if isinstance(lm, LoadedModel) else lm
    x = check_batch(x, model, error=InputError)
    return record.fn(lm, x, target, **kwargs).detach()


def __getattr__(name: str) -> Any:
    # Views of the registry kept for code written before it existed; read the registry instead.
    if name == "LABELS":
        return {m.name: m.label for m in METHODS.values()}
    if name == "SIGNED":
        return frozenset(m.name for m in METHODS.values() if m.signed)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
