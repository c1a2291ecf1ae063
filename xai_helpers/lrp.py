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

Each rule is computed with the "four-line gradient trick" (Sec. 10.2.2): forward with the
:math:`\rho`-weights, divide the upper relevance by the result, take the gradient, multiply by
the input. Activations (ReLU, ReLU6) pass relevance through unchanged; pooling layers distribute
it in proportion to their inputs (max-pooling as if it were average pooling, as Montavon et al.'s
VGG16 tutorial does); residual additions split it in proportion to the two summands; BatchNorm is
first folded into the preceding convolution ("canonization"), which leaves the function unchanged.

How the model is read: the model given to :func:`lrp` is never modified. A :class:`LrpNetwork`
is built beside it: a flat list of steps whose weights are new tensors (BatchNorm folded in) or
the model's own tensors, read without being written. Supported: ``nn.Sequential`` stacks of
``Conv2d``/``Linear``/``BatchNorm2d``/``ReLU``/``ReLU6``/pooling/``Flatten``/``Dropout``,
torchvision ``VGG`` and ``ResNet`` (``BasicBlock``, ``Bottleneck``) and timm's EfficientNet-Lite
(``DepthwiseSeparableConv``, ``InvertedResidual``). Every call checks that the rebuilt network
reproduces the model's logits, so an unsupported detail fails loudly instead of explaining the
wrong function.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .models import LoadedModel

__all__ = [
    "COMPOSITES",
    "Composite",
    "Epsilon",
    "Gamma",
    "LrpError",
    "LrpNetwork",
    "LrpResult",
    "Rule",
    "ZBox",
    "build_network",
    "dense_to_conv",
    "fold_batchnorm",
    "lrp",
    "pixel_bounds",
    "vgg_to_fully_convolutional",
]

# A layer's affine map with its parameters passed in: f(x, weight, bias) -> z.
AffineForward = Callable[[Tensor, Tensor, Tensor], Tensor]


class LrpError(ValueError):
    """LRP was asked for something it cannot do: an unknown layer, rule, target or input."""


# --------------------------------------------------------------------------------------------
# rules: the generic rule with a choice of rho and epsilon, computed with the gradient trick
# --------------------------------------------------------------------------------------------


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    r"""Add :math:`\epsilon` away from zero: :math:`z + \epsilon\,\mathrm{sign}(z)`, sign(0) = +1.

    Pushing the denominator *away* from zero (instead of adding a plain :math:`+\epsilon`) keeps
    a negative :math:`z_k` from being pushed through zero, as Bach et al. 2015 do for their
    epsilon-stabilised rule.
    """
    if epsilon == 0.0:
        return z
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z)


def safe_divide(relevance: Tensor, z: Tensor) -> Tensor:
    """``relevance / z`` with 0 where ``z == 0`` (such an output carries no relevance to share)."""
    return torch.where(z == 0, torch.zeros_like(z), relevance / torch.where(z == 0, 1.0, z))


class Rule(Protocol):
    """An LRP rule for an affine layer: maps the upper relevance ``r`` to the layer input."""

    def __call__(
        self, forward: AffineForward, weight: Tensor, bias: Tensor, a: Tensor, r: Tensor
    ) -> Tensor: ...


