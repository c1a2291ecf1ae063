r"""The gradient family: pixel attributions from the gradient of the class score.

Notation: :math:`x \in \mathbb{R}^{C \times H \times W}` is the (normalised) input,
:math:`y^c(x)` the logit of class :math:`c`, :math:`\nabla y^c(x)` its gradient with respect to
the input pixels. Every method here returns an :class:`Attribution` whose ``attributions`` have
the shape of the input, (N, C, H, W); two reductions give one map per image:

* :func:`channel_sum`, the signed sum over colour channels (Gradient × Input, Integrated
  Gradients, Guided Backprop, Guided Grad-CAM; the LRP convention);
* :func:`channel_max_abs`, :math:`\max_c |a_c|` (Simonyan et al.'s saliency map, SmoothGrad).

All functions take a :class:`~xai_helpers.models.LoadedModel` or a plain ``nn.Module``, a batch
``x`` checked once by :func:`xai_helpers.inputs.check_batch`, and ``target`` (``None``: each
image's top-1 class). They leave the model as they found it: mode and ``requires_grad`` flags
restored, no parameter ``.grad`` written, no hook left behind, also when they raise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from .baselines import baseline_batch
from .cams import grad_cam
from .hooks import restore_state
from .inputs import Target, check_batch, resolve_targets, unpack_model
from .maps import upsample
from .models import LoadedModel
from .progress import ProgressFn, Reporter

__all__ = [
    "RULES",
    "Attribution",
    "GradientError",
    "channel_max_abs",
    "channel_sum",
    "gradient_x_input",
    "guided_backprop",
    "guided_grad_cam",
    "guided_relus",
    "integrated_gradients",
    "path_rule",
    "relu6_as_relu",
    "saliency",
    "smooth_grad",
]

Rule = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]
#: The quadrature rules of :func:`integrated_gradients` (captum's names).
RULES: tuple[str, ...] = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
#: The activation modules whose backward pass Guided Backprop modifies by default.
GUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


class GradientError(ValueError):
    """A gradient method was asked for something it cannot do; the message names the fix."""


@dataclass
class Attribution:
    r"""The output of every gradient method, for a batch of N images.

    Attributes
    ----------
    attributions:
        (N, C, H, W), the shape of the input, detached.
    target:
        (N,) the explained class of each image.
    logits:
        (N, classes) the logits of the unperturbed input.
    delta:
        Integrated Gradients only: the completeness error per image,
        :math:`\sum_i a_i - (y^c(x) - y^c(x'))`; ``None`` for the other methods.
    score_difference:
        Integrated Gradients only: :math:`y^c(x) - y^c(x')` per image.
    """

    attributions: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    delta: torch.Tensor | None = None
    score_difference: torch.Tensor | None = None


def channel_sum(attributions: torch.Tensor) -> torch.Tensor:
    r"""(N, C, H, W) to (N, H, W): :math:`\sum_c a_{c,ij}`, signed."""
    return attributions.sum(dim=1)


def channel_max_abs(attributions: torch.Tensor) -> torch.Tensor:
    r"""(N, C, H, W) to (N, H, W): :math:`\max_c |a_{c,ij}|` (Simonyan et al. 2014, Sec. 3.1)."""
    return attributions.abs().amax(dim=1)


# ----------------------------------------------------------------------------------------------
# the shared mechanism: one forward and one backward pass to the input
# ----------------------------------------------------------------------------------------------


def _unpack(model_or_loaded: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    return unpack_model(model_or_loaded, error=GradientError)


def _targets(target: Target, logits: torch.Tensor, loaded: LoadedModel | None) -> torch.Tensor:
    class_index = loaded.class_index if loaded is not None else None
    return resolve_targets(target, logits, class_index, error=GradientError)


def _gradient(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`\nabla_x y^{c_n}(x_n)` for every image of ``x`` (the model in eval mode, its
    parameters frozen); returns the gradient and the logits."""
    with restore_state(model, freeze=True), torch.enable_grad():
        xs = x.detach().requires_grad_(True)
        logits = model(xs)
        score = logits.gather(1, target[:, None].to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, xs)
    return grad.detach(), logits.detach()


