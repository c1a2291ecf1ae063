r"""The CAM family: CAM, Grad-CAM, Grad-CAM++ and Score-CAM, on one shared mechanism.

Notation (used in every docstring and notebook): :math:`A^k \in \mathbb{R}^{h \times w}` is the
k-th feature map of the target layer (:math:`k = 1..K`), :math:`A^k_{ij}` its value at position
:math:`(i, j)`, :math:`Z = h w` the number of positions, :math:`y^c` the score of class
:math:`c` *before* softmax (the logit). Every method computes class weights
:math:`w^c_k` and the map

.. math:: L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big),

then upsamples :math:`L^c` bilinearly to the input size and min-max normalises it per image.
The methods differ only in :math:`w^c_k`: a new gradient method is one weight function passed
to :func:`gradient_cam`.

All functions take ``model_or_loaded``, a :class:`~xai_helpers.models.LoadedModel` (then
``layer`` defaults to its ``cam_layer`` and ``target`` may be a class name) or a plain
``nn.Module`` (then ``layer`` is required), an input batch ``x`` (N, 3, H, W), and ``target``:
``None`` (each image's top-1 class), one class for all images, or a sequence of N classes.
They return a :class:`CamResult` and leave the model as they found it (mode, ``requires_grad``,
no ``.grad`` written, no hooks left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .hooks import capture, restore_state
from .models import LoadedModel

__all__ = [
    "CamError",
    "CamResult",
    "ProgressFn",
    "Target",
    "cam",
    "cam_to_image",
    "find_classifier",
    "grad_cam",
    "grad_cam_pp",
    "grad_cam_pp_weights",
    "grad_cam_weights",
    "gradient_cam",
    "normalize_per_image",
    "score_cam",
]

Target = int | str | Sequence[int | str] | torch.Tensor | None
WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``progress(done, total)``, called by Score-CAM after every forward pass.
ProgressFn = Callable[[int, int], None]


class CamError(ValueError):
    """A CAM method was asked for something it cannot do (bad target, wrong head, bad input)."""


@dataclass
class CamResult:
    r"""The output of every CAM-family method, for a batch of N images.

    Attributes
    ----------
    low_res:
        (N, h, w) the map :math:`\mathrm{ReLU}(\sum_k w^c_k A^k)` at feature resolution,
        un-normalised.
    upsampled:
        (N, H, W) ``low_res`` bilinearly upsampled to the input size (``align_corners=False``)
        and min-max normalised per image to [0, 1]; a constant map becomes all zeros.
    weights:
        (N, K) the channel weights :math:`w^c_k`.
    target:
        (N,) the explained class of each image.
    logits:
        (N, C) the logits of the unperturbed forward pass.
    """

    low_res: torch.Tensor
    upsampled: torch.Tensor
    weights: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor


# ----------------------------------------------------------------------------------------------
# shared plumbing
# ----------------------------------------------------------------------------------------------


def _unpack(
    model_or_loaded: nn.Module | LoadedModel, layer: str | nn.Module | None
) -> tuple[nn.Module, str | nn.Module, LoadedModel | None]:
    if isinstance(model_or_loaded, LoadedModel):
        return model_or_loaded.model, layer or model_or_loaded.cam_layer, model_or_loaded
    if isinstance(model_or_loaded, nn.Module):
        if layer is None:
            raise CamError(
                "layer is required with a plain nn.Module (e.g. layer='layer4'); "
                "a LoadedModel knows its default cam_layer"
            )
        return model_or_loaded, layer, None
    raise CamError(f"expected a LoadedModel or an nn.Module, not {type(model_or_loaded).__name__}")


def _check_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise CamError(
            f"x must be a batch (N, C, H, W), got {shape}; use loaded.preprocess(image) "
            "or x.unsqueeze(0) for one image"
        )
    param = next(model.parameters(), None)
    return x.detach().to(param.device) if param is not None else x.detach()


def _resolve_targets(
    target: Target, logits: torch.Tensor, loaded: LoadedModel | None
) -> torch.Tensor:
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, torch.Tensor):
        target = target.tolist() if target.dim() else int(target)
    items = list(target) if isinstance(target, (list, tuple)) else [target] * n
    if len(items) != n:
        raise CamError(f"got {len(items)} targets for a batch of {n} images; give one or N")
    out = []
    for t in items:
        if isinstance(t, str):
            if loaded is None:
                raise CamError(
                    f"class name {t!r} needs a LoadedModel (it knows the names); "
                    "pass a class index with a plain nn.Module"
                )
            out.append(loaded.class_index(t))  # ModelError (a ValueError) for unknown names
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if not 0 <= int(t) < num_classes:
                raise CamError(f"class index {t} is out of range; use 0..{num_classes - 1}")
            out.append(int(t))
        else:
            raise CamError(f"a target must be a class index or name, not {type(t).__name__}")
    return torch.tensor(out, dtype=torch.long, device=logits.device)


def normalize_per_image(maps: torch.Tensor) -> torch.Tensor:
    r"""Min-max normalise each map of an (N, H, W) batch: :math:`(M - \min M)/(\max M - \min M)`.

    A constant map (e.g. a CAM that ReLU zeroed everywhere) becomes zeros, never NaN.
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - lo) / safe, torch.zeros_like(maps))


