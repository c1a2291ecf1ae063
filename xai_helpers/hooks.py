"""Capture the activations and gradients of one layer, leaving the model exactly as it was found.

The whole CAM family needs two things from a forward/backward pass: the feature maps
:math:`A^k` that a chosen layer outputs, and (for the gradient methods) the gradients
:math:`\\partial y^c / \\partial A^k`. :func:`capture` gets both with a forward hook on the layer
plus a *tensor* hook on its output. A tensor hook receives the gradient with respect to the
output as it was when the layer produced it, even when a later in-place operation (the
``out += identity; relu_(out)`` of torchvision's ResNet blocks) modifies that tensor; a module
backward hook or ``torch.autograd.grad(score, output)`` would not.

Example
-------
>>> with capture(model, "layer4") as cap:           # doctest: +SKIP
...     logits = model(x.requires_grad_())
...     torch.autograd.grad(logits[:, 281].sum(), x)
>>> cap.activations.shape, cap.gradients.shape     # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "Capture",
    "LayerError",
    "PassCount",
    "capture",
    "count_hooks",
    "count_passes",
    "feature_map_layers",
    "resolve_layer",
    "record_pass",
    "restore_state",
    "substitute",
]


class LayerError(ValueError):
    """A target layer was asked for that the model does not have (or that is not a module)."""


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a layer by its dotted name (``"bn2"``, ``"layer4"``, ``"layer4.2.conv3"``) or module.

    Returns ``(name, module)``. An unknown name raises :class:`LayerError` listing the closest
    names and the model's top-level children, so the fix is one copy-paste away.
    """
    if isinstance(layer, str):
        try:  # a walk down the dotted path, not over all modules (hundreds in Lite0)
            return layer, model.get_submodule(layer)
        except AttributeError:
            pass  # unknown: the message below lists candidates
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise LayerError(
            f"the layer {type(layer).__name__} is not a submodule of this model; pass a module "
            "of the same model instance or its name from model.named_modules()"
        )
    if not isinstance(layer, str):
        raise LayerError(f"layer must be a name or an nn.Module, not {type(layer).__name__}")
    if layer in named:
        return layer, named[layer]
    names = [n for n in named if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
    top = [n for n, _ in model.named_children()]
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise LayerError(
        f"unknown layer {layer!r}; {hint}top-level layers: {', '.join(top[-8:])} "
        "(all names: [n for n, _ in model.named_modules()])"
    )


@dataclass
class Capture:
    """What :func:`capture` recorded during the last forward (and backward) pass of the layer.

    Attributes
    ----------
    name, module:
        The captured layer.
    output:
        The layer's output tensor itself (part of the autograd graph), from its last call.
    activations:
        A detached copy of ``output`` taken at forward time, (N, K, h, w): immune to later
        in-place operations.
    gradients:
        :math:`\\partial (\\text{what was differentiated}) / \\partial\\, \\text{output}`, same
        shape, filled in by the tensor hook during the backward pass; ``None`` before.
    """

    name: str
    module: nn.Module
    output: torch.Tensor | None = None
    activations: torch.Tensor | None = None
    gradients: torch.Tensor | None = None
    _tensor_handle: RemovableHandle | None = field(default=None, repr=False)


@contextmanager
def restore_state(
    model: nn.Module, eval_mode: bool = True, freeze: bool = False
) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode; restore every submodule's ``training`` flag after.

    With ``freeze=True`` every parameter's ``requires_grad`` is set to False for the block (no
    parameter then enters the autograd graph) and restored after. Without it the flags are not
    recorded (walking the parameters costs ~0.3 ms on Lite0, 2 % of a forward pass), so code
    inside must not change them. Restoration happens also when the block raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    try:
        if eval_mode and any(training for _, training in modes):
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield model
    finally:
        # Only the flags that changed are written back: Module.__setattr__ is slow, and a model
        # with hundreds of modules would pay ~1 ms per call for rewriting equal values.
        for m, training in modes:
            if m.training != training:
                m.training = training
        for p, requires_grad in grads:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)


@contextmanager
def capture(model: nn.Module, layer: str | nn.Module, as_leaf: bool = False) -> Iterator[Capture]:
    """Record the output of ``layer`` (and its gradient, when a backward pass runs) in a block.

    A forward hook stores the output; under grad mode it also registers a tensor hook on that
    output, which stores the gradient during backward. When the layer runs several times in one
    forward pass, the last call wins (only its output keeps a tensor hook). Every hook is removed
    on exit, also when the block raises; the model's mode and ``requires_grad`` flags are not
    touched.

    Parameters
    ----------
    model:
        Any ``nn.Module``.
    layer:
        Dotted name as in ``model.named_modules()`` or the module itself.
    as_leaf:
        Under grad mode, make the layer's output a leaf of the autograd graph: ``output`` becomes
        a detached tensor that requires grad, and the rest of the network gets a copy of it (so
        later in-place operations stay allowed and leave ``activations`` intact). A backward pass
        then stops at the layer: with frozen parameters and an input that requires no grad,
        nothing below the layer is recorded or differentiated, which is all Grad-CAM needs.
        Differentiate with respect to ``cap.output``; the gradients are the same as without
        ``as_leaf``.

    Yields
    ------
    Capture
        Filled in as the model runs.
    """
    name, module = resolve_layer(model, layer)
    cap = Capture(name=name, module=module)

    def store_gradient(grad: torch.Tensor) -> None:
        cap.gradients = grad.detach()

    def forward_hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                "choose a layer that outputs feature maps"
            )
        if cap._tensor_handle is not None:
            cap._tensor_handle.remove()
            cap._tensor_handle = None
        cap.gradients = None
        if as_leaf and torch.is_grad_enabled():
            leaf = output.detach().requires_grad_(True)
            cap.output, cap.activations = leaf, leaf.detach()  # the copy below is what changes
            cap._tensor_handle = leaf.register_hook(store_gradient)
            return leaf.clone()
        cap.output = output
        cap.activations = output.detach().clone()
        if output.requires_grad:
            cap._tensor_handle = output.register_hook(store_gradient)
        return None

    handle = module.register_forward_hook(forward_hook)
    try:
        yield cap
    finally:
        handle.remove()
        if cap._tensor_handle is not None:
            cap._tensor_handle.remove()
            cap._tensor_handle = None
        cap.output = None  # drop the graph