def _input_gradient(z: Tensor, s: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    # Step 3 of the trick: c_j = sum_k rho(w_jk) s_k is the gradient of sum_k z_k s_k, s constant.
    return torch.autograd.grad((z * s.detach()).sum(), list(inputs))


@dataclass(frozen=True)
class Epsilon:
    r"""LRP-:math:`\epsilon`; with ``epsilon=0`` it is LRP-0 (Montavon et al. 2019, Sec. 10.2.1).

    .. math::

        R_j = \sum_k \frac{a_j w_{jk}}{\epsilon\,\mathrm{sign}(z_k) + z_k} R_k,
        \qquad z_k = \sum_{0,j} a_j w_{jk} .

    The bias :math:`w_{0k}` takes part in :math:`z_k` but keeps its share: relevance it absorbs
    (and relevance the :math:`\epsilon` absorbs) is lost to the layers below.
    """

    epsilon: float = 0.0

    @property
    def name(self) -> str:
        return "LRP-0" if self.epsilon == 0 else f"LRP-eps({self.epsilon:g})"

    def __call__(
        self, forward: AffineForward, weight: Tensor, bias: Tensor, a: Tensor, r: Tensor
    ) -> Tensor:
        a = a.detach().requires_grad_(True)
        z = forward(a, weight, bias)  # 1. forward
        s = safe_divide(r, stabilize(z, self.epsilon))  # 2. divide
        (c,) = _input_gradient(z, s, [a])  # 3. gradient
        return (a * c).detach()  # 4. multiply


@dataclass(frozen=True)
class Gamma:
    r"""LRP-:math:`\gamma` (Montavon et al. 2019, Sec. 10.2.1), generalised to inputs of any sign.

    For non-negative inputs and a positive output :math:`z_k` it is the rule of the paper,
    :math:`\rho(w) = w + \gamma w^+`:

    .. math::

        R_j = \sum_k \frac{a_j (w_{jk} + \gamma w_{jk}^+)}
                           {\sum_{0,j} a_j (w_{jk} + \gamma w_{jk}^+)} R_k .

    In general the contributions :math:`z_{jk} = a_j w_{jk}` that *agree in sign* with the
    output are amplified by :math:`1 + \gamma`: :math:`z_{jk} + \gamma z_{jk}^{+}` for
    :math:`z_k > 0` and :math:`z_{jk} + \gamma z_{jk}^{-}` for :math:`z_k < 0` (the bias counts as
    the contribution of a constant input 1). This is the generalised :math:`\gamma` of Andéol et
    al. 2021 (zennit's ``Gamma``); it matters in EfficientNet's linear bottlenecks, whose outputs
    are not rectified and whose inputs may be negative.
    """

    gamma: float = 0.25
    epsilon: float = 0.0

    @property
    def name(self) -> str:
        return f"LRP-gamma({self.gamma:g})"

    def __call__(
        self, forward: AffineForward, weight: Tensor, bias: Tensor, a: Tensor, r: Tensor
    ) -> Tensor:
        a = a.detach().requires_grad_(True)
        z0 = forward(a, weight, torch.zeros_like(bias))  # sum_j a_j w_jk
        b = bias.view((1, -1) + (1,) * (z0.dim() - 2))
        # the positive contributions, a+ w+ and a- w-; the rest of z0 is the negative ones
        pos = forward(a.clamp(min=0), weight.clamp(min=0), torch.zeros_like(bias))
        if bool((a < 0).any()):  # skipped after a ReLU: saves a pass in most layers
            pos = pos + forward(a.clamp(max=0), weight.clamp(max=0), torch.zeros_like(bias))
        z = z0 + b
        z_up = z + self.gamma * (pos + b.clamp(min=0))
        z_down = z + self.gamma * (z0 - pos + b.clamp(max=0))
        s_up = torch.where(z > 0, safe_divide(r, stabilize(z_up, self.epsilon)), 0.0)
        s_down = torch.where(z < 0, safe_divide(r, stabilize(z_down, self.epsilon)), 0.0)
        (c,) = torch.autograd.grad(
            (z_up * s_up.detach()).sum() + (z_down * s_down.detach()).sum(), [a]
        )
        return (a * c).detach()


@dataclass(frozen=True, eq=False)
class ZBox:
    r"""The :math:`z^{\mathcal{B}}` rule for the pixel layer (Montavon et al. 2019, Sec. 10.3.2).

    .. math::

        R_i = \sum_j \frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
                          {\sum_i x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-} R_j ,

    with :math:`l_i \le x_i \le h_i` the bounds of the (normalised) input: for pixels in [0, 1]
    normalised with ``mean`` and ``std``, :math:`l = -\mathrm{mean}/\mathrm{std}` and
    :math:`h = (1-\mathrm{mean})/\mathrm{std}` (see :func:`pixel_bounds`). ``low``/``high`` left
    ``None`` are filled in by :func:`lrp` from the model's normalisation or its ``bounds``.
    (The biases cancel: :math:`b - b^+ - b^- = 0`.)
    """

    low: Tensor | float | None = None
    high: Tensor | float | None = None

    @property
    def name(self) -> str:
        return "z^B"

    def __call__(
        self, forward: AffineForward, weight: Tensor, bias: Tensor, a: Tensor, r: Tensor
    ) -> Tensor:
        if self.low is None or self.high is None:
            raise LrpError(
                "the z^B rule needs input bounds; pass bounds=(low, high) to lrp() "
                "or use a LoadedModel, whose normalisation gives them"
            )
        a = a.detach().requires_grad_(True)
        low = torch.as_tensor(self.low).to(a).expand_as(a).clone().requires_grad_(True)
        high = torch.as_tensor(self.high).to(a).expand_as(a).clone().requires_grad_(True)
        z = (
            forward(a, weight, bias)
            - forward(low, weight.clamp(min=0), bias.clamp(min=0))
            - forward(high, weight.clamp(max=0), bias.clamp(max=0))
        )
        s = safe_divide(r, z)
        c, c_low, c_high = _input_gradient(z, s, [a, low, high])
        # low and high enter z with a minus sign, which their gradients already carry
        return (a * c + low * c_low + high * c_high).detach()


def pixel_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    r"""Bounds of normalised pixels in [0, 1]: :math:`l = -\mu/\sigma`, :math:`h = (1-\mu)/\sigma`.

    Returned with shape (1, C, 1, 1), ready to broadcast against a batch.
    """
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


# --------------------------------------------------------------------------------------------
# composites: which rule at which depth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composite:
    """A rule per depth (Montavon et al. 2019, Sec. 10.3).

    The affine layers are split into the *head* (those after the last pooling step: the
    classifier) and the *feature* layers before it. The first feature layer (the one that sees
    pixels) gets ``first``; the remaining feature layers are halved in order: the lower half
    gets ``lower``, the upper half ``middle``; the head gets ``top``. For VGG16 this is exactly
    the split of Montavon et al.'s tutorial: z^B on conv1_1, gamma on conv1_2..conv3_3, epsilon
    on conv4_1..conv5_3, LRP-0 on the three dense layers.
    """

    first: Rule
    lower: Rule
    middle: Rule
    top: Rule

    def assign(self, features: Sequence[str], head: Sequence[str]) -> dict[str, Rule]:
        """Map layer names (forward order) to rules."""
        rules: dict[str, Rule] = {}
        rest = list(features[1:])
        n_lower = (len(rest) + 1) // 2
        if features:
            rules[features[0]] = self.first
        for i, name in enumerate(rest):
            rules[name] = self.lower if i < n_lower else self.middle
        for name in head:
            rules[name] = self.top
        return rules


COMPOSITES: dict[str, Composite] = {
    # Montavon et al. 2019 (Sec. 10.3): the recommended rule per depth.
    "epsilon-gamma-box": Composite(ZBox(), Gamma(0.25), Epsilon(0.25), Epsilon(0.0)),
    # one rule everywhere, for comparison
    "epsilon": Composite(Epsilon(0.25), Epsilon(0.25), Epsilon(0.25), Epsilon(0.25)),
    "lrp0": Composite(Epsilon(0.0), Epsilon(0.0), Epsilon(0.0), Epsilon(0.0)),
}


# --------------------------------------------------------------------------------------------
# the network as a list of steps, each with a forward and a relevance backward
# --------------------------------------------------------------------------------------------


class _Step:
    name: str

    def forward(self, x: Tensor) -> Tensor:  # stores what relevance() needs
        raise NotImplementedError

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        raise NotImplementedError

    def affine_names(self) -> list[str]:
        return []


class _Affine(_Step):
    """Conv2d or Linear (BatchNorm folded in): the only steps with a rule of their own."""

    def __init__(self, name: str, module: nn.Module, weight: Tensor, bias: Tensor) -> None:
        self.name, self.weight, self.bias = name, weight.detach(), bias.detach()
        self.flatten = isinstance(module, nn.Linear)
        self._fn = _affine_forward(module)
        self._input: Tensor | None = None

    def affine_forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self._fn(x.flatten(1) if self.flatten else x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        self._input = x
        return self.affine_forward(x, self.weight, self.bias)

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        assert self._input is not None
        rule = rules[self.name]
        out = rule(self.affine_forward, self.weight, self.bias, self._input, r)
        _record(sums, self.name, out)
        return out

    def affine_names(self) -> list[str]:
        return [self.name]


class _Activation(_Step):
    """ReLU / ReLU6: relevance passes through unchanged (Montavon et al. 2019, Sec. 10.2)."""

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor]) -> None:
        self.name, self._fn = name, fn

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        return r


