r"""The CAM family on one shared mechanism: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM,
Eigen-CAM, Score-CAM and Ablation-CAM.

Notation (used in every docstring and notebook): :math:`A^k \in \mathbb{R}^{h \times w}` is the
k-th feature map of the target layer (:math:`k = 1..K`), :math:`A^k_{ij}` its value at position
:math:`(i, j)`, :math:`Z = h w` the number of positions, :math:`y^c` the score of class
:math:`c` *before* softmax (the logit), :math:`g^k_{ij} = \partial y^c / \partial A^k_{ij}`.
Every method computes a map

.. math:: L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)
   \quad\text{or, with per-location weights,}\quad
   L^c_{ij} = \mathrm{ReLU}\Big(\sum_k w^c_{k,ij} A^k_{ij}\Big),

then upsamples :math:`L^c` bilinearly to the input size and min-max normalises it per image.

The shared mechanism, :func:`class_activation_map`, has the two extension points of the
reference libraries:

* ``weights(activations, gradients)``: channel weights of shape (N, K) or per-location weights
  (N, K, h, w), broadcast against the activations (torchcam's ``_get_weights``;
  pytorch-grad-cam's ``get_cam_weights``). Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM are
  one weight function each.
* ``cam_image(activations, gradients)``: the map itself, before the ReLU (pytorch-grad-cam's
  ``get_cam_image``), for a method that is not a weighted sum: Eigen-CAM's principal component.

``gradients=False`` skips the backward pass (CAM's and Eigen-CAM's maps need none, and
Eigen-CAM needs no class either). Score-CAM and Ablation-CAM get their weights from forward
passes on perturbed inputs or feature maps, then share the rest.

All functions take ``model_or_loaded``, a :class:`~xai_helpers.models.LoadedModel` (then
``layer`` defaults to its ``cam_layer`` and ``target`` may be a class name) or a plain
``nn.Module`` (then ``layer`` is required), an input batch ``x`` (N, 3, H, W), checked once by
:func:`xai_helpers.inputs.check_batch`, and ``target``: ``None`` (each image's top-1 class),
one class for all images, or a sequence of N classes. They return a :class:`CamResult` and leave
the model as they found it (mode, ``requires_grad``, no ``.grad`` written, no hooks left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .baselines import BaselineName, baseline_batch
from .hooks import capture, restore_state, substitute
from .inputs import Target, check_batch, forward_channels_last, resolve_targets
from .maps import normalize_per_image, upsample
from .models import LoadedModel
from .progress import ProgressFn, Reporter

__all__ = [
    "CamError",
    "CamImageFn",
    "CamResult",
    "ProgressFn",
    "Target",
    "WeightFn",
    "ablation_cam",
    "cam",
    "cam_to_image",
    "class_activation_map",
    "eigen_cam",
    "eigen_cam_image",
    "find_classifier",
    "fuse_layer_cams",
    "grad_cam",
    "grad_cam_pp",
    "grad_cam_pp_weights",
    "grad_cam_weights",
    "gradient_cam",
    "layer_cam",
    "layer_cam_fused",
    "layer_cam_weights",
    "normalize_per_image",
    "score_cam",
    "weighted_sum",
    "xgrad_cam",
    "xgrad_cam_weights",
]

#: ``weights(activations, gradients)``: (N, K) channel weights or (N, K, h, w) per-location
#: weights; ``gradients`` is ``None`` for a method without a backward pass.
WeightFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
#: ``cam_image(activations, gradients)``: the (N, h, w) map before the ReLU.
CamImageFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


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
        The weights :math:`w^c_k`: (N, K) channel weights, (N, K, h, w) per-location weights
        (LayerCAM), or ``None`` for a method that is not a weighted sum (Eigen-CAM).
    target:
        (N,) the explained class of each image.
    logits:
        (N, C) the logits of the unperturbed forward pass.
    """

    low_res: torch.Tensor
    upsampled: torch.Tensor
    weights: torch.Tensor | None
    target: torch.Tensor
    logits: torch.Tensor


