"""The capture mechanism: right tensors, in-place safety, and no state leaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_helpers.hooks import (
    LayerError,
    capture,
    count_hooks,
    feature_map_layers,
    resolve_layer,
    restore_state,
)


class InplaceBlock(nn.Module):
    """A residual block written like torchvision's: ``out = bn(conv(x)); out += x; relu_(out)``."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.inplace = inplace
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.inplace:
            out += x
            out = torch.relu_(out)
        else:
            out = torch.relu(out + x)
        return self.head(out.mean(dim=(2, 3)))


def make_block(inplace: bool) -> InplaceBlock:
    torch.manual_seed(0)
    block = InplaceBlock(inplace).double().eval()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
    return block


def test_capture_matches_direct_computation() -> None:
    model = make_block(inplace=False)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    with capture(model, "bn") as cap:
        logits = model(x)
        torch.autograd.grad(logits[:, 1].sum(), x)
    # Reference: recompute bn's output as a leaf and differentiate the rest of the network.
    a = model.bn(model.conv(x)).detach().requires_grad_(True)
    y = model.head(torch.relu(a + x.detach()).mean(dim=(2, 3)))[:, 1].sum()
    (g,) = torch.autograd.grad(y, a)
    torch.testing.assert_close(cap.activations, a.detach(), rtol=0, atol=0)
    torch.testing.assert_close(cap.gradients, g, rtol=1e-12, atol=1e-14)


def test_capture_survives_inplace_operations() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    results = []
    for inplace in (True, False):
        model = make_block(inplace)
        xr = x.clone().requires_grad_(True)
        with capture(model, "bn") as cap:
            torch.autograd.grad(model(xr)[:, 2].sum(), xr)
        results.append((cap.activations, cap.gradients))
    (a_in, g_in), (a_out, g_out) = results
    # The in-place `+=` and `relu_` change bn's output tensor after the hook saw it.
    torch.testing.assert_close(a_in, a_out, rtol=0, atol=0)
    torch.testing.assert_close(g_in, g_out, rtol=1e-12, atol=1e-14)
    assert (g_in == 0).any(), "the ReLU mask should zero some gradients"


def test_as_leaf_gives_the_same_gradients_and_stops_at_the_layer() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    model = make_block(inplace=True)
    xr = x.clone().requires_grad_(True)
    with capture(model, "bn") as full:
        torch.autograd.grad(model(xr)[:, 2].sum(), xr)
    for p in model.parameters():
        p.requires_grad_(False)
    with capture(model, "bn", as_leaf=True) as leaf:
        logits = model(x)  # in-place `+=` and `relu_` act on the copy, not on the leaf
        assert leaf.output.is_leaf
        (g,) = torch.autograd.grad(logits[:, 2].sum(), leaf.output)
    assert model.conv.weight.grad is None
    torch.testing.assert_close(leaf.activations, full.activations, rtol=0, atol=0)
    torch.testing.assert_close(leaf.gradients, full.gradients, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, full.gradients, rtol=1e-12, atol=1e-14)
    assert count_hooks(model) == 0


def test_hooks_removed_also_after_exception() -> None:
    model = make_block(inplace=True)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, "bn") as cap:
            model(x)
            assert count_hooks(model) == 1
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    assert cap.output is None  # the graph is released
    for _ in range(100):
        with capture(model, "conv"):
            torch.autograd.grad(model(x).sum(), x)
    assert count_hooks(model) == 0


def test_reused_module_keeps_last_call() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 1).double()
    model = nn.Sequential(conv, nn.ReLU(), conv)  # the same module twice
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    with capture(model, conv) as cap:
        out = model(x)
        torch.autograd.grad((out**2).sum(), x)
    torch.testing.assert_close(cap.activations, out.detach())
    torch.testing.assert_close(cap.gradients, 2 * out.detach())


def test_unknown_layer_lists_candidates() -> None:
    model = make_block(inplace=True)
    with pytest.raises(LayerError, match=r"unknown layer 'bnn'.*closest: bn.*top-level layers"):
        resolve_layer(model, "bnn")
    with pytest.raises(LayerError, match="not a submodule"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    assert resolve_layer(model, model.head) == ("head", model.head)
    assert count_hooks(model) == 0


def test_restore_state_restores_modes_and_flags() -> None:
    model = make_block(inplace=True).train()
    model.conv.weight.requires_grad_(False)
    model.bn.eval()  # mixed modes must come back exactly
    with pytest.raises(KeyError):
        with restore_state(model, freeze=True):
            assert not model.training and not model.conv.training
            assert not any(p.requires_grad for p in model.parameters())
            raise KeyError("inside")
    assert model.training and model.conv.training and not model.bn.training
    assert not model.conv.weight.requires_grad and model.conv.bias.requires_grad


def test_feature_map_layers_deepest_first_on_lite0(lite0):
    x = torch.zeros(1, 3, 224, 224)
    layers = feature_map_layers(lite0.model, x)
    names = [n for n, _ in layers]
    assert names[0] == "bn2" and dict(layers)["bn2"] == (1280, 7, 7)
    assert dict(layers)["blocks.4"] == (112, 14, 14) and names.index("blocks.4") < names.index(
        "blocks.2"
    )
    assert "global_pool" not in names and "global_pool.pool" not in names  # 1 x 1: no map
    assert count_hooks(lite0.model) == 0


def test_feature_map_layers_removes_hooks_on_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).train()
    with pytest.raises(RuntimeError):
        feature_map_layers(net, torch.zeros(1, 3, 9, 9))  # wrong size for the Linear layer
    assert count_hooks(net) == 0 and net.training
    assert feature_map_layers(net, torch.zeros(1, 3, 8, 8)) == [("0", (4, 6, 6))]
    assert net.training  # restored after the eval-mode pass