def cam_to_image(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (N, h, w) maps bilinearly (``align_corners=False``) to ``size`` and normalise."""
    up = F.interpolate(low_res[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_per_image(up)


def _finish(
    activations: torch.Tensor,
    weights: torch.Tensor,
    target: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
) -> CamResult:
    low_res = torch.relu(torch.einsum("nk,nkhw->nhw", weights, activations))
    return CamResult(
        low_res=low_res.detach(),
        upsampled=cam_to_image(low_res.detach(), size),
        weights=weights.detach(),
        target=target,
        logits=logits.detach(),
    )


# ----------------------------------------------------------------------------------------------
# gradient methods: one core, one weight function each
# ----------------------------------------------------------------------------------------------


def grad_cam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM weights: the spatial mean of the gradient (Selvaraju et al. 2017, eq. 1).

    .. math:: w^c_k = \frac{1}{Z} \sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}
    """
    return gradients.mean(dim=(2, 3))


def grad_cam_pp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM++ weights (Chattopadhay et al. 2018, eqs. 7 and 19).

    With :math:`g_{ij} = \partial y^c / \partial A^k_{ij}` and the paper's assumption that the
    class score is :math:`Y^c = \exp(y^c)` (so that higher derivatives are powers of the first,
    :math:`\partial^n Y^c/\partial (A^k_{ij})^n = \exp(y^c)\, g_{ij}^n`),

    .. math::
        \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + \sum_{a,b} A^k_{ab}\, g_{ij}^3},
        \qquad w^c_k = \sum_{i,j} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g_{ij}).

    The common factor :math:`\exp(y^c)` is dropped: it scales all weights alike and vanishes in
    the normalisation. Where the denominator is zero (in particular :math:`g_{ij} = 0`, where
    the fraction is 0/0), :math:`\alpha` is set to 0 instead of NaN.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    sum_a = activations.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + sum_a * g3
    ok = denom != 0
    alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
    return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


