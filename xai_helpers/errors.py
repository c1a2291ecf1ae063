"""Error classes shared by several modules (each module re-exports its own).

Every error of the package is a ``ValueError`` whose message names the problem and the fix.
:class:`LrpError` is raised by every module of :mod:`xai_helpers.lrp`.
A box is used by the metrics and by the perturbations, so a :class:`BoxError` is both a
:class:`MetricError` and a :class:`PerturbationError`: ``except MetricError`` around a metric
still catches a malformed box.
"""

from __future__ import annotations

__all__ = ["BoxError", "LrpError", "MetricError", "PerturbationError"]


class LrpError(ValueError):
    """LRP was asked for something it cannot do: an unknown layer, rule, target or input."""


class MetricError(ValueError):
    """Inputs to a metric do not fit together; the message names the problem and the fix."""


class PerturbationError(ValueError):
    """A perturbation got an argument it cannot use; the message says which and what to pass."""


class BoxError(MetricError, PerturbationError):
    """A box is malformed, empty, or not annotated; the message names the fix."""
