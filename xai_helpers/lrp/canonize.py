"""Canonization: rewrite layers into equivalent ones that LRP can handle with one rule.

* :func:`fold_batchnorm`: an eval-mode BatchNorm after a convolution (or Linear) is an affine
  map of its output, so the two are one affine layer (the function is unchanged);
* :func:`dense_to_conv` and :func:`vgg_to_fully_convolutional`: VGG16's dense layers as
  convolutions, as in the original LRP material.

All of them build new tensors or modules; the model given is never written to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import LrpError

__all__ = ["dense_to_conv", "fold_batchnorm", "vgg_to_fully_convolutional"]


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


def dense_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    r"""The ``Linear`` layer as a ``Conv2d`` over a (C, k, k) input: the same numbers reshaped.

    :math:`W \in \mathbb{R}^{m\times Ck^2}` becomes :math:`m` filters of shape (C, k, k);
    flattening is row-major (C, then rows, then columns), as ``torch.flatten`` does. The
    convolution shares the Linear's storage (its weight is a reshaped view of a contiguous weight,
    as every ``nn.Linear``'s is: for VGG16's first dense layer that is 400 MB not allocated
    twice); neither layer is modified.
    """
    if linear.in_features != in_channels * kernel_size**2:
        raise LrpError(
            f"Linear has {linear.in_features} inputs, not {in_channels}x{kernel_size}x{kernel_size}"
        )
    conv = nn.Conv2d(
        in_channels, linear.out_features, kernel_size, bias=linear.bias is not None, device="meta"
    )  # on the meta device: no memory, no random initialisation; the parameters come next
    shape = (linear.out_features, in_channels, kernel_size, kernel_size)
    conv.weight = nn.Parameter(linear.weight.detach().reshape(shape), linear.weight.requires_grad)
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach(), linear.bias.requires_grad)
    return conv


def vgg_to_fully_convolutional(vgg: nn.Module) -> nn.Sequential:
    """torchvision VGG with its classifier as convolutions (7x7, then 1x1, 1x1), plus Flatten.

    For a 224-pixel input it gives the same logits as ``vgg``. The new network shares the
    weights of ``vgg`` (the feature layers are the same modules, the convolutions views of the
    dense weights, :func:`dense_to_conv`), so it costs no memory of its own; ``vgg`` is not
    modified.
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
