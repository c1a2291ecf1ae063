"""Model adapters: how each kind of module becomes LRP steps, registered by type.

What is supported is a table, :data:`ADAPTERS`: module type -> ``adapter(name, module)``, which
returns the module's :class:`~xai_helpers.lrp.network.Step` list. A module is looked up by its
type and then its base classes (``isinstance``, most specific first), never by a class-name
string. Built in:

* containers: ``nn.Sequential`` (and its subclasses) in order; torchvision ``VGG`` and
  ``ResNet`` and timm's ``EfficientNet`` (their forward order, written out);
* blocks: torchvision ``BasicBlock`` and ``Bottleneck``, timm's ``DepthwiseSeparableConv`` and
  ``InvertedResidual`` (EfficientNet-Lite: no squeeze-excitation), each a residual sum;
* layers: ``Conv2d`` and ``Linear`` (with a following BatchNorm folded in, see
  :func:`~xai_helpers.lrp.canonize.fold_batchnorm`; timm's ``Conv2dSame`` keeps its dynamic
  padding), ``ReLU``, ``ReLU6``, max/average/adaptive pooling, timm's ``SelectAdaptivePool2d``
  (average), ``Flatten``, ``Identity`` and ``Dropout`` (eval mode: nothing).

timm's types are registered when timm has been imported (a timm model implies it), so
importing this package does not import timm.

Anything else raises :class:`~xai_helpers.errors.LrpError` naming the module, its type and the
fix: :func:`register_adapter` with a function returning its steps. Every explanation also
checks that the steps reproduce the model's logits, so an adapter that misses a detail fails
loudly instead of explaining the wrong function.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..errors import LrpError
from .canonize import fold_batchnorm
from .network import Activation, Affine, Flatten, LrpNetwork, Pool, Residual, Step
from .rules import AffineForward

__all__ = [
    "ADAPTERS",
    "Adapter",
    "build_network",
    "register_adapter",
    "translate",
]

#: ``adapter(name, module) -> steps``: the LRP steps of one module, in forward order.
Adapter = Callable[[str, nn.Module], list[Step]]

#: Module type -> adapter; see the module docstring. Extend it with :func:`register_adapter`.
ADAPTERS: dict[type[nn.Module], Adapter] = {}

#: Module type -> its affine map with the parameters passed in, for Conv2d and Linear.
AFFINE_MAPS: dict[type[nn.Module], Callable[[nn.Module], AffineForward]] = {}


def register_adapter(cls: type[nn.Module], adapter: Adapter, replace: bool = False) -> Adapter:
    """Teach LRP a module type: ``adapter(name, module)`` returns its steps in forward order.

    Build the steps from :mod:`xai_helpers.lrp.network` (``Affine``, ``Activation``, ``Pool``,
    ``Flatten``, ``Residual``) or translate the module's parts with :func:`translate`, e.g. for
    a block ``relu(body(x) + x)``::

        register_adapter(MyBlock, lambda name, block: [
            Residual(name, translate([(f"{name}.body", block.body)]), []),
            Activation(f"{name}.relu", torch.relu),
        ])
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise LrpError(f"register_adapter takes an nn.Module subclass, not {cls!r}")
    if cls in ADAPTERS and not replace:
        raise LrpError(f"{cls.__name__} already has an adapter; pass replace=True to change it")
    ADAPTERS[cls] = adapter
    return adapter


def _resolve(module: nn.Module) -> tuple[str, Callable] | None:
    """The most specific entry for ``module``'s type: its class first, then its bases."""
    if "timm" in sys.modules:
        _add_timm_adapters()
    for cls in type(module).__mro__:
        if cls in ADAPTERS:
            return "steps", ADAPTERS[cls]
        if cls in AFFINE_MAPS:
            return "affine", AFFINE_MAPS[cls]
    return None