# ----------------------------------------------------------------------------------------------
# the shared mechanism
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
    return check_batch(x, model, error=CamError).detach()


def _targets(target: Target, logits: torch.Tensor, loaded: LoadedModel | None) -> torch.Tensor:
    class_index = loaded.class_index if loaded is not None else None
    return resolve_targets(target, logits, class_index, error=CamError)


def cam_to_image(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (N, h, w) maps bilinearly (``align_corners=False``) to ``size`` and normalise."""
    return normalize_per_image(upsample(low_res, size))


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_k w_k A^k` for channel weights (N, K) or per-location weights (N, K, h, w)."""
    if weights.dim() == 2:
        return torch.einsum("nk,nkhw->nhw", weights, activations)
    if weights.shape != activations.shape:
        raise CamError(
            f"weights {tuple(weights.shape)} fit neither (N, K) nor the activations "
            f"{tuple(activations.shape)}"
        )
    return (weights * activations).sum(dim=1)


def _finish(
    activations: torch.Tensor,
    weights: torch.Tensor | None,
    target: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
    image: torch.Tensor | None = None,
) -> CamResult:
    raw = image if image is not None else weighted_sum(weights, activations)
    low_res = torch.relu(raw).detach()
    return CamResult(
        low_res=low_res,
        upsampled=cam_to_image(low_res, size),
        weights=weights.detach() if weights is not None else None,
        target=target,
        logits=logits.detach(),
    )


def class_activation_map(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    *,
    weights: WeightFn | None = None,
    cam_image: CamImageFn | None = None,
    gradients: bool = True,
) -> CamResult:
    r"""The shared mechanism of the CAM family: one forward (and backward) pass, then a map.

    Captures :math:`A^k` of ``layer`` and, with ``gradients=True``,
    :math:`\partial y^c / \partial A^k` in one backward pass through the layers above it; then
    either ``w = weights(A, G)`` ((N, K) or (N, K, h, w)) and
    :math:`\mathrm{ReLU}(\sum_k w_k A^k)`, or :math:`\mathrm{ReLU}(\texttt{cam\_image}(A, G))`.
    With ``gradients=False`` no backward pass runs and the functions get ``G = None``.

    The backward pass stops at ``layer``: the parameters are frozen for the call (and restored
    after), ``x`` requires no grad, and the layer's output is made a leaf of the graph
    (``capture(..., as_leaf=True)``). Nothing below the layer is recorded or differentiated, and
    no parameter's ``.grad`` is written. The gradients of the N images are independent: the sum
    of their target logits is differentiated once (the model is in eval mode, so no image
    influences another).

    Examples
    --------
    LayerCAM is per-location weights, the positive part of the gradient::

        class_activation_map(lm, x, weights=lambda a, g: torch.relu(g))
    """
    if (weights is None) == (cam_image is None):
        raise CamError("pass exactly one of weights= (a weight function) or cam_image=")
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    if gradients:
        with (
            restore_state(model, freeze=True),
            torch.enable_grad(),
            capture(model, layer, as_leaf=True) as cap,
        ):
            logits = model(x)
            target_idx = _targets(target, logits, loaded)
            scores = logits.gather(1, target_idx[:, None]).sum()
            if cap.output is not None and scores.requires_grad:
                (grads,) = torch.autograd.grad(scores, cap.output, allow_unused=True)
            else:
                grads = None
            activations = cap.activations
        if activations is None or grads is None or activations.dim() != 4:
            raise CamError(
                f"layer {cap.name!r} gave no 4-D feature maps with a gradient; choose a "
                "convolutional layer that the class score depends on"
            )
    else:
        with restore_state(model), torch.no_grad(), capture(model, layer) as cap:
            logits = model(x)
            activations = cap.activations
        if activations is None or activations.dim() != 4:
            raise CamError(f"layer {cap.name!r} gave no 4-D feature maps; choose a conv layer")
        target_idx = _targets(target, logits, loaded)
        grads = None
    size = tuple(x.shape[-2:])
    if cam_image is not None:
        image = cam_image(activations, grads)
        return _finish(activations, None, target_idx, logits, size, image=image)
    return _finish(activations, weights(activations, grads), target_idx, logits, size)


def gradient_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    weight_fn: WeightFn,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""A gradient method from its weight function: :func:`class_activation_map` with
    ``weights=weight_fn`` (kept as the short name of the common case)."""
    return class_activation_map(model_or_loaded, x, target, layer, weights=weight_fn)


# ----------------------------------------------------------------------------------------------
# gradient methods: one weight function each
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
    return class_activation_map(model_or_loaded, x, target, layer, weights=grad_cam_weights)


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
    return class_activation_map(model_or_loaded, x, target, layer, weights=grad_cam_pp_weights)


def xgrad_cam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""XGrad-CAM weights (Fu et al., "Axiom-based Grad-CAM", BMVC 2020): the gradient averaged
    with the channel's own activations as the weights of the average,

    .. math:: w^c_k = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}\, g^k_{ij},

    derived by Fu et al. from two axioms (sensitivity and conservation) instead of Grad-CAM's
    plain spatial mean. A channel whose activations sum to zero gets weight 0.
    """
    total = activations.sum(dim=(2, 3), keepdim=True)
    ok = total != 0
    share = torch.where(ok, activations / torch.where(ok, total, torch.ones_like(total)), 0.0)
    return (share * gradients).sum(dim=(2, 3))


def layer_cam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    r"""LayerCAM weights (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps
    for Localization", IEEE TIP 30, 2021): one weight per channel *and position*, the positive
    part of the gradient, :math:`w^c_{k,ij} = \mathrm{ReLU}(g^k_{ij})`, shape (N, K, h, w)."""
    return torch.relu(gradients)


def xgrad_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020): Grad-CAM with the weights of :func:`xgrad_cam_weights`,

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \Big(\sum_{i,j}
        \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}} g^k_{ij}\Big) A^k\Big).

    For a GAP→Linear head the gradient is constant over positions, :math:`g^k_{ij} = W_{ck}/Z`,
    so the weights are :math:`W_{ck}/Z` exactly as Grad-CAM's: on the last layer of Lite0 or
    ResNet50, XGrad-CAM equals Grad-CAM and CAM; it differs on inner layers.
    """
    return class_activation_map(model_or_loaded, x, target, layer, weights=xgrad_cam_weights)


def layer_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
) -> CamResult:
    r"""LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 30, 2021): each position weighted by its own positive gradient,

    .. math:: L^c_{ij} = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g^k_{ij})\, A^k_{ij}\Big).

    Its point is shallow layers, where the spatial mean of Grad-CAM averages away the detail:
    fuse several of them with :func:`layer_cam_fused`. ``weights`` has shape (N, K, h, w).
    """
    return class_activation_map(model_or_loaded, x, target, layer, weights=layer_cam_weights)


def fuse_layer_cams(
    maps: Sequence[torch.Tensor], size: tuple[int, int], gamma: float = 2.0
) -> torch.Tensor:
    r"""Fuse LayerCAM maps of several layers (Jiang et al. 2021, hierarchical fusion).

    Shallow layers give small values, so each map is first min-max normalised and scaled,
    :math:`\hat L = \tanh(\gamma\, s(L))` with :math:`\gamma = 2` (the paper's scaling, its
    Eq. 9 as torchcam cites it), upsampled bilinearly to ``size``, and the maps are combined
    by their element-wise maximum: torchcam's ``LayerCAM.fuse_cams`` (the authors' released
    code computes one layer at a time and fuses nothing).

    Parameters
    ----------
    maps:
        The maps ``low_res`` (N, h_l, w_l) of each layer.
    size:
        (H, W) of the fused map.
    """
    if not maps:
        raise CamError("fuse_layer_cams needs at least one map")
    fused = None
    for low_res in maps:
        up = upsample(torch.tanh(gamma * normalize_per_image(low_res)), size)
        fused = up if fused is None else torch.maximum(fused, up)
    return fused


def layer_cam_fused(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    layers: Sequence[str | nn.Module],
    target: Target = None,
    gamma: float = 2.0,
) -> CamResult:
    """LayerCAM on several layers, fused by :func:`fuse_layer_cams` into one map.

    One LayerCAM per layer (a forward and a backward pass each). The result's ``upsampled`` is
    the fused map, min-max normalised; ``low_res`` is the same fused map (at input resolution:
    the layers have different resolutions); ``weights`` is ``None``.
    """
    if not layers:
        raise CamError("layer_cam_fused needs at least one layer, e.g. ['blocks.2', 'bn2']")
    results = [layer_cam(model_or_loaded, x, target, layer) for layer in layers]
    fused = fuse_layer_cams([r.low_res for r in results], tuple(x.shape[-2:]), gamma)
    first = results[0]
    return CamResult(fused, normalize_per_image(fused), None, first.target, first.logits)


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
    target_idx = _targets(target, logits, loaded)
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
# Eigen-CAM: no gradients, no class
# ----------------------------------------------------------------------------------------------


def eigen_cam_image(
    activations: torch.Tensor, gradients: torch.Tensor | None = None, center: bool = False
) -> torch.Tensor:
    r"""The projection of the activations on their first principal direction, (N, h, w).

    Per image, the activations as a matrix :math:`O \in \mathbb{R}^{Z \times K}` (one row per
    position), its singular value decomposition :math:`O = U \Sigma V^\top`, and the projection
    :math:`O v_1` on the first right singular vector, reshaped to (h, w) (Muhammad & Yeasin
    2020, Sec. 3). ``center=True`` subtracts each channel's mean from :math:`O` first, as
    pytorch-grad-cam's ``get_2d_projection`` does.

    Sign convention: :math:`v_1` is defined only up to its sign (:math:`-v_1` is as good a
    singular vector), and the ReLU that follows keeps one half of the projection. Here the sign
    is fixed so that the projection has a non-negative inner product with the summed
    activations :math:`\sum_k A^k` (the positive side is where the layer is active);
    pytorch-grad-cam keeps whatever sign LAPACK returns. Computed in float64.
    """
    n, k, h, w = activations.shape
    o = activations.double().reshape(n, k, h * w).transpose(1, 2)  # (N, Z, K)
    if center:
        o = o - o.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(o, full_matrices=False)
    projection = (o @ vh[:, 0, :, None])[..., 0]  # (N, Z)
    total = activations.double().sum(dim=1).reshape(n, h * w)
    sign = torch.where((projection * total).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    return (sign * projection).reshape(n, h, w).to(activations.dtype)


def eigen_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    center: bool = False,
) -> CamResult:
    r"""Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020): the feature maps projected on their first principal component,

    .. math:: L = \mathrm{ReLU}(O\, v_1), \qquad O = U \Sigma V^\top,

    with :math:`O` the (positions x channels) matrix of the activations (see
    :func:`eigen_cam_image` for the sign convention and ``center``). No gradients, no weights
    and **no class**: the map is the same for every target (``target`` only fills
    ``CamResult.target``), so Eigen-CAM cannot be class-discriminative; on the cat-and-coffee
    image it draws one map for "cat" and "espresso" alike.

    Differences with pytorch-grad-cam's ``EigenCAM``: it centres the activations (our
    ``center=True``) and keeps LAPACK's sign of :math:`v_1`, so its map is ours or the ReLU of
    the other half of the projection, depending on the image.
    """

    def projection(activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return eigen_cam_image(activations, gradients, center=center)

    return class_activation_map(
        model_or_loaded, x, target, layer, cam_image=projection, gradients=False
    )


# ----------------------------------------------------------------------------------------------
# weights from forward passes: Score-CAM (masked inputs) and Ablation-CAM (ablated channels)
# ----------------------------------------------------------------------------------------------


def _channel_masks(act: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) activations -> (K, H, W) masks: upsampled, min-max normalised per channel.

    A constant channel becomes an all-zero mask (never 0/0).
    """
    return normalize_per_image(upsample(act, size))


