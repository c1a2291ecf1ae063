"""XGrad-CAM, LayerCAM, Eigen-CAM and Ablation-CAM: each a few lines on the shared CAM mechanism,
checked against slow references written out element by element and against pytorch-grad-cam
(and torchcam for LayerCAM's fusion), with every difference explained where it is tested."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_net import TinyNet
from torch import nn

from xai_helpers import cams
from xai_helpers.explain import explain
from xai_helpers.hooks import capture, count_hooks
from xai_helpers.registry import get_method

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import AblationCAM, EigenCAM, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.ablation_layer import AblationLayer  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402


@pytest.fixture(scope="module")
def xs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 12, 12, dtype=torch.float64)


def activations_and_gradients(model, layer, x, target):
    """A and d y^c / d A by plain autograd, one image at a time."""
    acts, grads = [], []
    for n in range(x.shape[0]):
        with capture(model, layer) as cap:
            logits = model(x[n : n + 1])
            torch.autograd.grad(logits[0, target[n]], list(model.parameters())[0])
            # the tensor hook stored dy/dA during that backward pass
            acts.append(cap.activations[0])
            grads.append(cap.gradients[0])
    return torch.stack(acts), torch.stack(grads)


def library(cls, model, layer, x, targets, **kwargs) -> np.ndarray:
    try:
        with cls(model, target_layers=[layer], **kwargs) as ref:
            return ref(x, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills .grad


# ------------------------------------------------------------------------------------------
# XGrad-CAM and LayerCAM: a weight function each
# ------------------------------------------------------------------------------------------


def test_xgrad_cam_matches_the_formula_element_by_element(tiny, xs) -> None:
    ours = cams.xgrad_cam(tiny, xs, target=[1, 4], layer="features.2")
    a, g = activations_and_gradients(tiny, "features.2", xs, [1, 4])
    for n in range(2):
        weights = torch.zeros(a.shape[1], dtype=a.dtype)
        for k in range(a.shape[1]):
            total = float(a[n, k].sum())
            for i in range(a.shape[2]):
                for j in range(a.shape[3]):
                    weights[k] += float(a[n, k, i, j]) / total * float(g[n, k, i, j])
        expected = torch.relu((weights[:, None, None] * a[n]).sum(0))
        torch.testing.assert_close(ours.weights[n], weights, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.low_res[n], expected, rtol=1e-10, atol=1e-12)


def test_layer_cam_matches_the_formula_element_by_element(tiny, xs) -> None:
    ours = cams.layer_cam(tiny, xs, target=[1, 4], layer="features.2")
    a, g = activations_and_gradients(tiny, "features.2", xs, [1, 4])
    assert ours.weights.shape == a.shape  # one weight per channel and position
    expected = torch.zeros(2, *a.shape[2:], dtype=a.dtype)
    for n in range(2):
        for k in range(a.shape[1]):
            for i in range(a.shape[2]):
                for j in range(a.shape[3]):
                    expected[n, i, j] += max(float(g[n, k, i, j]), 0.0) * float(a[n, k, i, j])
    torch.testing.assert_close(ours.low_res, torch.relu(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", ["bn2", "blocks.5"])
def test_xgrad_cam_vs_pytorch_grad_cam(lite0, cat_x, layer) -> None:
    # Their eps = 1e-7 added to the sum of activations is 1e-8 of the sums here: negligible.
    ours = cams.xgrad_cam(lite0, cat_x, target=[282, 967], layer=layer)
    theirs = library(XGradCAM, lite0.model, lite0.model.get_submodule(layer), cat_x, [282, 967])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-5)
    assert count_hooks(lite0.model) == 0


def test_xgrad_cam_is_grad_cam_on_a_gap_linear_head(lite0, cat_x) -> None:
    # dy/dA = W_ck / Z is constant over positions, so sum_ij A_ij / sum A * W/Z = W/Z
    xgrad = cams.xgrad_cam(lite0, cat_x, target=[282, 967])
    grad = cams.grad_cam(lite0, cat_x, target=[282, 967])
    torch.testing.assert_close(xgrad.upsampled, grad.upsampled, rtol=1e-5, atol=1e-5)
    inner = cams.xgrad_cam(lite0, cat_x, target=[282, 967], layer="blocks.5")
    inner_grad = cams.grad_cam(lite0, cat_x, target=[282, 967], layer="blocks.5")
    assert (inner.upsampled - inner_grad.upsampled).abs().max() > 0.05  # not on inner layers


@pytest.mark.parametrize("layer", ["bn2", "blocks.3"])
def test_layer_cam_vs_pytorch_grad_cam(lite0, cat_x, layer) -> None:
    ours = cams.layer_cam(lite0, cat_x, target=[282, 967], layer=layer)
    theirs = library(LayerCAM, lite0.model, lite0.model.get_submodule(layer), cat_x, [282, 967])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-5)


def test_layer_cam_fusion_vs_torchcam(lite0, cat_x) -> None:
    torchcam = pytest.importorskip("torchcam.methods")
    layers = ["blocks.2", "blocks.4", "bn2"]
    per_layer = [cams.layer_cam(lite0, cat_x, [282, 967], layer).low_res for layer in layers]
    ours = cams.fuse_layer_cams(per_layer, (224, 224))
    # torchcam's extractor hands fuse_cams min-max normalised maps
    normalised = [cams.normalize_per_image(m) for m in per_layer]
    theirs = torchcam.LayerCAM.fuse_cams(normalised, target_shape=(224, 224))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    fused = cams.layer_cam_fused(lite0, cat_x, layers, target=[282, 967])
    torch.testing.assert_close(fused.low_res, ours)
    assert fused.upsampled.min() == 0 and fused.upsampled.max() == 1
    # the shallow layer adds detail: the fused map differs from the last layer's
    assert (fused.upsampled - cams.layer_cam(lite0, cat_x, [282, 967]).upsampled).abs().max() > 0.1
    assert count_hooks(lite0.model) == 0


# ------------------------------------------------------------------------------------------
# Eigen-CAM: a cam_image function, no gradients, no class
# ------------------------------------------------------------------------------------------


def test_eigen_cam_image_is_the_first_principal_component(tiny, xs) -> None:
    with torch.no_grad(), capture(tiny, "features.2") as cap:
        tiny(xs)
    a = cap.activations
    for center in (False, True):
        ours = cams.eigen_cam_image(a, center=center)
        for n in range(2):
            o = a[n].reshape(a.shape[1], -1).T.numpy()  # (positions, channels)
            if center:
                o = o - o.mean(axis=0)
            _, _, vt = np.linalg.svd(o)
            p = o @ vt[0]
            p = p if (p * a[n].sum(0).flatten().numpy()).sum() >= 0 else -p  # our sign rule
            np.testing.assert_allclose(ours[n].flatten().numpy(), p, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", ["bn2", "blocks.5"])
def test_eigen_cam_vs_pytorch_grad_cam(lite0, cat_x, layer) -> None:
    """pytorch-grad-cam centres the activations (our center=True) and keeps LAPACK's sign of the
    singular vector; we fix the sign (positive where the layer is active). Where the signs
    agree the maps agree; where they do not, theirs is the other half of the projection."""
    module = lite0.model.get_submodule(layer)
    ours = cams.eigen_cam(lite0, cat_x, layer=layer, center=True)
    theirs = library(EigenCAM, lite0.model, module, cat_x, [282, 967])
    with torch.no_grad(), capture(lite0.model, layer) as cap:
        lite0.model(cat_x)
    projection = cams.eigen_cam_image(cap.activations, center=True).numpy()
    raw = get_2d_projection(cap.activations.numpy())
    for n in range(2):
        sign = np.sign((projection[n] * raw[n]).sum())
        np.testing.assert_allclose(projection[n], sign * raw[n], atol=1e-4 * np.abs(raw).max())
        if sign > 0:
            np.testing.assert_allclose(ours.upsampled[n].numpy(), theirs[n], atol=1e-5)
        else:
            other = scale_cam_image(np.maximum(-projection[n : n + 1], 0), (224, 224))
            np.testing.assert_allclose(theirs[n], other[0], atol=1e-5)


def test_eigen_cam_is_not_class_discriminative(lite0, cat_x) -> None:
    x = cat_x[1:].expand(2, -1, -1, -1)  # cat and coffee, explained for both classes
    both = cams.eigen_cam(lite0, x, target=["Egyptian cat", "espresso"])
    assert both.weights is None
    torch.testing.assert_close(both.upsampled[0], both.upsampled[1], rtol=0, atol=0)
    assert both.low_res.max() > 0 and not get_method("eigen_cam").class_discriminative
    gradcam = cams.grad_cam(lite0, x, target=["Egyptian cat", "espresso"])
    assert (gradcam.upsampled[0] - gradcam.upsampled[1]).abs().max() > 0.5


# ------------------------------------------------------------------------------------------
# Ablation-CAM: weights from forward passes with one channel removed
# ------------------------------------------------------------------------------------------


def reference_ablation_weights(model, layer, x, target) -> torch.Tensor:
    """(y - y_k) / y with channel k zeroed by a hook, one whole forward pass per channel."""
    module = model.get_submodule(layer)
    with torch.no_grad():
        y = model(x)[0, target]
        k = capture_channels(model, layer, x)
        weights = torch.zeros(k, dtype=x.dtype)
        for c in range(k):

            def zero(_m, _i, out, c=c):
                out = out.clone()
                out[:, c] = 0
                return out

            handle = module.register_forward_hook(zero)
            try:
                weights[c] = (y - model(x)[0, target]) / y
            finally:
                handle.remove()
    return weights


def capture_channels(model, layer, x) -> int:
    with capture(model, layer) as cap:
        model(x)
    return cap.activations.shape[1]


def test_ablation_cam_matches_slow_reference(tiny, xs) -> None:
    ours = cams.ablation_cam(tiny, xs, target=[1, 4], layer="features.3", progress=False)
    for n, t in enumerate([1, 4]):
        expected = reference_ablation_weights(tiny, "features.3", xs[n : n + 1], t)
        torch.testing.assert_close(ours.weights[n], expected, rtol=1e-9, atol=1e-12)


class SkipNet(nn.Module):
    """The head concatenates a tensor from below the explained layer: the layers above cannot
    take a larger batch than the input, so Ablation-CAM must run the whole network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        pooled = torch.cat([self.body(s).mean((2, 3)), s.mean((2, 3))], dim=1)
        return self.fc(pooled)


