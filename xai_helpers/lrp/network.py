"""The network as a list of steps, each with a forward and a relevance (backward) pass.

:func:`~xai_helpers.lrp.adapters.build_network` translates a model into an
:class:`LrpNetwork`: a flat list of :class:`Step` objects (affine layers with BatchNorm folded
in, activations, pooling, flattening, residual sums), whose weights are new tensors or the
model's own, read without being written. Calling the network reproduces the model's logits;
:meth:`LrpNetwork.backward` then sends relevance down through the same steps, each affine
layer with its rule (:mod:`xai_helpers.lrp.rules`) and the rest as described on each step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..hooks import record_pass
from .composites import Composite, get_composite
from .rules import AffineForward, Rule, safe_divide

__all__ = [
    "Activation",
    "Affine",
    "Flatten",
    "LrpNetwork",
    "Pool",
    "Residual",
    "Step",
    "back_steps",
    "run_steps",
]


def _input_gradient(z: Tensor, s: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    # Step 3 of the trick: c_j = sum_k rho(w_jk) s_k is the gradient of sum_k z_k s_k, s constant.
    return torch.autograd.grad((z * s.detach()).sum(), list(inputs))


class Step:
    """One step of an :class:`LrpNetwork`: a forward that stores what its relevance pass needs,
    and that relevance pass. Subclass it for a layer the built-in steps do not cover."""

    name: str

    def forward(self, x: Tensor) -> Tensor:  # stores what relevance() needs
        raise NotImplementedError

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        raise NotImplementedError

    def affine_names(self) -> list[str]:
        return []

    def affine_kinds(self) -> dict[str, type[nn.Module]]:
        return {}


class Affine(Step):
    """Conv2d or Linear (BatchNorm folded in): the only steps with a rule of their own.

    ``fn(x, weight, bias)`` is the layer's affine map, ``kind`` the module type a composite's
    ``by_type`` table matches; a ``Linear`` flattens its input first.
    """

    def __init__(
        self,
        name: str,
        fn: AffineForward,
        weight: Tensor,
        bias: Tensor,
        kind: type[nn.Module],
    ) -> None:
        self.name, self.weight, self.bias = name, weight.detach(), bias.detach()
        self.kind = kind
        self.flatten = issubclass(kind, nn.Linear)
        self._fn = fn
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

    def affine_kinds(self) -> dict[str, type[nn.Module]]:
        return {self.name: self.kind}


class Activation(Step):
    """ReLU / ReLU6: relevance passes through unchanged (Montavon et al. 2019, Sec. 10.2)."""

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor]) -> None:
        self.name, self._fn = name, fn

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        return r


class Pool(Step):
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


class Flatten(Step):
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


class Residual(Step):
    r"""``body(x) + skip(x)``: the sum splits relevance in proportion to its summands,

    .. math:: R_{\text{body}} = \frac{z_{\text{body}}}{z_{\text{body}} + z_{\text{skip}}} R,
              \qquad R_{\text{skip}} = \frac{z_{\text{skip}}}{z_{\text{body}} + z_{\text{skip}}} R,

    (LRP-0 applied to the addition), then each path propagates its share down to ``x``.
    """

    def __init__(self, name: str, body: list[Step], skip: list[Step]) -> None:
        self.name, self.body, self.skip = name, body, skip
        self._z: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        zb, zs = run_steps(self.body, x), run_steps(self.skip, x)
        self._z = (zb, zs)
        return zb + zs

    def relevance(
        self, r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
    ) -> Tensor:
        assert self._z is not None
        zb, zs = self._z
        s = safe_divide(r, zb + zs)
        body = back_steps(self.body, zb * s, rules, None)
        out = body + back_steps(self.skip, zs * s, rules, None)
        _record(sums, self.name, out)
        return out

    def affine_names(self) -> list[str]:
        return [n for step in self.body + self.skip for n in step.affine_names()]

    def affine_kinds(self) -> dict[str, type[nn.Module]]:
        return {k: v for step in self.body + self.skip for k, v in step.affine_kinds().items()}


def run_steps(steps: Sequence[Step], x: Tensor) -> Tensor:
    for step in steps:
        x = step.forward(x)
    return x


def back_steps(
    steps: Sequence[Step], r: Tensor, rules: dict[str, Rule], sums: OrderedDict[str, Tensor] | None
) -> Tensor:
    for step in reversed(steps):
        r = step.relevance(r, rules, sums)
    return r


def _record(sums: OrderedDict[str, Tensor] | None, name: str, r: Tensor) -> None:
    if sums is not None:
        sums[name] = r.detach().flatten(1).sum(1)


@dataclass
class LrpNetwork:
    """The model rewritten for LRP: canonized steps (BatchNorm folded) with a relevance pass.

    Build it with :func:`~xai_helpers.lrp.adapters.build_network`; call it like the model to
    get the same logits (and store each step's input), then :meth:`backward`. ``features`` and
    ``head`` list the affine layers (forward order) that a :class:`Composite` assigns rules to
    by depth, ``kinds`` their module types (for its ``by_type`` table). ``source`` is the model
    it was built from: its forward and relevance passes are reported as passes through that
    model (:func:`xai_helpers.hooks.record_pass`), so that cost measurements count them.
    """

    steps: list[Step]
    features: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    kinds: dict[str, type[nn.Module]] = field(default_factory=dict)
    source: nn.Module | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.source is not None:
            record_pass(self.source, "forward", x.shape[0])
        with torch.no_grad():
            return run_steps(self.steps, x)

    def rules(self, composite: str | Composite = "epsilon-gamma-box") -> dict[str, Rule]:
        """The rule of every affine layer, by name, for ``composite``."""
        return get_composite(composite).assign(self.features, self.head, self.kinds)

    def backward(
        self, r_out: Tensor, rules: dict[str, Rule], return_layers: bool = False
    ) -> tuple[Tensor, OrderedDict[str, Tensor] | None]:
        """The relevance pass for the input of the last call of this network.

        ``r_out`` is the relevance of the logits; returns the input relevance and, with
        ``return_layers``, the total relevance per image at the output and at the input of
        every affine layer, pooling step and residual block, from the top down.
        """
        if self.source is not None:
            record_pass(self.source, "backward", r_out.shape[0])
        sums: OrderedDict[str, Tensor] | None = OrderedDict() if return_layers else None
        if sums is not None:
            sums["output"] = r_out.detach().flatten(1).sum(1)
        with torch.enable_grad():
            r = back_steps(self.steps, r_out, rules, sums)
        return r.detach(), sums
