r"""Layer-wise Relevance Propagation (LRP) for the course's CNNs: :func:`lrp`.

LRP (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation", PLOS ONE 2015) explains one output score :math:`f_c(x)` by sending it
backwards through the network, layer by layer, so that each layer's relevance sums to (almost)
the same total. Every rule used here is a case of the generic rule of Montavon et al., "Layer-Wise
Relevance Propagation: An Overview" (in *Explainable AI*, LNCS 11700, 2019, Sec. 10.2.2):

.. math::

    R_j = \sum_k \frac{a_j\,\rho(w_{jk})}{\epsilon + \sum_{0,j} a_j\,\rho(w_{jk})}\,R_k ,

with :math:`j` the inputs and :math:`k` the outputs of an affine layer (index 0 the bias), and a
choice of the weight map :math:`\rho` and the increment :math:`\epsilon`:

====================  ==========================  ===========================
rule                  :math:`\rho(w)`             :math:`\epsilon`
====================  ==========================  ===========================
LRP-0                 :math:`w`                   0
LRP-:math:`\epsilon`  :math:`w`                   :math:`\epsilon > 0`
LRP-:math:`\gamma`    :math:`w + \gamma w^+`      0 (or small)
====================  ==========================  ===========================

(LRP-:math:`\gamma` as the code runs it is generalised to inputs and outputs of either sign;
:class:`Gamma` states exactly where it differs from this table's :math:`\rho`.)

Each rule is computed with the "four-line gradient trick" (Sec. 10.2.2): forward with the
:math:`\rho`-weights, divide the upper relevance by the result, take the gradient, multiply by
the input. Activations (ReLU, ReLU6) pass relevance through unchanged; pooling layers distribute
it in proportion to their inputs (max-pooling as if it were average pooling, as Montavon et al.'s
VGG16 tutorial does); residual additions split it in proportion to the two summands; BatchNorm is
first folded into the preceding convolution ("canonization"), which leaves the function unchanged.

How the model is read: the model given to :func:`lrp` is never modified. A
:class:`~xai_helpers.lrp.network.LrpNetwork` is built beside it: a flat list of steps whose
weights are new tensors (BatchNorm folded in) or the model's own tensors, read without being
written. Every call checks that the rebuilt network reproduces the model's logits, so an
unsupported detail fails loudly instead of explaining the wrong function.

The package, one module per part (everything is importable from ``xai_helpers.lrp``):

* :mod:`~xai_helpers.lrp.rules`: the rules (:class:`Epsilon`, :class:`Gamma`, :class:`ZBox`);
* :mod:`~xai_helpers.lrp.composites`: which rule each layer gets, by depth and by layer type,
  registered by name (:data:`COMPOSITES`, :func:`register_composite`);
* :mod:`~xai_helpers.lrp.network`: the steps and the relevance pass (:class:`LrpNetwork`);
* :mod:`~xai_helpers.lrp.adapters`: how each module type becomes steps, a table keyed by type
  (:data:`ADAPTERS`, :func:`register_adapter`; ``nn.Sequential`` stacks of
  ``Conv2d``/``Linear``/``BatchNorm``/``ReLU``/``ReLU6``/pooling/``Flatten``/``Dropout``,
  torchvision ``VGG`` and ``ResNet``, timm's EfficientNet-Lite); any other module raises
  :class:`LrpError` naming it and the fix;
* :mod:`~xai_helpers.lrp.canonize`: BatchNorm folding and VGG16's dense layers as convolutions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import LrpError
from ..inputs import check_batch, resolve_targets
from .adapters import ADAPTERS, build_network, register_adapter, translate
from .canonize import dense_to_conv, fold_batchnorm, vgg_to_fully_convolutional
from .composites import COMPOSITES, Composite, get_composite, register_composite
from .network import LrpNetwork, Step
from .rules import Epsilon, Gamma, Rule, ZBox, pixel_bounds

if TYPE_CHECKING:
    from ..models import LoadedModel

__all__ = [
    "ADAPTERS",
    "COMPOSITES",
    "Composite",
    "Epsilon",
    "Gamma",
    "LrpError",
    "LrpNetwork",
    "LrpResult",
    "Rule",
    "Step",
    "ZBox",
    "build_network",
    "dense_to_conv",
    "fold_batchnorm",
    "get_composite",
    "lrp",
    "pixel_bounds",
    "register_adapter",
    "register_composite",
    "translate",
    "vgg_to_fully_convolutional",
]


@dataclass
class LrpResult:
    """What :func:`lrp` returns.

    Attributes
    ----------
    relevance:
        (N, H, W) signed pixel relevance, summed over the colour channels.
    input_relevance:
        (N, 3, H, W) relevance of every input value.
    target:
        (N,) explained class per image.
    logits:
        (N, C) the model's output.
    layer_sums:
        With ``return_layers=True``: total relevance per image, (N,), at the output
        (``"output"``, the target logit) and at the input of each affine layer, pooling step and
        residual block, from the top down; the last entry is the pixel total. Else ``None``.
    """

    relevance: Tensor
    input_relevance: Tensor
    target: Tensor
    logits: Tensor
    layer_sums: OrderedDict[str, Tensor] | None = None


def lrp(
    model_or_loaded: nn.Module | LoadedModel,
    x: Tensor,
    target: int | str | Sequence[int | str] | Tensor | None = None,
    composite: str | Composite = "epsilon-gamma-box",
    return_layers: bool = False,
    bounds: tuple[Tensor | float, Tensor | float] | None = None,
    batch_size: int = 2,
) -> LrpResult:
    r"""Explain ``target`` by LRP: relevance :math:`R_i` of every input value.

    The output relevance is the target logit, :math:`R_k = f_c(x)\,[k = c]`; it is propagated
    down layer by layer with the rule ``composite`` picks for each layer (see
    :class:`Composite`), activations passing it through, pooling and residual sums splitting
    it in proportion to their inputs. Without biases and :math:`\epsilon` the total is conserved,
    :math:`\sum_i R_i = f_c(x)` (the conservation property of Bach et al. 2015).

    Parameters
    ----------
    model_or_loaded:
        A :class:`~xai_helpers.models.LoadedModel` or a supported ``nn.Module`` in eval mode
        (see the module docstring). It is not modified.
    x:
        (N, 3, H, W) preprocessed batch in the model's dtype (checked by
        :func:`xai_helpers.inputs.check_batch`; moved to the model's device).
    target:
        ``None`` for each image's top-1 class, a class index or name (names need a
        LoadedModel), or a sequence of N of them.
    composite:
        ``"epsilon-gamma-box"`` (default; z^B / gamma / epsilon / LRP-0 by depth),
        ``"epsilon"``, ``"lrp0"``, ``"epsilon-gamma-box-by-type"`` (by layer type, as zennit's
        ``EpsilonGammaBox``), any name in :data:`COMPOSITES`, or a :class:`Composite`.
    return_layers:
        Also return the relevance total at each layer (``layer_sums``).
    bounds:
        (low, high) of the normalised input for the z^B rule; default from the LoadedModel's
        normalisation (:func:`pixel_bounds`). Required for a plain module when z^B is used.
    batch_size:
        Images per pass through the rebuilt network; the result does not depend on it. The
        relevance pass keeps every layer's input, about 160 MB per 224 px image for Lite0, so
        the default of 2 bounds the memory of a large batch (4 images at once: 660 MB).

    Examples
    --------
    >>> lm = load_model()                                              # doctest: +SKIP
    >>> res = lrp(lm, lm.preprocess("data/chelsea.png"))               # doctest: +SKIP
    >>> res.relevance.shape                                            # doctest: +SKIP
    torch.Size([1, 224, 224])
    """
    model, class_index, norm = _unpack(model_or_loaded)
    x = check_batch(x, model, error=LrpError)
    if model.training:
        raise LrpError("the model is in training mode; call model.eval() first")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LrpError(f"batch_size must be a positive integer, got {batch_size!r}")
    net = build_network(model)
    with torch.no_grad():
        logits = model(x)
    targets = resolve_targets(target, logits, class_index, error=LrpError)
    rules = _with_bounds(net.rules(composite), bounds, norm)
    parts, part_sums = [], []
    for start in range(0, len(x), batch_size):
        chunk = slice(start, start + batch_size)
        r_in, sums = _relevance(net, model, x[chunk], logits[chunk], targets[chunk], rules,
                                return_layers)
        parts.append(r_in)
        part_sums.append(sums)
    r_in = torch.cat(parts)
    sums = None
    if return_layers:
        sums = OrderedDict((k, torch.cat([p[k] for p in part_sums])) for k in part_sums[0])
    return LrpResult(r_in.sum(1), r_in, targets, logits, sums)


def _relevance(
    net: LrpNetwork,
    model: nn.Module,
    x: Tensor,
    logits: Tensor,
    targets: Tensor,
    rules: dict[str, Rule],
    return_layers: bool,
) -> tuple[Tensor, OrderedDict[str, Tensor] | None]:
    """One chunk: the rebuilt network's forward pass (checked against the model's logits), then
    the relevance pass from the target logits."""
    rebuilt = net(x)
    scale = logits.abs().max().clamp(min=1.0)
    if rebuilt.shape != logits.shape or (rebuilt - logits).abs().max() > 1e-3 * scale:
        raise LrpError(
            f"the canonized network does not reproduce {type(model).__name__}'s logits; "
            "its forward has a step xai_helpers.lrp does not know"
        )
    r_out = torch.zeros_like(logits)
    rows = torch.arange(len(targets), device=logits.device)
    r_out[rows, targets] = logits[rows, targets]
    return net.backward(r_out, rules, return_layers)  # net(x) above stored the inputs


def _unpack(
    model_or_loaded: nn.Module | LoadedModel,
) -> tuple[nn.Module, Callable[[int | str], int] | None, tuple[Sequence[float], ...] | None]:
    if isinstance(model_or_loaded, nn.Module):
        return model_or_loaded, None, None
    model = getattr(model_or_loaded, "model", None)
    if not isinstance(model, nn.Module):
        raise LrpError(
            f"expected an nn.Module or a LoadedModel, got {type(model_or_loaded).__name__}"
        )
    loaded = model_or_loaded
    return model, loaded.class_index, (loaded.mean, loaded.std)


def _with_bounds(
    rules: dict[str, Rule],
    bounds: tuple[Tensor | float, Tensor | float] | None,
    norm: tuple[Sequence[float], ...] | None,
) -> dict[str, Rule]:
    if bounds is None and norm is not None:
        bounds = pixel_bounds(*norm)
    out: dict[str, Rule] = {}
    for name, rule in rules.items():
        if isinstance(rule, ZBox) and rule.low is None and bounds is not None:
            rule = ZBox(*bounds)
        out[name] = rule
    return out