def test_ablation_cam_falls_back_when_the_upper_layers_mix_in_lower_tensors(xs) -> None:
    torch.manual_seed(3)
    net = SkipNet().double().eval()
    ours = cams.ablation_cam(net, xs, target=[0, 2], layer="body", batch_size=2, progress=False)
    for n, t in enumerate([0, 2]):
        expected = reference_ablation_weights(net, "body", xs[n : n + 1], t)
        torch.testing.assert_close(ours.weights[n], expected, rtol=1e-9, atol=1e-12)
    assert count_hooks(net) == 0


class ZeroAblation(AblationLayer):
    """pytorch-grad-cam's ablation layer, always setting the channel to 0 (as the paper does)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activations
        for i in range(out.size(0)):
            out[i, self.indices[i], :] = 0
        return out


def test_ablation_cam_vs_pytorch_grad_cam(lite0, cat_x) -> None:
    # blocks.1.0.bn2 ends in ReLU6 (96 channels): their ablation value is 0 there, as ours.
    layer = "blocks.1.0.bn2"
    module = lite0.model.get_submodule(layer)
    ours = cams.ablation_cam(lite0, cat_x[:1], 282, layer=layer, progress=False)
    theirs = library(AblationCAM, lite0.model, module, cat_x[:1], [282])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-5)
    # After a linear bottleneck (blocks.1: signed activations) they set an ablated channel to
    # min - 1e7 instead of 0; with their ablation layer set to 0 the maps agree again.
    ours = cams.ablation_cam(lite0, cat_x[:1], 282, layer="blocks.1", progress=False)
    stock = library(AblationCAM, lite0.model, lite0.model.blocks[1], cat_x[:1], [282])
    zero = library(
        AblationCAM,
        lite0.model,
        lite0.model.blocks[1],
        cat_x[:1],
        [282],
        ablation_layer=ZeroAblation(),
    )
    np.testing.assert_allclose(ours.upsampled.numpy(), zero, atol=1e-5)
    assert np.abs(ours.upsampled.numpy() - stock).max() > 0.1
    assert count_hooks(lite0.model) == 0


def test_ablation_cam_progress_and_shared_passes(tiny, xs) -> None:
    calls, seen = [], []
    handle = tiny.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        both = cams.ablation_cam(
            tiny,
            xs[:1].expand(2, -1, -1, -1),
            target=[1, 4],
            layer="features.3",
            batch_size=2,
            progress=lambda done, total: seen.append((done, total)),
        )
    finally:
        handle.remove()
    with torch.no_grad(), capture(tiny, "features.3") as cap:
        tiny(xs[:1])
    live = int(cap.activations[0].flatten(1).ne(0).any(1).sum())
    assert calls[0] == 2 and sum(calls[1:]) == len(calls) - 1  # the lower layers see one image
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == live  # both targets share passes
    single = cams.ablation_cam(tiny, xs[:1], target=4, layer="features.3", progress=False)
    torch.testing.assert_close(both.weights[1], single.weights[0], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# the registry and the shared mechanism
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xgrad_cam", "layer_cam", "eigen_cam", "ablation_cam"])
def test_variants_are_registered_and_leave_the_model_as_found(name, xs) -> None:
    method = get_method(name)
    assert method.family == "cam" and method.layer == "any" and method.citation
    torch.manual_seed(0)
    net = TinyNet().double().train()
    net.features[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    kwargs = {"progress": False} if method.reports_progress else {}
    result = method.fn(net, xs, None, layer="features.3", **kwargs)
    assert result.shape == (2, 12, 12) and 0 <= result.min() and result.max() <= 1
    assert net.training and all(m.training for m in net.modules())
    assert not net.features[0].weight.requires_grad and net.fc.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert count_hooks(net) == 0


def test_explain_reaches_the_variants(lite0, cat_x) -> None:
    direct = cams.layer_cam(lite0, cat_x, "espresso", layer="blocks.4").upsampled
    via = explain(lite0, cat_x, "layer_cam", "espresso", layer="blocks.4")
    torch.testing.assert_close(via, direct)


def test_mechanism_takes_either_weights_or_a_map(tiny, xs) -> None:
    grad = cams.grad_cam(tiny, xs, layer="features.2")
    per_location = cams.class_activation_map(
        tiny, xs, layer="features.2", weights=lambda a, g: g.mean((2, 3), keepdim=True).expand_as(a)
    )
    torch.testing.assert_close(per_location.low_res, grad.low_res, rtol=1e-12, atol=1e-14)
    as_image = cams.class_activation_map(
        tiny, xs, layer="features.2", cam_image=lambda a, g: cams.weighted_sum(g.mean((2, 3)), a)
    )
    torch.testing.assert_close(as_image.low_res, grad.low_res, rtol=1e-12, atol=1e-14)
    assert as_image.weights is None
    with pytest.raises(cams.CamError, match="exactly one"):
        cams.class_activation_map(tiny, xs, layer="features.2")
