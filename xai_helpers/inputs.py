"""Inputs checked at the door: one check of a batch, one resolution of the explained classes.

Every public entry point (the CAM family, LRP, :func:`~xai_helpers.explain.explain`, the
metrics) calls :func:`check_batch` once on its input and :func:`resolve_targets` on its
``target``, so a 1-channel batch, a float64 batch for a float32 model, an integer tensor, an
all-NaN input or an empty batch gets the same one-line message everywhere, naming the fix,
instead of an error from deep inside torch (or, for NaN, a finite map that means nothing).

Both take ``error``: the exception class to raise (each module raises its own, all of them
``ValueError`` subclasses), so ``except CamError`` keeps working for the CAM family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .models import LoadedModel

__all__ = [
    "InputError",
    "Target",
    "check_batch",
    "expected_channels",
    "forward_channels_last",
    "resolve_targets",
    "unpack_model",
]

#: What a method may be asked to explain: ``None`` (each image's top-1 class), one class index
#: or name for every image, or a sequence (or tensor) of N of them.
Target = int | str | Sequence[int | str] | torch.Tensor | None


class InputError(ValueError):
    """An input batch or target cannot be explained; the message names the fix."""


def expected_channels(model: Any) -> int | None:
    """Input channels of the model's first convolution (``None`` when it has none)."""
    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


def _parameter(model: Any) -> torch.Tensor | None:
    if not isinstance(model, nn.Module):
        return None
    return next(model.parameters(), None)


def check_batch(
    x: Any,
    model: Any = None,
    error: type[Exception] = InputError,
    channels: int | None = None,
) -> torch.Tensor:
    """Check an input batch once; return it on the model's device.

    Checked, in this order: a tensor of shape (N, C, H, W); at least one image; a floating
    dtype; C equal to ``channels`` (default: the input channels of the model's first
    convolution, if it has one); the model's dtype; finite values. ``x`` is moved to the
    device of the model's parameters (the only silent fix: it cannot change a number).

    Parameters
    ----------
    x:
        The batch, as ``LoadedModel.preprocess`` returns it.
    model:
        The ``nn.Module`` that will see ``x`` (or any callable: then only ``x`` itself is
        checked).
    error:
        The exception class to raise.
    channels:
        The number of channels to require when the model does not say.
    """
    if not isinstance(x, torch.Tensor):
        raise error(
            f"x must be a torch.Tensor batch (N, 3, H, W), not {type(x).__name__}; "
            "use loaded.preprocess(image) to turn an image into one"
        )
    if x.dim() != 4:
        raise error(
            f"x must be a batch (N, C, H, W), got shape {tuple(x.shape)}; for one image use "
            "x[None] (x.unsqueeze(0)), or loaded.preprocess(image)"
        )
    if x.shape[0] == 0:
        raise error("x is an empty batch (0 images); pass at least one image")
    if not torch.is_floating_point(x):
        raise error(
            f"x is a {x.dtype} tensor, but the network takes normalised floats; preprocess the "
            "image with loaded.preprocess(image) (for raw uint8 pixels: x.float() / 255, then "
            "normalise with the model's mean and std)"
        )
    expected = channels if channels is not None else expected_channels(model)
    if expected is not None and x.shape[1] != expected:
        fix = (
            "a grey image needs three channels: x.expand(-1, 3, -1, -1), or load it with "
            "loaded.preprocess(image), which converts every image to RGB"
            if x.shape[1] == 1 and expected == 3
            else "drop the alpha channel (x[:, :3]) or load the image with loaded.preprocess"
            if x.shape[1] == 4 and expected == 3
            else "pass images with that many channels"
        )
        raise error(
            f"x has {x.shape[1]} channel{'s' if x.shape[1] != 1 else ''}, the model expects "
            f"{expected}; {fix}"
        )
    param = _parameter(model)
    if param is not None and torch.is_floating_point(param) and x.dtype != param.dtype:
        raise error(
            f"x is {x.dtype} but the model's weights are {param.dtype}; convert the batch with "
            f"x.to({param.dtype}) (or the model with model.to({x.dtype}))"
        )
    if param is not None and x.device != param.device:
        x = x.to(param.device)
    # One reduction finds any NaN or inf (they make the sum non-finite); only then, rarely
    # (a sum that overflows), the element-wise test.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        what = "is all NaN or inf" if bad == x.numel() else f"contains {bad} NaN or inf values"
        raise error(
            f"x {what}; an explanation of it would mean nothing: check the preprocessing "
            "(e.g. a division by a zero std, or an image that failed to load)"
        )
    return x


