"""Composites: which rule each layer gets, by depth and by layer type, registered by name.

A :class:`Composite` assigns a rule to every affine layer of an
:class:`~xai_helpers.lrp.network.LrpNetwork` in three ways, the first that applies wins:

1. ``first``: the layer that sees the pixels (z^B there, because pixels are bounded);
2. ``by_type``: a table ``((layer type, rule), ...)``, matched with ``isinstance`` in order
   (zennit's layer-map composites, captum's layer -> rule table);
3. the depth rules ``lower``, ``middle``, ``top`` (Montavon et al. 2019, Sec. 10.3): the
   affine layers after the last pooling step are the *head* (``top``), the feature layers
   before it are halved in order (``lower``, then ``middle``).

Composites are registered by name in :data:`COMPOSITES` (:func:`register_composite`), so
``lrp(lm, x, composite="epsilon-gamma-box")`` and a user's own composite read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import LrpError
from .rules import Epsilon, Gamma, Rule, ZBox

__all__ = ["COMPOSITES", "Composite", "get_composite", "register_composite"]


@dataclass(frozen=True)
class Composite:
    """A rule per layer: ``first`` for the pixel layer, then ``by_type``, then the depth rules.

    With the depth rules alone, for VGG16 this is exactly the split of Montavon et al.'s
    tutorial: z^B on conv1_1, gamma on conv1_2..conv3_3, epsilon on conv4_1..conv5_3, LRP-0 on
    the three dense layers. A layer that no part of the composite covers is an error.
    """

    first: Rule | None = None
    lower: Rule | None = None
    middle: Rule | None = None
    top: Rule | None = None
    by_type: tuple[tuple[type[nn.Module], Rule], ...] = ()

    def assign(
        self,
        features: Sequence[str],
        head: Sequence[str],
        kinds: Mapping[str, type[nn.Module]] | None = None,
    ) -> dict[str, Rule]:
        """Map layer names (forward order) to rules; ``kinds`` gives each layer's module type."""
        kinds = kinds or {}
        rest = list(features[1:])
        n_lower = (len(rest) + 1) // 2
        depth: dict[str, Rule | None] = {}
        if features:
            depth[features[0]] = self.lower
        for i, name in enumerate(rest):
            depth[name] = self.lower if i < n_lower else self.middle
        for name in head:
            depth[name] = self.top
        rules: dict[str, Rule] = {}
        for name, by_depth in depth.items():
            rule = self.first if features and name == features[0] else None
            if rule is None and name in kinds:
                rule = next((r for t, r in self.by_type if issubclass(kinds[name], t)), None)
            rule = rule if rule is not None else by_depth
            if rule is None:
                kind = kinds[name].__name__ if name in kinds else "?"
                raise LrpError(
                    f"the composite has no rule for layer {name!r} ({kind}); give it a depth "
                    "rule (lower/middle/top) or a (type, rule) pair in by_type"
                )
            rules[name] = rule
        return rules


#: The registered composites, by name.
COMPOSITES: dict[str, Composite] = {}


def register_composite(name: str, composite: Composite, replace: bool = False) -> Composite:
    """Add ``composite`` to :data:`COMPOSITES` under ``name`` (``replace=True`` to overwrite)."""
    if not isinstance(composite, Composite):
        raise LrpError(f"register_composite takes a Composite, not {type(composite).__name__}")
    if name in COMPOSITES and not replace:
        raise LrpError(f"a composite named {name!r} exists; pass replace=True or another name")
    COMPOSITES[name] = composite
    return composite


def get_composite(composite: str | Composite) -> Composite:
    """The composite itself, or the one registered under that name."""
    if isinstance(composite, Composite):
        return composite
    if composite not in COMPOSITES:
        raise LrpError(
            f"unknown composite {composite!r}; choose one of {', '.join(COMPOSITES)} "
            "or pass a Composite(first, lower, middle, top, by_type)"
        )
    return COMPOSITES[composite]


# Montavon et al. 2019 (Sec. 10.3): the recommended rule per depth.
register_composite(
    "epsilon-gamma-box",
    Composite(first=ZBox(), lower=Gamma(0.25), middle=Epsilon(0.25), top=Epsilon(0.0)),
)
# one rule everywhere, for comparison
register_composite("epsilon", Composite(*[Epsilon(0.25)] * 4))
register_composite("lrp0", Composite(*[Epsilon(0.0)] * 4))
# By layer type, as zennit's EpsilonGammaBox (its defaults): z^B on the pixel layer, gamma on
# every other convolution, epsilon = 1e-6 on the dense layers.
register_composite(
    "epsilon-gamma-box-by-type",
    Composite(first=ZBox(), by_type=((nn.Conv2d, Gamma(0.25)), (nn.Linear, Epsilon(1e-6)))),
)
