"""zennit configured to compute exactly what ``xai_helpers.lrp`` computes: the independent
reference for notebook 05, ``tests/test_lrp.py`` and ``benchmarks/bench_methods.py``.

zennit (Anders et al. 2021) is a development dependency (``pip install -e ".[dev]"``); this
module imports it, ``xai_helpers.lrp`` itself does not.

:func:`zennit_ready` prepares any of the course's three architectures (VGG16, ResNet50,
EfficientNet-Lite); :func:`zennit_lrp` then explains a batch with the rules of our composite;
:func:`zennit_relevance` does both for a :class:`~xai_helpers.models.LoadedModel`.

What zennit needs to match our rules layer by layer: max-pooling treated as average pooling in the
relevance pass (a small hook: zennit's default gives all relevance to the maximum), its ``Pass``
rule for ReLU6, a ``Sum`` module for timm's residual additions, and BatchNorm's epsilon moved into
the running variance before merging (zennit 0.5.1 leaves a BatchNorm with variance 1 and the
original epsilon behind, which is not exactly the identity).
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, MergeBatchNorm
from zennit.composites import NameMapComposite
from zennit.core import Hook
from zennit.layer import Sum
from zennit.rules import Epsilon as ZEpsilon
from zennit.rules import Gamma as ZGamma
from zennit.rules import Norm as ZNorm
from zennit.rules import Pass as ZPass
from zennit.rules import ZBox as ZZBox
from zennit.torchvision import ResNetCanonizer

from xai_helpers.lrp import Composite, Epsilon, Gamma, ZBox, build_network, pixel_bounds

TINY = 1e-12  # zennit's stand-in for "no epsilon" (it always adds a stabiliser)


class AvgPoolRelevance(Hook):
    """Max-pooling treated as average pooling in the relevance pass (not a zennit built-in)."""

    def forward(self, module, input, output):
        self.stored_tensors["input"] = input

    def backward(self, module, grad_input, grad_output):
        a = self.stored_tensors["input"][0].detach().requires_grad_(True)
        with torch.enable_grad():
            z = F.avg_pool2d(a, module.kernel_size, module.stride, module.padding)
            s = torch.where(z == 0, 0.0, grad_output[0] / torch.where(z == 0, 1.0, z))
            (c,) = torch.autograd.grad(z, a, s)
        return (a * c,)

    def copy(self):
        return AvgPoolRelevance()


def zennit_rule(rule, low=None, high=None):
    if isinstance(rule, Epsilon):
        return ZEpsilon(epsilon=rule.epsilon or TINY)
    if isinstance(rule, Gamma):
        return ZGamma(gamma=rule.gamma, stabilizer=rule.epsilon or TINY)
    if isinstance(rule, ZBox):
        return ZZBox(low=low, high=high, stabilizer=TINY)
    raise AssertionError(rule)


def zennit_lrp(model, x, target, name_rules, extra, canonizers=(), low=None, high=None):
    name_map = [((name,), zennit_rule(rule, low, high)) for name, rule in name_rules.items()]
    name_map += [((name,), hook) for name, hook in extra.items()]
    composite = NameMapComposite(name_map=name_map, canonizers=list(canonizers))
    with torch.no_grad():
        logits = model(x)
    r_out = torch.zeros_like(logits)
    r_out[torch.arange(len(x)), target] = logits[torch.arange(len(x)), target]
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), r_out)
    return relevance


_LITE_PAIRS = {
    "DepthwiseSeparableConv": [("conv_dw", "bn1"), ("conv_pw", "bn2")],
    "InvertedResidual": [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")],
}


def _residual_forward(self, x):
    """timm's InvertedResidual.forward with the addition as a zennit Sum module."""
    y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
    return self.zennit_sum(torch.stack([y, x], dim=-1))