def resolve_targets(
    target: Target,
    logits: torch.Tensor | None = None,
    class_index: Callable[[int | str], int] | None = None,
    error: type[Exception] = InputError,
    n: int | None = None,
) -> torch.Tensor:
    """The explained class of each image as an (N,) long tensor.

    Parameters
    ----------
    target:
        ``None`` (each image's top-1 class: needs ``logits``), a class index or name for every
        image (also as a one-element sequence or tensor), or a sequence or tensor of N of them.
    logits:
        (N, C) the model's output: gives N, the number of classes (indices are checked
        against it) and the top-1 classes.
    class_index:
        Resolves class names (``LoadedModel.class_index``); without it a name is an error.
    n:
        The batch size when there are no ``logits`` (then indices are not range-checked).
    """
    if logits is not None:
        n, num_classes = logits.shape
        device = logits.device
    elif n is None:
        raise error("resolve_targets needs the logits or the batch size n")
    else:
        num_classes, device = None, torch.device("cpu")
    if target is None:
        if logits is None:
            raise error("target is required here: pass the explained class of each image")
        return logits.argmax(dim=1)
    if isinstance(target, torch.Tensor):
        target = target.tolist() if target.dim() else target.item()
    if isinstance(target, np.ndarray):
        target = target.tolist()
    items = list(target) if isinstance(target, (list, tuple)) else [target] * n
    if len(items) == 1:
        items = items * n  # one class for every image, also when given as [c]
    if len(items) != n:
        raise error(
            f"got {len(items)} targets for a batch of {n} images; give one class per image, "
            "or a single one for all"
        )
    out = []
    for t in items:
        if isinstance(t, str):
            if class_index is None:
                raise error(
                    f"class names need a LoadedModel: {t!r} needs a LoadedModel, which knows "
                    "the class names; with a plain nn.Module pass the class index"
                )
            out.append(class_index(t))  # ModelError (a ValueError) for unknown names
        elif isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)):
            if num_classes is not None and not 0 <= int(t) < num_classes:
                raise error(
                    f"target {t!r} is out of range: not a class index in 0..{num_classes - 1}"
                )
            out.append(int(t))
        else:
            raise error(f"a target must be a class index or name, not {type(t).__name__}")
    return torch.tensor(out, dtype=torch.long, device=device)


def forward_channels_last(
    model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
) -> torch.Tensor:
    """``model(batch)`` with the 4-D batch laid out ``channels_last`` (NHWC) in memory.

    The values are the same (up to float rounding); only the layout of the input changes, and the
    model itself is not converted. On the CPU, oneDNN's convolutions run faster on NHWC: for
    EfficientNet-Lite0 on the course's 2-core machine, idle, 66 instead of 39 images/s at batch
    16 and 71 at batch 8 (measured with ``metrics.deletion``). Every batched forward of masked
    or perturbed copies (Score-CAM, occlusion, RISE, the deletion / insertion curves, Average
    Drop) goes through here.
    """
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return model(batch)


def unpack_model(
    model_or_loaded: nn.Module | LoadedModel, error: type[Exception] = InputError
) -> tuple[nn.Module, LoadedModel | None]:
    """``(network, LoadedModel or None)`` from what the caller passed; else ``error``."""
    if isinstance(model_or_loaded, LoadedModel):
        return model_or_loaded.model, model_or_loaded
    if isinstance(model_or_loaded, nn.Module):
        return model_or_loaded, None
    raise error(f"expected a LoadedModel or an nn.Module, not {type(model_or_loaded).__name__}")