def _first_pass(
    model_or_loaded: nn.Module | LoadedModel, x: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``x``, run it once with gradients; ``(x, gradient, logits, target)``."""
    model, loaded = _unpack(model_or_loaded)
    x = check_batch(x, model, error=GradientError).detach()
    with restore_state(model, freeze=True), torch.enable_grad():
        xs = x.requires_grad_(True)
        logits = model(xs)
        idx = _targets(target, logits, loaded)
        (grad,) = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), xs)
    return x.detach(), grad.detach(), logits.detach(), idx


# ----------------------------------------------------------------------------------------------
# saliency and gradient x input
# ----------------------------------------------------------------------------------------------


def saliency(
    model_or_loaded: nn.Module | LoadedModel, x: torch.Tensor, target: Target = None
) -> Attribution:
    r"""The vanilla gradient (Simonyan et al., "Deep Inside Convolutional Networks", ICLR
    Workshop 2014, Sec. 3.1).

    .. math:: a = \frac{\partial y^c}{\partial x}

    ``attributions`` is the signed gradient; the paper's saliency map is
    :math:`M_{ij} = \max_c |a_{c,ij}|`, :func:`channel_max_abs`.
    """
    x, grad, logits, idx = _first_pass(model_or_loaded, x, target)
    return Attribution(grad, idx, logits)


def gradient_x_input(
    model_or_loaded: nn.Module | LoadedModel, x: torch.Tensor, target: Target = None
) -> Attribution:
    r"""Gradient × Input (Shrikumar et al., "Learning Important Features Through Propagating
    Activation Differences", ICML 2017; Ancona et al., ICLR 2018).

    .. math:: a = x \odot \frac{\partial y^c}{\partial x}

    The input is the *normalised* tensor the network sees, so a pixel at the dataset mean
    gets zero.
    """
    x, grad, logits, idx = _first_pass(model_or_loaded, x, target)
    return Attribution(grad * x, idx, logits)


# ----------------------------------------------------------------------------------------------
# guided backpropagation and guided Grad-CAM
# ----------------------------------------------------------------------------------------------


class ReLU6AsReLU(nn.ReLU):
    """ReLU6 as a subclass of ``nn.ReLU``: the same function, recognised by captum's guided methods.

    captum's ``GuidedBackprop`` and ``GuidedGradCam`` hook ``isinstance(m, nn.ReLU)`` modules only,
    so on EfficientNet-Lite (ReLU6) they return the plain gradient.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.hardtanh(z, 0.0, 6.0)


def relu6_as_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU6`` replaced by :class:`ReLU6AsReLU`.

    The copy computes the same outputs; it exists to compare :func:`guided_backprop` with
    captum's on models with ReLU6 (the tests, the benchmark). ``model`` is left as it was.
    """
    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, name, ReLU6AsReLU())
    return twin


@contextmanager
def guided_relus(
    model: nn.Module, activations: Sequence[type[nn.Module]] = GUIDED_ACTIVATIONS
) -> Iterator[int]:
    r"""Make the backward pass of every ``activations`` module *guided* inside a block.

    A forward hook on each such module puts a tensor hook on its output that replaces the
    incoming gradient :math:`g` by :math:`\max(g, 0)`; the module's own backward then masks it
    by where its input was active (:math:`x > 0`, for ReLU6 :math:`0 < x < 6`). Together:
    :math:`\mathbb{1}[x > 0]\, \max(g, 0)`, Springenberg et al.'s rule. Yields the number of
    hooked modules. Every hook is removed on exit, also when the block raises.
    """
    kinds = tuple(activations)
    modules = [m for m in model.modules() if isinstance(m, kinds)]
    if not modules:
        names = ", ".join(k.__name__ for k in kinds)
        raise GradientError(
            f"the model has no {names} module; guided backprop modifies activation modules "
            "(functional calls such as F.relu cannot be hooked): pass activations=(...)"
        )

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: grad.clamp(min=0))

    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_hook(hook))
        yield len(modules)
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    activations: Sequence[type[nn.Module]] = GUIDED_ACTIVATIONS,
) -> Attribution:
    r"""Guided Backpropagation (Springenberg et al., "Striving for Simplicity: The All
    Convolutional Net", ICLR Workshop 2015, Sec. 3.4, Fig. 1).

    The gradient, except that at every ReLU only positive gradients flow back through active
    units:

    .. math:: R^{(l)} = \mathbb{1}\big[f^{(l)} > 0\big] \odot \mathbb{1}\big[R^{(l+1)} > 0\big]
       \odot R^{(l+1)}

    ``activations`` are the module types so treated (default ReLU and ReLU6: ReLU6 passes
    the gradient only where :math:`0 < x < 6`); see :func:`guided_relus`. captum's
    ``GuidedBackprop`` changes ``nn.ReLU`` only: on EfficientNet-Lite, whose activations are
    ReLU6, it returns the plain gradient.
    """
    model, _ = _unpack(model_or_loaded)
    with guided_relus(model, activations):
        return saliency(model_or_loaded, x, target)


def guided_grad_cam(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    layer: str | nn.Module | None = None,
    activations: Sequence[type[nn.Module]] = GUIDED_ACTIVATIONS,
) -> Attribution:
    r"""Guided Grad-CAM (Selvaraju et al., "Grad-CAM", ICCV 2017, Sec. 3): Guided
    Backpropagation times the Grad-CAM map, upsampled to the input, element by element,

    .. math:: a_{c,ij} = \mathrm{GB}_{c,ij} \cdot \mathrm{up}(L^c_{\text{Grad-CAM}})_{ij}.

    The Grad-CAM map is the un-normalised :math:`\mathrm{ReLU}(\sum_k w_k A^k)` of
    :func:`xai_helpers.cams.grad_cam` on ``layer`` (default the model's ``cam_layer``),
    upsampled bilinearly; captum's ``GuidedGradCam`` with ``interpolate_mode="bilinear"``
    computes the same.
    """
    cam = grad_cam(model_or_loaded, x, target, layer)
    guided = guided_backprop(model_or_loaded, x, cam.target, activations)
    up = upsample(cam.low_res, tuple(guided.attributions.shape[-2:]))
    return Attribution(guided.attributions * up[:, None], cam.target, cam.logits)


# ----------------------------------------------------------------------------------------------
# SmoothGrad
# ----------------------------------------------------------------------------------------------


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GradientError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def smooth_grad(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    noise_level: float = 0.15,
    n_samples: int = 25,
    seed: int = 0,
    batch_size: int = 4,
    progress: bool | ProgressFn = False,
) -> Attribution:
    r"""SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017, eq. 3).

    .. math:: \hat a(x) = \frac{1}{n}\sum_{k=1}^{n} \nabla y^c\big(x + \epsilon_k\big),
       \qquad \epsilon_k \sim \mathcal{N}(0, \sigma^2),
       \quad \sigma = \text{noise level} \cdot (x_{\max} - x_{\min})

    :math:`\sigma` is a fraction of each image's value range (the paper's 10-20 % work best).
    The noise comes from a generator seeded with ``seed`` (the result is the same on every run
    and device; it is drawn on the CPU); the ``n_samples`` noisy copies go through the model in
    batches of at most ``batch_size`` (4 by default: see :func:`integrated_gradients`). The
    target defaults to the clean image's top-1 class.
    Draw the map with :func:`channel_max_abs`.
    """
    n_samples = _check_positive("n_samples", n_samples)
    batch_size = _check_positive("batch_size", batch_size)
    if not noise_level >= 0:
        raise GradientError(
            f"noise_level must be >= 0 (a fraction of the range), got {noise_level}"
        )
    model, loaded = _unpack(model_or_loaded)
    x = check_batch(x, model, error=GradientError).detach()
    with restore_state(model), torch.no_grad():
        logits = model(x)
    idx = _targets(target, logits, loaded)
    sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    generator = torch.Generator().manual_seed(int(seed))
    total = torch.zeros_like(x)
    chunks = [min(batch_size, n_samples - s) for s in range(0, n_samples, batch_size)]
    with Reporter(len(x) * n_samples, progress, desc="SmoothGrad", unit="sample") as report:
        for i in range(len(x)):
            for b in chunks:
                noise = torch.randn((b, *x.shape[1:]), generator=generator).to(x.device)
                grad, _ = _gradient(model, x[i : i + 1] + sigma[i] * noise, idx[i].repeat(b))
                total[i] += grad.sum(dim=0)
                report.update(b)
    return Attribution(total / n_samples, idx, logits)


# ----------------------------------------------------------------------------------------------
# Integrated Gradients
# ----------------------------------------------------------------------------------------------


def path_rule(steps: int, rule: Rule = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Points :math:`\alpha_k \in [0, 1]` and weights :math:`w_k` of a quadrature rule for
    :math:`\int_0^1 f(\alpha)\, d\alpha \approx \sum_k w_k f(\alpha_k)` (float64).

    ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``: :math:`w_k = 1/m` at the left
    ends, right ends or midpoints of :math:`m` equal intervals; ``"riemann_trapezoid"``:
    :math:`m` equally spaced points from 0 to 1, the end points with half weight;
    ``"gausslegendre"``: the :math:`m`-point Gauss-Legendre rule (exact for polynomials of
    degree :math:`2m - 1`). The points and weights are captum's.
    """
    steps = _check_positive("steps", steps)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    k = torch.arange(steps, dtype=torch.float64)
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "riemann_left":
        return k / steps, weights
    if rule == "riemann_right":
        return (k + 1) / steps, weights
    if rule == "riemann_middle":
        return (k + 0.5) / steps, weights
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise GradientError("the trapezoid rule needs steps >= 2")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    raise GradientError(f"unknown rule {rule!r}; use one of {', '.join(map(repr, RULES))}")


def integrated_gradients(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    baseline: str | torch.Tensor = "black",
    steps: int = 32,
    rule: Rule = "gausslegendre",
    batch_size: int = 4,
    progress: bool | ProgressFn = False,
) -> Attribution:
    r"""Integrated Gradients (Sundararajan et al., "Axiomatic Attribution for Deep Networks",
    ICML 2017, eq. 1 and Sec. 5).

    .. math:: a_i = (x_i - x'_i) \int_0^1
       \frac{\partial y^c\big(x' + \alpha (x - x')\big)}{\partial x_i}\, d\alpha
       \approx (x_i - x'_i) \sum_{k=1}^{m} w_k\,
       \frac{\partial y^c\big(x' + \alpha_k (x - x')\big)}{\partial x_i}

    with the points and weights of :func:`path_rule` (``steps`` = :math:`m`). Completeness
    (Sec. 3, Prop. 1): :math:`\sum_i a_i = y^c(x) - y^c(x')`; the result's ``delta`` is the
    error of the approximation. The baseline :math:`x'` is a name of
    :data:`xai_helpers.baselines.BASELINES` (``"black"``, the paper's choice, needs a
    LoadedModel's normalisation) or a tensor. The :math:`N m` path points go through the model
    in batches of at most ``batch_size``. The default, 4, was the fastest for Lite0 on the
    course's 2-core CPU (1.15 s for 32 steps against 1.34 s at 8) and keeps the activations
    saved for the backward pass small (about 70 MB per image at 224 px).
    """
    batch_size = _check_positive("batch_size", batch_size)
    alphas, weights = path_rule(steps, rule)
    model, loaded = _unpack(model_or_loaded)
    x = check_batch(x, model, error=GradientError).detach()
    mean, std = (loaded.mean, loaded.std) if loaded is not None else (None, None)
    base = baseline_batch(x, baseline, mean, std, error=GradientError).detach()
    n = len(x)
    with restore_state(model), torch.no_grad():
        both = model(torch.cat([x, base]))
    logits = both[:n]
    idx = _targets(target, logits, loaded)
    scores = both.gather(1, idx.repeat(2)[:, None])[:, 0]
    alphas = alphas.to(x.device, x.dtype)
    weights = weights.to(x.device, x.dtype)
    total = torch.zeros_like(x)
    with Reporter(n * len(alphas), progress, desc="Integrated Gradients", unit="step") as report:
        for i in range(n):
            diff = x[i] - base[i]
            for s in range(0, len(alphas), batch_size):
                a = alphas[s : s + batch_size].view(-1, 1, 1, 1)
                grad, _ = _gradient(model, base[i] + a * diff, idx[i].repeat(len(a)))
                total[i] += (weights[s : s + batch_size].view(-1, 1, 1, 1) * grad).sum(dim=0)
                report.update(len(a))
    attributions = (x - base) * total
    difference = scores[:n] - scores[n:]
    delta = attributions.flatten(1).sum(dim=1) - difference
    return Attribution(attributions, idx, logits, delta=delta, score_difference=difference)


#: For the registry: the map each method's attributions are reduced to.
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "saliency": channel_max_abs,
    "smooth_grad": channel_max_abs,
    "gradient_x_input": channel_sum,
    "guided_backprop": channel_sum,
    "guided_grad_cam": channel_sum,
    "integrated_gradients": channel_sum,
}
