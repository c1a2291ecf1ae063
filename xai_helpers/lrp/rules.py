r"""LRP rules: the generic rule with a choice of :math:`\rho` and :math:`\epsilon`, computed with
the four-line gradient trick of Montavon et al. (2019, Sec. 10.2.2): forward with the
:math:`\rho`-weights, divide the upper relevance by the result, take the gradient, multiply by
the input.

A rule is any callable ``rule(forward, weight, bias, a, r) -> R`` (:class:`Rule`): ``forward``
is the layer's affine map with its parameters passed in, ``a`` the layer input, ``r`` the
relevance of its output, ``R`` the relevance of its input. :class:`Epsilon` (LRP-0 with
``epsilon=0``), :class:`Gamma` and :class:`ZBox` are the course's; a
:class:`~xai_helpers.lrp.composites.Composite` says which layer gets which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..errors import LrpError

__all__ = [
    "AffineForward",
    "Epsilon",
    "Gamma",
    "LrpError",
    "Rule",
    "ZBox",
    "pixel_bounds",
    "safe_divide",
    "stabilize",
]

# A layer's affine map with its parameters passed in: f(x, weight, bias) -> z.
AffineForward = Callable[[Tensor, Tensor, Tensor], Tensor]


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
    r"""LRP-:math:`\gamma` as the code runs it: the paper's rule generalised to inputs and
    outputs of any sign (Andéol et al. 2021; zennit's ``Gamma``).

    **The paper's rule** (Montavon et al. 2019, Sec. 10.2.1, stated for ReLU networks, whose
    inputs are :math:`a_j \ge 0`), :math:`\rho(w) = w + \gamma w^+` for every output:

    .. math::

        R_j = \sum_k \frac{a_j (w_{jk} + \gamma w_{jk}^+)}
                           {\sum_{0,j} a_j (w_{jk} + \gamma w_{jk}^+)} R_k .

    **The rule run here**: with the contributions :math:`z_{jk} = a_j w_{jk}` (the bias the
    contribution of a constant input 1) and :math:`z_k = \sum_{0,j} z_{jk}`, those that *agree
    in sign with the output* are amplified by :math:`1 + \gamma`,

    .. math::

        R_j = \sum_{k: z_k > 0} \frac{z_{jk} + \gamma z_{jk}^+}
                                      {\sum_{0,j} (z_{jk} + \gamma z_{jk}^+)} R_k
            + \sum_{k: z_k < 0} \frac{z_{jk} + \gamma z_{jk}^-}
                                      {\sum_{0,j} (z_{jk} + \gamma z_{jk}^-)} R_k .

    **Where they differ**, exactly:

    * :math:`a_j \ge 0` and :math:`z_k > 0`: :math:`z_{jk}^+ = a_j w_{jk}^+`, the same rule.
    * an input :math:`a_j < 0` (EfficientNet's linear bottlenecks are not rectified, so the
      next block's first convolution sees both signs): the paper amplifies
      :math:`a_j w_{jk}^+`, a *negative* contribution; here the positive one,
      :math:`a_j^- w_{jk}^-`, is amplified.
    * an output :math:`z_k < 0`: the paper still amplifies the positive contributions, which
      oppose the output, and its denominator can cross zero; here the negative ones are, and
      the denominator keeps the sign of :math:`z_k` with :math:`|\cdot| \ge |z_k|`.
    * :math:`z_k = 0`: no relevance passes through that output here.

    ``epsilon`` (default 0) is added to the denominators away from zero, as in
    :class:`Epsilon`. ``tests/test_lrp.py`` checks both forms against explicit sums.
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