def _first_copies(x: torch.Tensor) -> list[int]:
    """For each image, the index of its first identical copy in the batch (itself if none).

    The same image explained for several classes shares every forward pass: one pass scores
    every class.
    """
    return [next(j for j in range(i + 1) if torch.equal(x[j], x[i])) for i in range(len(x))]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CamError(f"batch_size must be a positive int, not {batch_size!r}")


def score_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 4,
    variant: Literal["probability", "softmax_logits"] = "probability",
    progress: bool | ProgressFn = True,
    baseline: BaselineName | torch.Tensor | None = None,
) -> CamResult:
    r"""Score-CAM: weights from the scores of the input masked by each feature map.

    Each feature map is upsampled to the input size and min-max normalised,
    :math:`H^k = s(\mathrm{Up}(A^k))` in [0, 1], and used as a mask on the input; then
    :math:`L^c = \mathrm{ReLU}(\sum_k w^c_k A^k)`. The weights have three published forms:

    * **arXiv v1** (Wang et al., arXiv:1910.01279v1, 2019, Sec. 3) and **the authors' code**
      (haofanwang/Score-CAM, ``cam/scorecam.py``: ``F.softmax(model(input * mask))``, the
      normalised input times the mask): the probability of the masked input,
      :math:`w^c_k = \mathrm{softmax}(f(X \circ H^k))_c`. Here ``variant="probability"``
      (the default). The authors' code also skips constant channels (weight 0).
    * **CVPR Workshops 2020** (Wang et al., Def. 2, the channel-wise increase of confidence, and
      Alg. 1): :math:`S^c_k = f^c(X \circ H^k) - f^c(X_b)`, the increase of the logit over a
      baseline image :math:`X_b`, then a softmax over the K channels,
      :math:`w^c_k = \mathrm{softmax}_k(S^c_k)`. Here ``variant="softmax_logits",
      baseline=...``.
    * **pytorch-grad-cam and torchcam**: :math:`w^c_k = \mathrm{softmax}_k(y^c(X \circ
      H^k))`, no baseline. Here ``variant="softmax_logits"``.

    A softmax over channels does not change when a constant is subtracted from every
    :math:`S^c_k`, so in Alg. 1 the baseline score :math:`f^c(X_b)` cancels and
    pytorch-grad-cam's variant is Alg. 1 (with the baseline's masking, below). For the
    probability variant it does not cancel: with ``baseline`` given, ``"probability"`` uses
    the increase :math:`w^c_k = p_c(X \circ H^k) - p_c(X_b)`, and
    :math:`\mathrm{ReLU}(\sum_k (w_k - c) A^k) \ne \mathrm{ReLU}(\sum_k w_k A^k)`: dropping
    :math:`f(X_b)` changes the map (by :math:`c \sum_k A^k`, which is not constant).

    A constant channel gives an all-zero mask, hence the input :math:`X_b` (``0 * x`` without
    a baseline); all such channels share one forward pass (exact: they see the same input).
    Identical images in the batch (the same image explained for several classes) share all
    their passes, since one pass scores every class. No gradients are computed; the masked
    inputs go through the model in batches of ``batch_size``.

    Parameters
    ----------
    batch_size:
        Masked images per forward pass; results do not depend on it. Measured for Lite0 on the
        course's 2-core CPU, idle, with the batches in ``channels_last`` memory format
        (:func:`~xai_helpers.inputs.forward_channels_last`; the model itself is not converted):
        4 was fastest, about 10 ms per image (99 images/s), against 11-14 ms at 8 and 16 ms at
        16. On a GPU pass a larger batch.
    variant:
        ``"probability"`` (default: arXiv v1 and the authors' code) or ``"softmax_logits"``.
    progress:
        ``True``: a text progress bar (:mod:`xai_helpers.progress`) over the forward passes'
        images; ``False``: none; a callable ``progress(done, total)``: called after every
        forward pass (a widget's bar).
    baseline:
        ``None`` (default): no baseline score is subtracted, and the mask multiplies the
        *normalised* input, :math:`X \circ H^k`, so a masked-out pixel becomes the dataset mean
        colour (as in the authors' code and pytorch-grad-cam). Otherwise the baseline image
        :math:`X_b` of Alg. 1, named as everywhere in the course (``"black"``,
        ``"dataset_mean"``, ``"image_mean"``, ``"blur"``; :mod:`xai_helpers.baselines`; a
        ``LoadedModel`` gives ``"black"`` its normalisation) or a tensor of normalised values:
        a masked-out pixel becomes :math:`X_b`, :math:`X_b + H^k \circ (X - X_b)`, and
        :math:`f(X_b)` (one more forward pass per image) is subtracted from every score.

    """
    if variant not in ("probability", "softmax_logits"):
        raise CamError(f"variant must be 'probability' or 'softmax_logits', not {variant!r}")
    _check_batch_size(batch_size)
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    size = tuple(x.shape[-2:])
    with restore_state(model), torch.no_grad():
        with capture(model, layer) as cap:
            logits = model(x)
            activations = cap.activations
        if activations is None or activations.dim() != 4:
            raise CamError(f"layer {cap.name!r} gave no 4-D feature maps; choose a conv layer")
        target_idx = _targets(target, logits, loaded)
        base = None
        if baseline is not None:
            norm = (loaded.mean, loaded.std) if loaded is not None else (None, None)
            base = baseline_batch(x, baseline, *norm, error=CamError)
        n, k = activations.shape[:2]
        flat = activations.flatten(2)
        varying = flat.amax(dim=2) > flat.amin(dim=2)  # (N, K); the others share a zero mask
        weights = torch.empty(n, k, dtype=x.dtype, device=x.device)
        first = _first_copies(x)
        unique = sorted(set(first))
        extra = [1 if base is not None else int(not bool(varying[i].all())) for i in range(n)]
        total = sum(int(varying[i].sum()) + extra[i] for i in unique)
        bar = Reporter(total, progress, desc="Score-CAM", unit="pass")

        def scores(batch: torch.Tensor) -> torch.Tensor:  # (B, C): every class at once
            out = forward_channels_last(model, batch)  # NHWC input: ~30 % less CPU time
            return torch.softmax(out, dim=1) if variant == "probability" else out

        try:
            for i in unique:
                rows = torch.empty(k, logits.shape[1], dtype=x.dtype, device=x.device)
                channels = varying[i].nonzero().flatten()
                for start in range(0, len(channels), batch_size):
                    idx = channels[start : start + batch_size]
                    masks = _channel_masks(activations[i, idx], size)[:, None]
                    if base is None:
                        masked = x[i : i + 1] * masks
                    else:
                        masked = base[i : i + 1] + masks * (x[i : i + 1] - base[i : i + 1])
                    rows[idx] = scores(masked).to(x.dtype)
                    bar.update(len(idx))
                if base is not None:  # S_k = f(X_b + H^k (X - X_b)) - f(X_b)
                    reference = scores(base[i : i + 1])[0].to(x.dtype)
                    bar.update(1)
                    rows[~varying[i]] = reference  # an all-zero mask shows X_b itself
                    rows = rows - reference
                elif not bool(varying[i].all()):
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