def _unsupported(name: str, module: nn.Module) -> LrpError:
    cls = type(module)
    what = f"layer {name!r}" if name else "the model"
    known = sorted({c.__name__ for c in ADAPTERS} | {c.__name__ for c in AFFINE_MAPS})
    return LrpError(
        f"{what} ({cls.__name__}, from {cls.__module__}) is not supported by xai_helpers.lrp; "
        f"register an adapter that returns its steps: xai_helpers.lrp.register_adapter("
        f"{cls.__name__}, fn) (see xai_helpers/lrp/adapters.py for the ResNet and "
        f"EfficientNet blocks). Supported: {', '.join(known)}"
    )


def _is_bn(module: nn.Module | None) -> bool:
    return isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d)


def translate(named: Sequence[tuple[str, nn.Module]]) -> list[Step]:
    """Translate modules in forward order into steps, folding each BatchNorm into its layer."""
    steps: list[Step] = []
    i = 0
    while i < len(named):
        name, module = named[i]
        nxt = named[i + 1][1] if i + 1 < len(named) else None
        entry = _resolve(module)
        if entry is not None and entry[0] == "affine":
            bn = nxt if _is_bn(nxt) else None
            weight, bias = fold_batchnorm(module, bn)  # type: ignore[arg-type]
            steps.append(Affine(name, entry[1](module), weight, bias, type(module)))
            if bn is not None:
                steps += _batchnorm_act(named[i + 1][0], bn)
                i += 1
        elif _is_bn(module):
            raise LrpError(f"BatchNorm {name!r} does not follow a Conv2d/Linear; cannot fold it")
        elif entry is None:
            raise _unsupported(name, module)
        else:
            steps += entry[1](name, module)
        i += 1
    return steps


def _children(name: str, module: nn.Module, parts: Sequence[str]) -> list[tuple[str, nn.Module]]:
    return [(f"{name}.{p}" if name else p, getattr(module, p)) for p in parts]


def _batchnorm_act(name: str, bn: nn.Module) -> list[Step]:
    # timm's BatchNormAct2d applies drop and act after the normalisation.
    parts = [p for p in ("drop", "act") if getattr(bn, p, None) is not None]
    return translate(_children(name, bn, parts))


def build_network(model: nn.Module) -> LrpNetwork:
    """Canonize ``model`` into an :class:`~xai_helpers.lrp.network.LrpNetwork` without
    modifying it.

    Raises :class:`~xai_helpers.errors.LrpError` naming the first module it cannot handle.
    """
    steps = translate([("", model)])
    last_pool = max((i for i, s in enumerate(steps) if isinstance(s, Pool)), default=-1)
    names = [n for s in steps for n in s.affine_names()]
    head = [n for s in steps[last_pool + 1 :] for n in s.affine_names()]
    if last_pool < 0 and names:
        head = names[-1:]
    features = [n for n in names if n not in set(head)]
    kinds = {k: v for s in steps for k, v in s.affine_kinds().items()}
    return LrpNetwork(steps, features, head, kinds, source=model)


# ----------------------------------------------------------------------------------------------
# the built-in table
# ----------------------------------------------------------------------------------------------


def _conv_map(conv: nn.Conv2d) -> AffineForward:
    if conv.padding_mode != "zeros":
        raise LrpError(f"{conv}: only zero padding is supported")
    return lambda x, w, b: F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


AFFINE_MAPS[nn.Linear] = lambda _linear: lambda x, w, b: F.linear(x, w, b)
AFFINE_MAPS[nn.Conv2d] = _conv_map


def _avg_like(pool: nn.MaxPool2d) -> Callable[[Tensor], Tensor]:
    if pool.dilation not in (1, (1, 1)):
        raise LrpError("dilated max-pooling is not supported")
    return lambda x: F.avg_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, count_include_pad=True
    )


def _sequence(name: str, module: nn.Module) -> list[Step]:
    return translate(_children(name, module, [n for n, _ in module.named_children()]))


def _in_order(*parts: str) -> Adapter:
    """A model whose forward runs these children in this order (and nothing else)."""
    return lambda name, model: translate(_children(name, model, parts))