def zennit_ready_lite(model: nn.Module) -> tuple[nn.Module, dict[str, Hook]]:
    """A copy of timm's Lite0 that zennit can explain: BN merged by zennit, sums as modules."""
    model = copy.deepcopy(model)
    pairs = [(model.conv_stem, model.bn1), (model.conv_head, model.bn2)]
    extra: dict[str, Hook] = {"global_pool.pool": ZNorm(stabilizer=TINY)}
    for name, block in model.blocks.named_modules():
        kind = type(block).__name__
        if kind not in _LITE_PAIRS:
            continue
        pairs += [(getattr(block, c), getattr(block, b)) for c, b in _LITE_PAIRS[kind]]
        if block.has_skip:
            block.zennit_sum = Sum()
            block.forward = types.MethodType(_residual_forward, block)
            extra[f"blocks.{name}.zennit_sum"] = ZNorm(stabilizer=TINY)
    for conv, bn in pairs:
        with torch.no_grad():
            bn.running_var += bn.eps  # zennit keeps eps in the identity BN; move it out first
        bn.eps = 0.0
        MergeBatchNorm.merge_batch_norm([conv], bn)
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = False
            extra[name] = ZPass()  # the gradient of ReLU6 is 0 above 6; LRP passes through
    return model, extra


def zennit_ready_vgg(model: nn.Module) -> tuple[nn.Module, dict[str, Hook]]:
    """torchvision's VGG as it is (no BatchNorm): only the pooling layers need hooks."""
    extra: dict[str, Hook] = {
        name: AvgPoolRelevance()
        for name, module in model.named_modules()
        if isinstance(module, nn.MaxPool2d)
    }
    extra["avgpool"] = ZNorm(stabilizer=TINY)
    return model, extra


def zennit_ready_resnet(model: nn.Module) -> tuple[nn.Module, dict[str, Hook], list[Canonizer]]:
    """A copy of torchvision's ResNet with BatchNorm's epsilon moved into the running variance;
    zennit's ``ResNetCanonizer`` merges BatchNorm and turns each residual sum into a module."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_var += module.eps
            module.eps = 0.0
    extra: dict[str, Hook] = {"maxpool": AvgPoolRelevance(), "avgpool": ZNorm(stabilizer=TINY)}
    for name, module in model.named_modules():
        if type(module).__name__ in ("Bottleneck", "BasicBlock"):
            extra[f"{name}.canonizer_sum"] = ZNorm(stabilizer=TINY)
    return model, extra, [ResNetCanonizer()]


def zennit_ready(model: nn.Module) -> tuple[nn.Module, dict[str, Hook], list[Canonizer]]:
    """The model zennit explains, the extra hooks and the canonizers, for VGG16, ResNet50 or
    EfficientNet-Lite (the model itself is never modified)."""
    kind = type(model).__name__
    if kind == "VGG":
        return (*zennit_ready_vgg(model), [])
    if kind == "ResNet":
        return zennit_ready_resnet(model)
    if kind == "EfficientNet":
        return (*zennit_ready_lite(model), [])
    raise ValueError(f"no zennit configuration for {kind}")


def zennit_relevance(
    loaded, x: torch.Tensor, target: torch.Tensor, composite: str | Composite = "epsilon-gamma-box"
) -> torch.Tensor:
    """The (N, 3, H, W) input relevance zennit computes for ``loaded`` (a
    :class:`~xai_helpers.models.LoadedModel`), each layer given the rule that ``composite``
    gives it in :func:`xai_helpers.lrp.lrp`; the z^B bounds from the model's normalisation.
    ``loaded.model`` is not modified (zennit explains a prepared copy)."""
    zmodel, extra, canonizers = zennit_ready(loaded.model)
    rules = build_network(loaded.model).rules(composite)
    low, high = (b.to(x.dtype) for b in pixel_bounds(loaded.mean, loaded.std))
    return zennit_lrp(zmodel, x, target, rules, extra, canonizers, low=low, high=high)