def _ablated_logits(
    model: nn.Module,
    layer: str | nn.Module,
    image: torch.Tensor,
    activations: torch.Tensor,
    channels: torch.Tensor,
    clean: torch.Tensor,
    state: dict[str, bool],
) -> torch.Tensor:
    """Logits with each of ``channels`` of ``layer``'s output set to zero, one row per channel.

    The layers below ``layer`` run once, on the one image; its output is then replaced by a
    batch of ablated copies for the layers above (the first row an unablated control). If the
    layers above cannot take the larger batch (they mix in a tensor from below) or the
    control does not reproduce the clean logits, the whole network runs on copies of the
    image instead, as pytorch-grad-cam always does; ``state`` remembers which way works.
    """
    b = len(channels)
    ablated = activations.expand(b, -1, -1, -1).clone()
    ablated[torch.arange(b, device=ablated.device), channels] = 0.0
    if state.get("shared", True):
        batch = torch.cat([activations[None], ablated])
        try:
            with substitute(model, layer, lambda _output: batch):
                out = model(image)
        except RuntimeError:
            out = None
        scale = 1.0 + float(clean.abs().max())
        if (
            out is not None
            and out.shape == (b + 1, clean.shape[0])
            and torch.allclose(out[0], clean, rtol=1e-4, atol=1e-4 * scale)
        ):
            state["shared"] = True
            return out[1:]
        state["shared"] = False
    with substitute(model, layer, lambda _output: ablated):
        return model(image.expand(b, -1, -1, -1))