@contextmanager
def substitute(
    model: nn.Module, layer: str | nn.Module, value: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[str]:
    """Replace the output of ``layer`` by ``value(output)`` in a block (a forward hook).

    The layers above then compute on the substitute, which may hold more images than the
    input (Ablation-CAM runs the layers below once and the layers above on a batch of ablated
    copies). The hook is removed on exit, also when the block raises. Yields the layer's name.
    """
    name, module = resolve_layer(model, layer)

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                "choose a layer that outputs feature maps"
            )
        return value(output)

    handle = module.register_forward_hook(hook)
    try:
        yield name
    finally:
        handle.remove()


def feature_map_layers(
    model: nn.Module, x: torch.Tensor, max_depth: int = 2
) -> list[tuple[str, tuple[int, ...]]]:
    """The layers a CAM can be computed on: those whose output is one 4-D feature map.

    Runs ``model(x)`` once without gradients, with a forward hook on every module whose dotted
    name has at most ``max_depth`` parts (``"layer4"``, ``"blocks.6"``, ``"features.28"``), and
    returns ``(name, (K, h, w))`` for each module that ran exactly once and returned an (N, K, h, w)
    tensor with more than one pixel, the deepest first (identity and dropout layers, which only
    repeat their input, are left out). The hooks are removed and the modes restored, also on
    error.
    """
    skip = (nn.Identity, nn.Dropout, nn.Dropout2d)
    seen: dict[str, list[tuple[int, ...]]] = {}
    handles: list[RemovableHandle] = []

    def recorder(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            seen.setdefault(name, []).append(shape if len(shape) == 3 else ())

        return hook

    try:
        for name, module in model.named_modules():
            if name and name.count(".") < max_depth and not isinstance(module, skip):
                handles.append(module.register_forward_hook(recorder(name)))
        with restore_state(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    layers = [
        (name, calls[0])
        for name, calls in seen.items()
        if len(calls) == 1 and calls[0] and calls[0][1] * calls[0][2] > 1
    ]
    return layers[::-1]


def count_hooks(model: nn.Module) -> int:
    """Number of forward, pre-forward and backward hooks registered on all submodules."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


# ----------------------------------------------------------------------------------------------
# counting passes through a model, as they happen
# ----------------------------------------------------------------------------------------------


@dataclass
class PassCount:
    """Passes through one model while :func:`count_passes` is open.

    ``forward`` counts calls of the model's ``forward`` and ``images`` the images they carried
    (a batch of 32 is one pass of 32 images); ``backward`` counts backward passes through its
    output. Code that runs the network without calling the model (LRP's relevance pass over its
    canonized copy) reports its passes with :func:`record_pass`.
    """

    model: nn.Module
    forward: int = 0
    images: int = 0
    backward: int = 0

    def add(self, kind: Literal["forward", "backward"], images: int = 0) -> None:
        if kind == "forward":
            self.forward += 1
            self.images += images
        else:
            self.backward += 1


_COUNTERS: ContextVar[tuple[PassCount, ...]] = ContextVar("xai_helpers_pass_counters", default=())


def record_pass(model: nn.Module, kind: Literal["forward", "backward"], images: int = 0) -> None:
    """Report a pass through ``model`` that its own hooks cannot see (nothing when no one counts).

    LRP calls it for the forward and the relevance (backward) pass through the network it
    rebuilt from ``model``.
    """
    for counter in _COUNTERS.get():
        if counter.model is model:
            counter.add(kind, images)


@contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the forward and backward passes through ``model`` in a block, as they happen.

    A forward hook counts each call and its images; under grad mode it puts a tensor hook on
    the output, which counts a backward pass when the gradient flows through it. Passes
    reported with :func:`record_pass` count too. The hooks are removed on exit, also on error.
    """
    counter = PassCount(model)

    def on_forward(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        images = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else 0
        counter.add("forward", images)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda _grad: counter.add("backward"))

    handle = model.register_forward_hook(on_forward)
    token = _COUNTERS.set((*_COUNTERS.get(), counter))
    try:
        yield counter
    finally:
        _COUNTERS.reset(token)
        handle.remove()