def gradient_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    weight_fn: WeightFn,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    """The shared core of the gradient methods: capture :math:`A^k` and :math:`\\partial y^c /
    \\partial A^k` of ``layer`` in one forward pass and a backward pass through the layers
    above it, then ``weights = weight_fn(activations, gradients)`` and
    :math:`\\mathrm{ReLU}(\\sum_k w_k A^k)`.

    Only :math:`\\partial y^c / \\partial A^k` is needed, so the backward pass stops at
    ``layer``: the parameters are frozen for the call (and restored after), ``x`` requires no
    grad, and the layer's output is made a leaf of the graph (``capture(..., as_leaf=True)``).
    Nothing below the layer is recorded or differentiated, and no parameter's ``.grad`` is
    written. The gradients of the N images are independent: the sum of their target logits is
    differentiated once (the model is in eval mode, so no image influences another).
    """
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    with (
        restore_state(model, freeze=True),
        torch.enable_grad(),
        capture(model, layer, as_leaf=True) as cap,
    ):
        logits = model(x)
        target_idx = _resolve_targets(target, logits, loaded)
        scores = logits.gather(1, target_idx[:, None]).sum()
        if cap.output is not None and scores.requires_grad:
            (gradients,) = torch.autograd.grad(scores, cap.output, allow_unused=True)
        else:
            gradients = None
        activations = cap.activations
    if activations is None or gradients is None or activations.dim() != 4:
        raise CamError(
            f"layer {cap.name!r} gave no 4-D feature maps with a gradient; choose a convolutional "
            "layer that the class score depends on"
        )
    weights = weight_fn(activations, gradients)
    return _finish(activations, weights, target_idx, logits, tuple(x.shape[-2:]))


def grad_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017, eqs. 1-2).

    .. math::
        w^c_k = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    For a GAP→Linear head, :math:`\partial y^c/\partial A^k_{ij} = W_{ck}/Z`, so Grad-CAM
    equals CAM divided by :math:`Z`.

    Examples
    --------
    >>> lm = load_model()                                          # doctest: +SKIP
    >>> res = grad_cam(lm, lm.preprocess("data/chelsea.png"), "tiger cat")  # doctest: +SKIP
    >>> res.upsampled.shape                                        # doctest: +SKIP
    torch.Size([1, 224, 224])
    """
    return gradient_cam(model_or_loaded, x, grad_cam_weights, target, layer)


def grad_cam_pp(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""Grad-CAM++ (Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual
    Explanations for Deep Convolutional Networks", WACV 2018, eq. 19 for :math:`\alpha`,
    eq. 7 for the weights); see :func:`grad_cam_pp_weights` for the formula and its
    :math:`\exp(y^c)` assumption.
    """
    return gradient_cam(model_or_loaded, x, grad_cam_pp_weights, target, layer)


# ----------------------------------------------------------------------------------------------
# CAM: the classifier's own weights
# ----------------------------------------------------------------------------------------------


def find_classifier(
    model_or_loaded: nn.Module | LoadedModel,
) -> nn.Linear:
    """The final ``nn.Linear`` of a GAP→Linear network (timm's ``get_classifier()``,
    torchvision's ``fc``); :class:`CamError` when there is none.

    This only finds a candidate; :func:`cam` also verifies numerically that the logits equal
    the Linear layer applied to the spatial mean of the target layer's output.
    """
    model = model_or_loaded.model if isinstance(model_or_loaded, LoadedModel) else model_or_loaded
    name = model_or_loaded.name if isinstance(model_or_loaded, LoadedModel) else None
    head: object = None
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
    elif isinstance(getattr(model, "fc", None), nn.Module):
        head = model.fc
    elif isinstance(getattr(model, "classifier", None), nn.Module):
        head = model.classifier
    if not isinstance(head, nn.Linear):
        which = name or type(model).__name__
        raise CamError(
            f"CAM needs a head 'global average pooling -> one Linear layer'; {which} has "
            f"{type(head).__name__ if head is not None else 'no recognisable classifier'} "
            "instead (VGG16: flatten -> 3 fully connected layers with ReLU), so no class weight "
            "per feature map exists; use grad_cam, which works for any head"
        )
    return head


def cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""Class Activation Mapping (Zhou et al., "Learning Deep Features for Discriminative
    Localization", CVPR 2016, Sec. 2).

    For a network ending in global average pooling and one Linear layer,
    :math:`y^c = \sum_k W_{ck} \frac{1}{Z}\sum_{i,j} A^k_{ij} + b_c`, so

    .. math::
        M^c_{ij} = \sum_k W_{ck} A^k_{ij}, \qquad \frac{1}{Z}\sum_{i,j} M^c_{ij} + b_c = y^c,

    the identity holding for :math:`M^c` *before* the ReLU; ``low_res`` is
    :math:`\mathrm{ReLU}(M^c)`. ``layer`` must be the layer whose output the pooling sees
    (``bn2`` with its ReLU6 for EfficientNet-Lite, ``layer4`` for ResNet50); this is checked
    numerically, and a model without such a head (VGG16) raises :class:`CamError`.
    """
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    fc = find_classifier(model_or_loaded)
    with restore_state(model), torch.no_grad(), capture(model, layer) as cap:
        logits = model(x)
        activations = cap.activations
    if activations is None or activations.dim() != 4 or activations.shape[1] != fc.in_features:
        got = "nothing" if activations is None else f"shape {tuple(activations.shape)}"
        raise CamError(
            f"CAM needs the {fc.in_features} feature maps that the global average pool sees; "
            f"layer {cap.name!r} gave {got}; pass the last feature layer (e.g. 'bn2', 'layer4')"
        )
    target_idx = _resolve_targets(target, logits, loaded)
    weights = fc.weight.detach()[target_idx].to(activations.dtype)
    # Verify GAP -> Linear instead of assuming it (a layer before a final ReLU would fail here),
    # on the explained classes: the identity above, one dot product per image, not the whole head.
    rebuilt = (weights * activations.mean(dim=(2, 3))).sum(dim=1)
    if fc.bias is not None:
        rebuilt = rebuilt + fc.bias.detach()[target_idx]
    expected = logits.gather(1, target_idx[:, None])[:, 0]
    scale = 1.0 + logits.abs().max().item()
    if not torch.allclose(rebuilt, expected, rtol=1e-3, atol=1e-3 * scale):
        raise CamError(
            f"the logits are not Linear(mean of layer {cap.name!r} output): the head is not "
            "GAP -> Linear on this layer, so CAM does not apply; pick the layer whose output "
            "is pooled, or use grad_cam"
        )
    return _finish(activations, weights, target_idx, logits, tuple(x.shape[-2:]))


# ----------------------------------------------------------------------------------------------
# Score-CAM: weights from forward passes on masked inputs
# ----------------------------------------------------------------------------------------------


def _channel_masks(act: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) activations -> (K, H, W) masks: upsampled, min-max normalised per channel.

    A constant channel becomes an all-zero mask (never 0/0).
    """
    up = F.interpolate(act[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_per_image(up)


class _Progress:
    """A tqdm bar (``progress=True``), nothing (``False``) or calls of ``progress(done, total)``."""

    def __init__(self, total: int, progress: bool | ProgressFn) -> None:
        self.total, self.done = total, 0
        self.callback = progress if callable(progress) else None
        self.bar = tqdm(total=total, desc="Score-CAM", disable=progress is not True, leave=False)
        if self.callback is not None:
            self.callback(0, total)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        self.bar.close()


def score_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 8,
    variant: Literal["probability", "softmax_logits"] = "probability",
    progress: bool | ProgressFn = True,
) -> CamResult:
    r"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR Workshops 2020, Sec. 3 and Alg. 1).

    Each feature map is upsampled to the input size and min-max normalised,
    :math:`H^k = s(\mathrm{Up}(A^k))` in [0, 1], and used as a mask on the input:

    .. math::
        w^c_k = \mathrm{softmax}\big(f(X \circ H^k)\big)_c \quad (\texttt{"probability"},
        \text{the paper's Alg. 1, default}),

    or, the variant of pytorch-grad-cam and torchcam,
    :math:`w^c_k = \mathrm{softmax}_k\big(y^c(X \circ H^k)\big)` (``"softmax_logits"``: the
    masked logits, softmax over the K channels). Then :math:`L^c = \mathrm{ReLU}(\sum_k
    w^c_k A^k)`. The mask multiplies the *normalised* input tensor ``x`` (as pytorch-grad-cam
    does), so a masked-out pixel is the dataset mean, not black.

    A constant channel gives an all-zero mask, hence the input ``0 * x``; all such channels
    share one forward pass (exact: they see the same input). Identical images in the batch (the
    same image explained for several classes) share all their passes, since one pass scores
    every class. No gradients are computed; the masked inputs go through the model in batches
    of ``batch_size``.

    Parameters
    ----------
    batch_size:
        Masked images per forward pass; results do not depend on it. Measured for Lite0 on the
        course's 2-core CPU, idle: 8 was fastest (about 15-17 ms per image; 1: 18-24, 16: 17-20,
        32: 24); on the same CPU shared with other jobs, 16 and 32 won. The masked batches are
        passed in ``channels_last`` memory format (idle, batch 32: 27 instead of 39 ms per
        image); the model itself is not converted.
    variant:
        ``"probability"`` (default, the paper) or ``"softmax_logits"``.
    progress:
        ``True``: a tqdm progress bar over the masked images; ``False``: none; a callable
        ``progress(done, total)``: called after every forward pass (a widget's progress bar).
    """
    if variant not in ("probability", "softmax_logits"):
        raise CamError(f"variant must be 'probability' or 'softmax_logits', not {variant!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CamError(f"batch_size must be a positive int, not {batch_size!r}")
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    size = tuple(x.shape[-2:])
    with restore_state(model), torch.no_grad():
        with capture(model, layer) as cap:
            logits = model(x)
            activations = cap.activations
        if activations is None or activations.dim() != 4:
            raise CamError(f"layer {cap.name!r} gave no 4-D feature maps; choose a conv layer")
        target_idx = _resolve_targets(target, logits, loaded)
        n, k = activations.shape[:2]
        flat = activations.flatten(2)
        varying = flat.amax(dim=2) > flat.amin(dim=2)  # (N, K); the others share a zero mask
        weights = torch.empty(n, k, dtype=x.dtype, device=x.device)
        # Identical images in the batch (one image explained for several classes) share passes:
        # one masked forward pass gives the scores of every class.
        first = [next(j for j in range(i + 1) if torch.equal(x[j], x[i])) for i in range(n)]
        unique = sorted(set(first))
        total = sum(int(varying[i].sum()) + int(not bool(varying[i].all())) for i in unique)
        bar = _Progress(total, progress)

        def scores(batch: torch.Tensor) -> torch.Tensor:  # (B, C): every class at once
            # A channels_last input alone cut CPU time per image by ~30 % for Lite0 (measured),
            # without touching the model's own memory format.
            out = model(batch.contiguous(memory_format=torch.channels_last))
            return torch.softmax(out, dim=1) if variant == "probability" else out

        try:
            for i in unique:
                rows = torch.empty(k, logits.shape[1], dtype=x.dtype, device=x.device)
                channels = varying[i].nonzero().flatten()
                for start in range(0, len(channels), batch_size):
                    idx = channels[start : start + batch_size]
                    masks = _channel_masks(activations[i, idx], size)
                    rows[idx] = scores(x[i : i + 1] * masks[:, None]).to(x.dtype)
                    bar.update(len(idx))
                if not bool(varying[i].all()):
                    rows[~varying[i]] = scores(torch.zeros_like(x[i : i + 1]))[0].to(x.dtype)
                    bar.update(1)
                for j in range(n):
                    if first[j] == i:
                        weights[j] = rows[:, int(target_idx[j])]
        finally:
            bar.close()
        if variant == "softmax_logits":
            weights = torch.softmax(weights, dim=1)
    return _finish(activations, weights, target_idx, logits, size)