def _resnet_block(name: str, block: nn.Module) -> list[Step]:
    # torchvision: relu(bn_last(conv_last(...)) + downsample(x)); the ReLU module is reused.
    n = 3 if isinstance(block, torchvision.models.resnet.Bottleneck) else 2
    named: list[tuple[str, nn.Module]] = []
    for k in range(1, n + 1):
        named += [
            (f"{name}.conv{k}", getattr(block, f"conv{k}")),
            (f"{name}.bn{k}", getattr(block, f"bn{k}")),
        ]
        if k < n:
            named.append((f"{name}.relu", block.relu))
    skip = translate([(f"{name}.downsample", block.downsample)]) if block.downsample else []
    return [Residual(name, translate(named), skip), Activation(f"{name}.relu", torch.relu)]


ADAPTERS.update(
    {
        nn.Sequential: _sequence,
        nn.Identity: lambda name, module: [],  # the identity
        nn.Dropout: lambda name, module: [],  # the identity in eval mode
        nn.ReLU: lambda name, module: [Activation(name, torch.relu)],
        nn.ReLU6: lambda name, module: [Activation(name, F.relu6)],
        nn.MaxPool2d: lambda name, module: [Pool(name, module, _avg_like(module))],
        nn.AvgPool2d: lambda name, module: [Pool(name, module)],
        nn.AdaptiveAvgPool2d: lambda name, module: [Pool(name, module)],
        nn.Flatten: lambda name, module: [Flatten(name)],
        # torch.flatten after avgpool: the first Linear flattens its input
        torchvision.models.VGG: _in_order("features", "avgpool", "classifier"),
        torchvision.models.ResNet: _in_order(
            "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
            "avgpool", "fc",
        ),
        torchvision.models.resnet.BasicBlock: _resnet_block,
        torchvision.models.resnet.Bottleneck: _resnet_block,
    }
)


@functools.cache
def _add_timm_adapters() -> None:
    """timm's types, registered once timm is imported (a timm model cannot exist before)."""
    from timm.layers import SelectAdaptivePool2d
    from timm.layers.conv2d_same import Conv2dSame, conv2d_same
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    from timm.models.efficientnet import EfficientNet

    def same_map(conv: nn.Conv2d) -> AffineForward:  # TensorFlow-style dynamic padding
        if conv.padding_mode != "zeros":
            raise LrpError(f"{conv}: only zero padding is supported")
        return lambda x, w, b: conv2d_same(x, w, b, conv.stride, (0, 0), conv.dilation, conv.groups)

    def global_pool(name: str, pool: nn.Module) -> list[Step]:  # global pool (+ flatten)
        if getattr(pool, "pool_type", "avg") != "avg":
            raise LrpError(f"{name!r}: only average global pooling is supported")
        return [Pool(name, pool)]

    def block(name: str, module: nn.Module) -> list[Step]:
        # Forward order from timm's _efficientnet_blocks.py (conv_s2d is None for these models).
        if getattr(module, "conv_s2d", None) is not None:
            raise LrpError(f"{name!r}: space-to-depth blocks are not supported")
        for part in ("aa", "se"):
            if not isinstance(getattr(module, part, nn.Identity()), nn.Identity):
                raise LrpError(
                    f"{name}.{part} is a {type(getattr(module, part)).__name__}; only the Lite "
                    "variants (no squeeze-excitation) are supported"
                )
        if isinstance(module, DepthwiseSeparableConv):
            parts = ["conv_dw", "bn1", "conv_pw", "bn2"]
        else:
            parts = ["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"]
        body = translate(_children(name, module, parts))
        if not module.has_skip:
            return body
        return [Residual(name, body, [])]  # drop_path is the identity in eval mode

    def efficientnet(name: str, model: nn.Module) -> list[Step]:
        if float(getattr(model, "drop_rate", 0.0)) and model.training:
            raise LrpError("put the model in eval mode (model.eval()) before explaining it")
        parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier")
        return translate(_children(name, model, parts))

    AFFINE_MAPS[Conv2dSame] = same_map
    ADAPTERS.update(
        {
            SelectAdaptivePool2d: global_pool,
            DepthwiseSeparableConv: block,
            InvertedResidual: block,
            EfficientNet: efficientnet,
        }
    )