class _Pool(_Step):
    r"""Parameter-free linear map: :math:`R_j = a_j \sum_k \partial_j z_k\, R_k / z_k`.

    ``relevance_fn`` replaces the forward map in the backward pass: average pooling for
    max-pooling (the VGG16 tutorial's choice; it conserves relevance and spreads it over the
    window instead of sending it all to the winner).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[Tensor], Tensor],
        relevance_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.name, self._fn = name, fn
        self._relevance_fn = relevance_fn or fn
        self._input: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self._input = x
        return self._fn(x)

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        assert self._input is not None
        a = self._input.detach().requires_grad_(True)
        z = self._relevance_fn(a)
        (c,) = _input_gradient(z, safe_divide(r, z), [a])
        out = (a * c).detach()
        _record(sums, self.name, out)
        return out


class _Flatten(_Step):
    def __init__(self, name: str) -> None:
        self.name = name
        self._shape: torch.Size | None = None

    def forward(self, x: Tensor) -> Tensor:
        self._shape = x.shape
        return x.flatten(1)

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        assert self._shape is not None
        return r.reshape(self._shape)


class _Residual(_Step):
    r"""``body(x) + skip(x)``: the sum splits relevance in proportion to its summands,

    .. math:: R_{\text{body}} = \frac{z_{\text{body}}}{z_{\text{body}} + z_{\text{skip}}} R,
              \qquad R_{\text{skip}} = \frac{z_{\text{skip}}}{z_{\text{body}} + z_{\text{skip}}} R,

    (LRP-0 applied to the addition), then each path propagates its share down to ``x``.
    """

    def __init__(self, name: str, body: list[_Step], skip: list[_Step]) -> None:
        self.name, self.body, self.skip = name, body, skip
        self._z: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        zb, zs = _run(self.body, x), _run(self.skip, x)
        self._z = (zb, zs)
        return zb + zs

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        assert self._z is not None
        zb, zs = self._z
        s = safe_divide(r, zb + zs)
        out = _back(self.body, zb * s, rules, None) + _back(self.skip, zs * s, rules, None)
        _record(sums, self.name, out)
        return out

    def affine_names(self) -> list[str]:
        return [n for step in self.body + self.skip for n in step.affine_names()]


def _run(steps: Sequence[_Step], x: Tensor) -> Tensor:
    for step in steps:
        x = step.forward(x)
    return x


def _back(
    steps: Sequence[_Step], r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
) -> Tensor:
    for step in reversed(steps):
        r = step.relevance(r, rules, sums)
    return r


def _record(sums: OrderedDict[str, Tensor] | None, name: str, r: Tensor) -> None:
    if sums is not None:
        sums[name] = r.detach().flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# canonization and model adapters
# --------------------------------------------------------------------------------------------


def fold_batchnorm(layer: nn.Module, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    r"""Weight and bias of ``bn(layer(x))`` as one affine layer (eval-mode BatchNorm).

    .. math::

        w' = w\,\frac{\beta_\gamma}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
        b' = (b - \mu)\,\frac{\beta_\gamma}{\sqrt{\sigma^2 + \varepsilon}} + \beta_\beta ,

    per output channel, with running mean :math:`\mu`, variance :math:`\sigma^2`, scale
    :math:`\beta_\gamma` and shift :math:`\beta_\beta`. New tensors; ``layer`` and ``bn`` are
    left untouched. A layer without bias gets a zero one; ``bn=None`` just returns the layer's
    own parameters.
    """
    weight = layer.weight.detach()
    bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if bn is None:
        return weight, bias
    if bn.running_mean is None or bn.running_var is None:
        raise LrpError(f"BatchNorm {bn} tracks no running statistics, so it cannot be folded")
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.view(shape), (bias - bn.running_mean.detach()) * scale + shift


def _affine_forward(module: nn.Module) -> AffineForward:
    if isinstance(module, nn.Linear):
        return lambda x, w, b: F.linear(x, w, b)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise LrpError(f"{module}: only zero padding is supported")
        if type(module).__name__ == "Conv2dSame":  # timm's TensorFlow-style dynamic padding
            from timm.layers.conv2d_same import conv2d_same

            return lambda x, w, b: conv2d_same(
                x, w, b, module.stride, (0, 0), module.dilation, module.groups
            )
        return lambda x, w, b: F.conv2d(
            x, w, b, module.stride, module.padding, module.dilation, module.groups
        )
    raise LrpError(f"no affine map for {type(module).__name__}")


def _activation(name: str, module: nn.Module) -> _Step | None:
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return None  # identity in eval mode
    if isinstance(module, nn.ReLU6):
        return _Activation(name, F.relu6)
    if isinstance(module, nn.ReLU):
        return _Activation(name, torch.relu)
    return _unsupported(name, module)


def _is_bn(module: nn.Module | None) -> bool:
    return isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)


def _unsupported(name: str, module: nn.Module) -> _Step:
    raise LrpError(
        f"layer {name!r} ({type(module).__name__}) is not supported by xai_helpers.lrp; "
        "supported are Conv2d, Linear, BatchNorm, ReLU, ReLU6, pooling, Flatten, Dropout and "
        "the blocks of VGG, ResNet and EfficientNet-Lite"
    )


def _batchnorm_act(name: str, bn: nn.Module) -> list[_Step]:
    # timm's BatchNormAct2d applies drop and act after the normalisation.
    steps: list[_Step] = []
    for part in ("drop", "act"):
        sub = getattr(bn, part, None)
        if sub is not None and (step := _activation(f"{name}.{part}", sub)) is not None:
            steps.append(step)
    return steps


def _steps(named: Sequence[tuple[str, nn.Module]]) -> list[_Step]:
    """Translate modules in forward order into steps, folding each BatchNorm into its layer."""
    steps: list[_Step] = []
    i = 0
    while i < len(named):
        name, module = named[i]
        nxt = named[i + 1][1] if i + 1 < len(named) else None
        if isinstance(module, nn.Conv2d | nn.Linear):
            bn = nxt if _is_bn(nxt) else None
            weight, bias = fold_batchnorm(module, bn)  # type: ignore[arg-type]
            steps.append(_Affine(name, module, weight, bias))
            if bn is not None:
                steps += _batchnorm_act(named[i + 1][0], bn)
                i += 1
        elif _is_bn(module):
            raise LrpError(f"BatchNorm {name!r} does not follow a Conv2d/Linear; cannot fold it")
        elif isinstance(module, nn.Sequential):
            steps += _steps([(f"{name}.{n}", m) for n, m in module.named_children()])
        elif isinstance(module, nn.MaxPool2d):
            steps.append(_Pool(name, module, _avg_like(module)))
        elif isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            steps.append(_Pool(name, module))
        elif type(module).__name__ == "SelectAdaptivePool2d":  # timm's global pool (+ flatten)
            if getattr(module, "pool_type", "avg") != "avg":
                raise LrpError(f"{name!r}: only average global pooling is supported")
            steps.append(_Pool(name, module))
        elif isinstance(module, nn.Flatten):
            steps.append(_Flatten(name))
        elif type(module).__name__ in ("DepthwiseSeparableConv", "InvertedResidual"):
            steps += _timm_block(name, module)
        elif type(module).__name__ in ("BasicBlock", "Bottleneck"):
            steps += _resnet_block(name, module)
        elif (step := _activation(name, module)) is not None:
            steps.append(step)
        i += 1
    return steps


def _avg_like(pool: nn.MaxPool2d) -> Callable[[Tensor], Tensor]:
    if pool.dilation not in (1, (1, 1)):
        raise LrpError("dilated max-pooling is not supported")
    return lambda x: F.avg_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, count_include_pad=True
    )


def _timm_block(name: str, block: nn.Module) -> list[_Step]:
    # Forward order from timm's _efficientnet_blocks.py (conv_s2d is None for these models).
    if getattr(block, "conv_s2d", None) is not None:
        raise LrpError(f"{name!r}: space-to-depth blocks are not supported")
    for part in ("aa", "se"):
        if not isinstance(getattr(block, part, nn.Identity()), nn.Identity):
            raise LrpError(
                f"{name}.{part} is a {type(getattr(block, part)).__name__}; only the Lite "
                "variants (no squeeze-excitation) are supported"
            )
    if type(block).__name__ == "DepthwiseSeparableConv":
        parts = ["conv_dw", "bn1", "conv_pw", "bn2"]
    else:
        parts = ["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"]
    body = _steps([(f"{name}.{p}", getattr(block, p)) for p in parts])
    if not block.has_skip:
        return body
    return [_Residual(name, body, [])]  # drop_path is the identity in eval mode


def _resnet_block(name: str, block: nn.Module) -> list[_Step]:
    # torchvision: relu(bn_last(conv_last(...)) + downsample(x)); the ReLU module is reused.
    n = 3 if type(block).__name__ == "Bottleneck" else 2
    named: list[tuple[str, nn.Module]] = []
    for k in range(1, n + 1):
        named += [
            (f"{name}.conv{k}", getattr(block, f"conv{k}")),
            (f"{name}.bn{k}", getattr(block, f"bn{k}")),
        ]
        if k < n:
            named.append((f"{name}.relu", block.relu))
    skip = _steps([(f"{name}.downsample", block.downsample)]) if block.downsample else []
    return [_Residual(name, _steps(named), skip), _Activation(f"{name}.relu", torch.relu)]


def _top_level(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kind = type(model).__name__
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    if kind == "VGG":  # torch.flatten after avgpool: the first Linear flattens its input
        return [(n, getattr(model, n)) for n in ("features", "avgpool", "classifier")]
    if kind == "ResNet":
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return [(n, getattr(model, n)) for n in [*names, "avgpool", "fc"]]
    if kind == "EfficientNet" and hasattr(model, "conv_stem"):
        if float(getattr(model, "drop_rate", 0.0)) and model.training:
            raise LrpError("put the model in eval mode (model.eval()) before explaining it")
        names = ["conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier"]
        return [(n, getattr(model, n)) for n in names]
    raise LrpError(
        f"xai_helpers.lrp does not know the architecture {kind}; supported are nn.Sequential, "
        "torchvision VGG/ResNet and timm EfficientNet-Lite"
    )


@dataclass
class LrpNetwork:
    """The model rewritten for LRP: canonized steps (BatchNorm folded) with a relevance pass.

    Build it with :func:`build_network`; call it like the model to get the same logits.
    ``features`` and ``head`` list the affine layers (forward order) that a :class:`Composite`
    assigns rules to.
    """

    steps: list[_Step]
    features: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return _run(self.steps, x)

    def rules(self, composite: str | Composite = "epsilon-gamma-box") -> dict[str, Rule]:
        """The rule of every affine layer, by name, for ``composite``."""
        return _composite(composite).assign(self.features, self.head)

    def relevance(
        self, x: Tensor, r_out: Tensor, rules: dict[str, Rule], return_layers: bool = False
    ) -> tuple[Tensor, OrderedDict[str, Tensor] | None]:
        """Input relevance for output relevance ``r_out``; optionally the sum at every layer."""
        self(x)  # stores each step's input
        return self.backward(r_out, rules, return_layers)

    def backward(
        self, r_out: Tensor, rules: dict[str, Rule], return_layers: bool = False
    ) -> tuple[Tensor, OrderedDict[str, Tensor] | None]:
        """The relevance pass alone, for the input of the last call of this network."""
        sums: OrderedDict[str, Tensor] | None = OrderedDict() if return_layers else None
        if sums is not None:
            sums["output"] = r_out.detach().flatten(1).sum(1)
        with torch.enable_grad():
            r = _back(self.steps, r_out, rules, sums)
        return r.detach(), sums


def build_network(model: nn.Module) -> LrpNetwork:
    """Canonize ``model`` into an :class:`LrpNetwork` without modifying it.

    Raises :class:`LrpError` naming the first layer it cannot handle.
    """
    steps = _steps(_top_level(model))
    last_pool = max((i for i, s in enumerate(steps) if isinstance(s, _Pool)), default=-1)
    names = [n for s in steps for n in s.affine_names()]
    head = [n for s in steps[last_pool + 1 :] for n in s.affine_names()]
    if last_pool < 0 and names:
        head = names[-1:]
    features = [n for n in names if n not in set(head)]
    return LrpNetwork(steps, features, head)


def _composite(composite: str | Composite) -> Composite:
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise LrpError(
            f"unknown composite {composite!r}; choose one of {', '.join(COMPOSITES)} "
            "or pass a Composite(first, lower, middle, top)"
        )
    return COMPOSITES[composite]


# --------------------------------------------------------------------------------------------
# VGG16 as in the original material: dense layers as convolutions
# --------------------------------------------------------------------------------------------


def dense_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    r"""The ``Linear`` layer as a ``Conv2d`` over a (C, k, k) input: the same numbers reshaped.

    :math:`W \in \mathbb{R}^{m\times Ck^2}` becomes :math:`m` filters of shape (C, k, k);
    flattening is row-major (C, then rows, then columns), as ``torch.flatten`` does.
    """
    if linear.in_features != in_channels * kernel_size**2:
        raise LrpError(
            f"Linear has {linear.in_features} inputs, not {in_channels}x{kernel_size}x{kernel_size}"
        )
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=linear.bias is not None)
    conv = conv.to(linear.weight)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def vgg_to_fully_convolutional(vgg: nn.Module) -> nn.Sequential:
    """torchvision VGG with its classifier as convolutions (7x7, then 1x1, 1x1), plus Flatten.

    For a 224-pixel input it gives the same logits as ``vgg``. The new network holds copies of
    the weights; ``vgg`` is untouched.
    """
    dense = [m for m in vgg.classifier if isinstance(m, nn.Linear)]
    channels = dense[0].in_features // 49
    layers: list[nn.Module] = [*vgg.features, vgg.avgpool]
    sizes = [(channels, 7)] + [(d.in_features, 1) for d in dense[1:]]
    for k, (linear, (c, size)) in enumerate(zip(dense, sizes, strict=True)):
        layers.append(dense_to_conv(linear, c, size))
        if k < len(dense) - 1:
            layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    return nn.Sequential(*layers).eval()


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------


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
        (N, 3, H, W) preprocessed batch, on the model's device and dtype.
    target:
        ``None`` for each image's top-1 class, a class index or name (names need a
        LoadedModel), or a sequence of N of them.
    composite:
        ``"epsilon-gamma-box"`` (default; z^B / gamma / epsilon / LRP-0 by depth),
        ``"epsilon"``, ``"lrp0"``, or a :class:`Composite`.
    return_layers:
        Also return the relevance total at each layer (``layer_sums``).
    bounds:
        (low, high) of the normalised input for the z^B rule; default from the LoadedModel's
        normalisation (:func:`pixel_bounds`). Required for a plain module when z^B is used.

    Examples
    --------
    >>> lm = load_model()                                              # doctest: +SKIP
    >>> res = lrp(lm, lm.preprocess("data/chelsea.png"))               # doctest: +SKIP
    >>> res.relevance.shape                                            # doctest: +SKIP
    torch.Size([1, 224, 224])
    """
    model, class_index, norm = _unpack(model_or_loaded)
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise LrpError(f"x must be a (N, C, H, W) tensor, got {shape}; use x[None] for one image")
    if model.training:
        raise LrpError("the model is in training mode; call model.eval() first")
    param = next(model.parameters(), None)
    if param is not None and (param.dtype != x.dtype or param.device != x.device):
        raise LrpError(
            f"x is {x.dtype} on {x.device} but the model is {param.dtype} on {param.device}; "
            "move x with x.to(param)"
        )
    net = build_network(model)
    with torch.no_grad():
        logits = model(x)
    rebuilt = net(x)
    scale = logits.abs().max().clamp(min=1.0)
    if rebuilt.shape != logits.shape or (rebuilt - logits).abs().max() > 1e-3 * scale:
        raise LrpError(
            f"the canonized network does not reproduce {type(model).__name__}'s logits; "
            "its forward has a step xai_helpers.lrp does not know"
        )

    targets = _targets(target, logits, class_index)
    r_out = torch.zeros_like(logits)
    rows = torch.arange(len(targets), device=logits.device)
    r_out[rows, targets] = logits[rows, targets]

    rules = _with_bounds(net.rules(composite), bounds, norm)
    r_in, sums = net.backward(r_out, rules, return_layers)  # net(x) above stored the inputs
    return LrpResult(r_in.sum(1), r_in, targets, logits, sums)


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


def _targets(
    target: int | str | Sequence[int | str] | Tensor | None,
    logits: Tensor,
    class_index: Callable[[int | str], int] | None,
) -> Tensor:
    n, c = logits.shape

    def one(t: int | str) -> int:
        if isinstance(t, str):
            if class_index is None:
                raise LrpError("class names need a LoadedModel; pass the class index instead")
            return class_index(t)
        if isinstance(t, bool) or not 0 <= int(t) < c:
            raise LrpError(f"target {t!r} is not a class index in 0..{c - 1}")
        return int(t)

    if target is None:
        return logits.argmax(1)
    if isinstance(target, Tensor):
        target = target.tolist()  # type: ignore[assignment]
        if isinstance(target, int):
            target = [target] * n  # type: ignore[assignment]
    if isinstance(target, int | str):
        return torch.full((n,), one(target), dtype=torch.long, device=logits.device)
    values = [one(t) for t in target]  # type: ignore[union-attr]
    if len(values) != n:
        raise LrpError(f"got {len(values)} targets for a batch of {n}; give one per image")
    return torch.tensor(values, dtype=torch.long, device=logits.device)


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