def ablation_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 64,
    progress: bool | ProgressFn = True,
) -> CamResult:
    r"""Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization", WACV 2020): the weight of a channel
    is the relative drop of the class score when that channel is removed,

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c}, \qquad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big),

    with :math:`y^c_k` the logit when :math:`A^k` is set to zero (one forward pass of the
    layers above per channel, batched ``batch_size`` at a time). A channel that is already
    zero everywhere changes nothing: its weight is 0 without a pass. For a negative
    :math:`y^c` the weights change sign, as the formula says.

    Cost: the layers *below* the layer run once per batch of channels, on one image, and the
    ablated copies go only through the layers above (for the last layer, the pooling and the
    classifier): much cheaper than pytorch-grad-cam's ``AblationCAM``, which runs the whole
    network on every copy. A control row checks that this reproduces the clean logits; a
    network whose upper layers mix in tensors from below falls back to whole-network passes.

    Differences with pytorch-grad-cam: it sets an ablated channel to 0 only when the smallest
    activation of its batch is 0 (true after a ReLU, as on every layer the course uses) and to
    that minimum minus :math:`10^7` otherwise; here it is always 0, as in the paper.

    ``progress`` is as for :func:`score_cam` (over the ablated channels).
    """
    _check_batch_size(batch_size)
    model, layer, loaded = _unpack(model_or_loaded, layer)
    x = _check_input(x, model)
    with restore_state(model), torch.no_grad():
        with capture(model, layer) as cap:
            logits = model(x)
            activations = cap.activations
        if activations is None or activations.dim() != 4:
            raise CamError(f"layer {cap.name!r} gave no 4-D feature maps; choose a conv layer")
        target_idx = _targets(target, logits, loaded)
        n, k = activations.shape[:2]
        live = activations.flatten(2).ne(0).any(dim=2)  # (N, K)
        first = _first_copies(x)
        unique = sorted(set(first))
        bar = Reporter(
            sum(int(live[i].sum()) for i in unique), progress, desc="Ablation-CAM", unit="pass"
        )
        weights = torch.empty(n, k, dtype=x.dtype, device=x.device)
        state: dict[str, bool] = {}
        try:
            for i in unique:
                rows = logits[i].expand(k, -1).clone()  # a zero channel: the clean scores
                channels = live[i].nonzero().flatten()
                for start in range(0, len(channels), batch_size):
                    idx = channels[start : start + batch_size]
                    rows[idx] = _ablated_logits(
                        model, cap.name, x[i : i + 1], activations[i], idx, logits[i], state
                    ).to(x.dtype)
                    bar.update(len(idx))
                for j in range(n):
                    if first[j] == i:
                        y = logits[j, target_idx[j]]
                        weights[j] = (y - rows[:, target_idx[j]]) / y
        finally:
            bar.close()
    return _finish(activations, weights, target_idx, logits, tuple(x.shape[-2:]))
