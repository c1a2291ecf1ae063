"""CAM, Grad-CAM, Grad-CAM++ and Score-CAM against slow references and pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_net import TinyNet
from torch import nn

from xai_helpers import metrics
from xai_helpers.cams import CamError, cam, cam_to_image, grad_cam, grad_cam_pp, score_cam
from xai_helpers.hooks import LayerError, capture, count_hooks
from xai_helpers.models import ModelError, load_model

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(scope="module")
def xs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 12, 12, dtype=torch.float64)


# ------------------------------------------------------------------------------------------
# slow references, written out element by element
# ------------------------------------------------------------------------------------------


def reference_grads(model: TinyNet, x: torch.Tensor, target: list[int], start: int):
    """A (N,K,h,w) and d y^c / d A by autograd on the split network, one image at a time."""
    acts, grads = [], []
    for n in range(x.shape[0]):
        a = model.features[:start](x[n : n + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.head_from(a, start)[0, target[n]], a)
        acts.append(a.detach()[0])
        grads.append(g[0])
    return torch.stack(acts), torch.stack(grads)


def weighted_map(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) with an explicit loop over k."""
    out = torch.zeros(a.shape[1:], dtype=a.dtype)
    for k in range(a.shape[0]):
        out += w[k] * a[k]
    return torch.relu(out)


def reference_pp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 19 of Chattopadhay et al., loop over every channel and position."""
    w = torch.zeros(a.shape[0], dtype=a.dtype)
    for k in range(a.shape[0]):
        s = float(a[k].sum())
        for i in range(a.shape[1]):
            for j in range(a.shape[2]):
                gij = float(g[k, i, j])
                denom = 2 * gij**2 + s * gij**3
                alpha = gij**2 / denom if denom != 0 else 0.0
                w[k] += alpha * max(gij, 0.0)
    return w


def minmax(m: torch.Tensor) -> torch.Tensor:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def reference_score_weights(model, x, target, start_layer_output, variant):
    """Score-CAM weights, one channel at a time.

    A channel that is constant at feature resolution gets the all-zero mask; testing constancy
    after upsampling would see rounding noise (0.7 interpolated is not always exactly 0.7).
    """
    a = start_layer_output
    w = torch.zeros(a.shape[0], dtype=x.dtype)
    with torch.no_grad():
        for k in range(a.shape[0]):
            up = F.interpolate(a[None, k : k + 1], size=x.shape[-2:], mode="bilinear")[0, 0]
            mask = minmax(up) if a[k].max() > a[k].min() else torch.zeros_like(up)
            out = model(x[None] * mask)[0]
            w[k] = torch.softmax(out, 0)[target] if variant == "probability" else out[target]
    return torch.softmax(w, 0) if variant == "softmax_logits" else w


# ------------------------------------------------------------------------------------------
# against the slow references (float64, tight)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_pp"])
def test_gradient_methods_match_reference(tiny, xs, method) -> None:
    fn = {"grad_cam": grad_cam, "grad_cam_pp": grad_cam_pp}[method]
    res = fn(tiny, xs, target=[3, 5], layer="features.2")
    a, g = reference_grads(tiny, xs, [3, 5], start=3)
    assert (a < 0).any() and (g == 0).any() and (g != 0).any()  # the interesting cases occur
    for n in range(2):
        if method == "grad_cam":
            w = g[n].sum(dim=(1, 2)) / (g.shape[2] * g.shape[3])
        else:
            w = reference_pp_weights(a[n], g[n])
        torch.testing.assert_close(res.weights[n], w, rtol=1e-10, atol=1e-14)
        low = weighted_map(a[n], w)
        torch.testing.assert_close(res.low_res[n], low, rtol=1e-10, atol=1e-14)
        up = F.interpolate(low[None, None], size=(12, 12), mode="bilinear")[0, 0]
        torch.testing.assert_close(res.upsampled[n], minmax(up), rtol=1e-9, atol=1e-12)
    assert res.target.tolist() == [3, 5]
    torch.testing.assert_close(res.logits, tiny(xs))


def test_cam_matches_reference_and_identity(tiny, xs) -> None:
    res = cam(tiny, xs, layer="features.5")
    logits = tiny(xs).detach()
    assert res.target.tolist() == logits.argmax(1).tolist()
    with capture(tiny, "features.5") as cap:
        tiny(xs)
    for n in range(2):
        c = int(res.target[n])
        w = tiny.fc.weight[c].detach()
        a = cap.activations[n]
        torch.testing.assert_close(res.low_res[n], weighted_map(a, w), rtol=1e-12, atol=1e-14)
        # Zhou et al.: mean of the map before ReLU plus the bias is the logit.
        before_relu = (w[:, None, None] * a).sum(0)
        torch.testing.assert_close(
            before_relu.mean() + tiny.fc.bias[c], logits[n, c], rtol=1e-12, atol=1e-12
        )


def test_cam_is_grad_cam_times_z(tiny, xs) -> None:
    c = cam(tiny, xs, target=2, layer="features.5")
    g = grad_cam(tiny, xs, target=2, layer="features.5")
    z = c.low_res.shape[1] * c.low_res.shape[2]
    torch.testing.assert_close(g.weights * z, c.weights, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g.low_res * z, c.low_res, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g.upsampled, c.upsampled, rtol=1e-10, atol=1e-12)


def test_cam_identity_on_lite0(lite0, cat_x) -> None:
    res = cam(lite0, cat_x, target=["tiger cat", "espresso"])
    assert res.target.tolist() == [282, 967]
    with capture(lite0.model, "bn2") as cap, torch.no_grad():
        lite0.model(cat_x)
    before_relu = torch.einsum("nk,nkhw->nhw", res.weights, cap.activations)
    bias = lite0.model.classifier.bias[res.target].detach()
    expected = res.logits.gather(1, res.target[:, None])[:, 0]
    torch.testing.assert_close(before_relu.mean(dim=(1, 2)) + bias, expected, rtol=1e-5, atol=1e-4)
    g = grad_cam(lite0, cat_x, target=["tiger cat", "espresso"])
    torch.testing.assert_close(g.low_res * 49, res.low_res, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["probability", "softmax_logits"])
def test_score_cam_matches_reference(tiny, xs, variant) -> None:
    res = score_cam(tiny, xs, target=[1, 6], layer="features.2", variant=variant, progress=False)
    for n, c in enumerate([1, 6]):
        a = tiny.features[:3](xs[n : n + 1])[0].detach()
        w = reference_score_weights(tiny, xs[n], c, a, variant)
        torch.testing.assert_close(res.weights[n], w, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(res.low_res[n], weighted_map(a, w), rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------------------
# Score-CAM specifics
# ------------------------------------------------------------------------------------------


def constant_channel_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().double().eval()
    with torch.no_grad():
        conv = net.features[2]
        conv.weight[0].zero_()
        conv.bias[0] = 0.0  # channel 0 identically zero
        conv.weight[1].zero_()
        conv.bias[1] = 0.7  # channel 1 constant, non-zero
    return net


@pytest.mark.parametrize("variant", ["probability", "softmax_logits"])
def test_score_cam_constant_channels_no_nan(xs, variant) -> None:
    net = constant_channel_net()
    res = score_cam(net, xs, layer="features.2", variant=variant, progress=False)
    assert torch.isfinite(res.weights).all() and torch.isfinite(res.upsampled).all()
    for n in range(2):
        c = int(res.target[n])
        a = net.features[:3](xs[n : n + 1])[0].detach()
        w = reference_score_weights(net, xs[n], c, a, variant)  # constant -> zero mask
        torch.testing.assert_close(res.weights[n], w, rtol=1e-10, atol=1e-14)
        assert res.weights[n, 0] == res.weights[n, 1]  # both saw the input 0 * x


def test_score_cam_independent_of_batch_size(tiny, xs) -> None:
    runs = [
        score_cam(tiny, xs, layer="features.2", batch_size=b, progress=False) for b in (1, 3, 64)
    ]
    for r in runs[1:]:
        torch.testing.assert_close(r.weights, runs[0].weights, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(r.upsampled, runs[0].upsampled, rtol=1e-12, atol=1e-15)


def test_score_cam_progress_callback_counts_every_masked_image(tiny, xs) -> None:
    calls: list[tuple[int, int]] = []
    score_cam(
        tiny, xs, layer="features.2", batch_size=3, progress=lambda d, t: calls.append((d, t))
    )
    done = [d for d, _ in calls]
    total = calls[0][1]
    assert calls[0][0] == 0 and done == sorted(done) and done[-1] == total
    assert len(calls) > 2  # called after every forward pass, not just at the end


# ------------------------------------------------------------------------------------------
# against pytorch-grad-cam
# ------------------------------------------------------------------------------------------


class Scaled(nn.Module):
    """Logits times a constant: makes pytorch-grad-cam's eps=1e-6 in Grad-CAM++ negligible."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor


def reference_library(cls, model, layer, x, targets) -> np.ndarray:
    try:
        with cls(model, target_layers=[layer]) as ref:
            return ref(x, targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        # pytorch-grad-cam calls loss.backward(), which fills the parameters' .grad; clear it so
        # the session-wide model stays as other tests expect it (ours never writes .grad)
        model.zero_grad(set_to_none=True)


def test_grad_cam_vs_pytorch_grad_cam_lite0(lite0, cat_x) -> None:
    ours = grad_cam(lite0, cat_x, target=[282, 967])
    theirs = reference_library(GradCAM, lite0.model, lite0.model.bn2, cat_x, [282, 967])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-5)
    assert count_hooks(lite0.model) == 0


def test_grad_cam_pp_vs_pytorch_grad_cam_lite0(lite0, cat_x) -> None:
    # Their eps=1e-6 in the denominator is of the order of g^2 for Lite0 (g ~ 1e-3), so
    # compare on logits scaled by 1000 (g ~ 1), where eps is negligible: the formulas agree.
    scaled = Scaled(lite0.model, 1000.0)
    ours = grad_cam_pp(scaled, cat_x[:1], target=282, layer="model.bn2")
    theirs = reference_library(GradCAMPlusPlus, scaled, lite0.model.bn2, cat_x[:1], [282])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-4)
    unscaled = reference_library(GradCAMPlusPlus, lite0.model, lite0.model.bn2, cat_x[:1], [282])
    assert np.abs(unscaled - ours.upsampled.numpy()).max() > 1e-3  # their eps shows at scale 1


def test_gradient_methods_vs_pytorch_grad_cam_resnet50() -> None:
    torch.manual_seed(0)
    rn = load_model("resnet50", weights=None, device="cpu")
    x = torch.randn(2, 3, 64, 64)
    ours = grad_cam(rn, x, target=[1, 2])
    theirs = reference_library(GradCAM, rn.model, rn.model.layer4, x, [1, 2])
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-5)
    scaled = Scaled(rn.model, 1e4)
    ours_pp = grad_cam_pp(scaled, x, target=[1, 2], layer="model.layer4")
    theirs_pp = reference_library(GradCAMPlusPlus, scaled, rn.model.layer4, x, [1, 2])
    np.testing.assert_allclose(ours_pp.upsampled.numpy(), theirs_pp, atol=1e-4)
    # CAM on layer4 (the output of the last in-place ReLU, which the pool sees) = Grad-CAM * Z.
    c = cam(rn, x, target=[1, 2])
    torch.testing.assert_close(c.upsampled, ours.upsampled, rtol=1e-4, atol=1e-5)
    assert count_hooks(rn.model) == 0


def score_cam_reference_library(monkeypatch, model, layer, x, target):
    """pytorch-grad-cam's Score-CAM with its masks upsampled like ours (align_corners=False).

    It uses nn.UpsamplingBilinear2d, i.e. align_corners=True, a different but equally valid
    choice; the notebook shows the difference it makes.
    """
    monkeypatch.setattr(
        torch.nn,
        "UpsamplingBilinear2d",
        lambda size: nn.Upsample(size=size, mode="bilinear", align_corners=False),
    )
    ref = ScoreCAM(model, target_layers=[layer])
    ref.batch_size = 64
    try:
        return ref(x, targets=[ClassifierOutputTarget(target)])
    finally:
        ref.activations_and_grads.release()


def test_score_cam_vs_pytorch_grad_cam_lite0(lite0, cat_x, monkeypatch) -> None:
    # bn2 has 1280 channels (hundreds of passes); blocks.1 (24 channels) exercises the same code.
    layer = lite0.model.blocks[1]
    ours = score_cam(
        lite0, cat_x[:1], target=282, layer=layer, variant="softmax_logits", progress=False
    )
    theirs = score_cam_reference_library(monkeypatch, lite0.model, layer, cat_x[:1], 282)
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-4)


def test_score_cam_vs_pytorch_grad_cam_resnet50(monkeypatch) -> None:
    torch.manual_seed(0)
    rn = load_model("resnet50", weights=None, device="cpu")
    x = torch.randn(1, 3, 64, 64)
    layer = rn.model.layer1[0].conv1  # 64 channels
    ours = score_cam(rn, x, target=5, layer=layer, variant="softmax_logits", progress=False)
    theirs = score_cam_reference_library(monkeypatch, rn.model, layer, x, 5)
    np.testing.assert_allclose(ours.upsampled.numpy(), theirs, atol=1e-4)


# ------------------------------------------------------------------------------------------
# errors and state
# ------------------------------------------------------------------------------------------


def test_clear_errors(lite0, tiny, xs, cat_x) -> None:
    with pytest.raises(LayerError, match="unknown layer 'bn3'.*closest.*bn2"):
        grad_cam(lite0, cat_x[:1], layer="bn3")
    with pytest.raises(ModelError, match="unknown class name 'tiger kat'.*did you mean"):
        grad_cam(lite0, cat_x[:1], target="tiger kat")
    with pytest.raises(CamError, match="needs a LoadedModel"):
        grad_cam(tiny, xs, target="cat", layer="features.2")
    with pytest.raises(CamError, match="layer is required"):
        score_cam(tiny, xs)
    with pytest.raises(CamError, match="2 images"):
        grad_cam(tiny, xs, target=[1, 2, 3], layer="features.2")
    with pytest.raises(CamError, match="batch"):
        grad_cam(tiny, xs[0], layer="features.2")
    with pytest.raises(CamError, match="not GAP -> Linear"):
        cam(tiny, xs, layer="features.4")  # before the last ReLU: mean + Linear != logits
    with pytest.raises(CamError, match="variant"):
        score_cam(tiny, xs, layer="features.2", variant="logits")
    assert count_hooks(lite0.model) == 0 and count_hooks(tiny) == 0


def test_cam_on_vgg16_explains_why_not() -> None:
    vgg = load_model("vgg16", weights=None, device="cpu")
    with pytest.raises(CamError, match="global average pooling -> one Linear.*vgg16.*grad_cam"):
        cam(vgg, torch.zeros(1, 3, 32, 32))


def test_model_left_as_found(xs) -> None:
    torch.manual_seed(0)
    net = TinyNet().double().train()
    net.features[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for fn in (cam, grad_cam, grad_cam_pp):
        layer = "features.5" if fn is cam else "features.2"
        fn(net, xs, layer=layer)
    score_cam(net, xs, layer="features.2", progress=False)
    assert net.training and all(m.training for m in net.modules())
    assert not net.features[0].weight.requires_grad and net.fc.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)  # BN running stats untouched
    assert count_hooks(net) == 0


def test_hooks_removed_after_exception_and_many_calls(tiny, xs) -> None:
    with pytest.raises(CamError):
        grad_cam(tiny, xs, target=99, layer="features.2")  # fails inside the capture block
    assert count_hooks(tiny) == 0
    for _ in range(100):
        grad_cam(tiny, xs[:1], layer="features.2")
    assert count_hooks(tiny) == 0


def test_score_cam_identical_images_share_passes(tiny, xs) -> None:
    calls = []
    handle = tiny.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        both = score_cam(
            tiny,
            xs[:1].expand(2, -1, -1, -1),
            target=[1, 4],
            layer="features.2",
            batch_size=2,
            progress=False,
        )
    finally:
        handle.remove()
    channels = 5
    assert calls[0] == 2  # the unperturbed batch
    assert sum(calls[1:]) == channels  # then one masked pass per channel, for both targets
    for n, c in enumerate([1, 4]):
        single = score_cam(tiny, xs[:1], target=c, layer="features.2", progress=False)
        torch.testing.assert_close(both.weights[n], single.weights[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(both.upsampled[n], single.upsampled[0], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# Score-CAM's baseline (CVPR-W Alg. 1) next to the probability variant (arXiv v1)
# ------------------------------------------------------------------------------------------


def reference_increase_weights(model, x, target, a, base, variant):
    """f(X_b + H^k (X - X_b)) - f(X_b) per channel, written out; softmax over channels last."""
    w = torch.zeros(a.shape[0], dtype=x.dtype)
    with torch.no_grad():

        def f(image: torch.Tensor) -> torch.Tensor:
            out = model(image[None])[0]
            return torch.softmax(out, 0)[target] if variant == "probability" else out[target]

        for k in range(a.shape[0]):
            up = F.interpolate(a[None, k : k + 1], size=x.shape[-2:], mode="bilinear")[0, 0]
            mask = minmax(up) if a[k].max() > a[k].min() else torch.zeros_like(up)
            w[k] = f(base + mask * (x - base)) - f(base)
    return torch.softmax(w, 0) if variant == "softmax_logits" else w


@pytest.mark.parametrize("variant", ["probability", "softmax_logits"])
def test_score_cam_baseline_matches_reference(variant) -> None:
    net = constant_channel_net()  # a zero and a constant channel: both show X_b itself
    torch.manual_seed(4)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    base = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).view(3, 1, 1)
    res = score_cam(
        net, x, target=[1, 6], layer="features.2", variant=variant, baseline=base, progress=False
    )
    for n, c in enumerate([1, 6]):
        a = net.features[:3](x[n : n + 1])[0].detach()
        w = reference_increase_weights(net, x[n], c, a, base.expand_as(x[n]), variant)
        torch.testing.assert_close(res.weights[n], w, rtol=1e-10, atol=1e-14)
    if variant == "probability":
        assert (res.weights[:, :2] == 0).all()  # f(X_b) - f(X_b)


def test_dropping_the_baseline_score_is_not_harmless_for_the_probability_variant(tiny, xs):
    """With X_b = 0 (dataset mean) both see the same masked images, X o H^k; the CVPR-W
    increase subtracts c = p_c(X_b) from every weight. ReLU(sum (w_k - c) A^k) is not
    ReLU(sum w_k A^k): c sum_k A^k is not a constant map, so even the normalised maps differ.
    Under a softmax over channels (Alg. 1, pytorch-grad-cam) the constant cancels exactly."""
    kwargs = {"target": [1, 6], "layer": "features.2", "progress": False}
    plain = score_cam(tiny, xs, **kwargs)
    increase = score_cam(tiny, xs, baseline="dataset_mean", **kwargs)
    with torch.no_grad():
        c = torch.softmax(tiny(torch.zeros_like(xs)), 1)[[0, 1], [1, 6]]
    torch.testing.assert_close(increase.weights, plain.weights - c[:, None], rtol=0, atol=1e-15)
    a = tiny.features[:3](xs).detach()
    shifted = torch.relu(torch.einsum("nk,nkhw->nhw", plain.weights - c[:, None], a))
    torch.testing.assert_close(increase.low_res, shifted, rtol=1e-12, atol=1e-14)
    assert (increase.upsampled - plain.upsampled).abs().max() > 0.05
    logits = score_cam(tiny, xs, variant="softmax_logits", **kwargs)
    alg1 = score_cam(tiny, xs, variant="softmax_logits", baseline="dataset_mean", **kwargs)
    torch.testing.assert_close(alg1.weights, logits.weights, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(alg1.upsampled, logits.upsampled, rtol=1e-10, atol=1e-12)


def test_score_cam_baseline_on_lite0(lite0, cat_x) -> None:
    """How much f(X_b) matters depends on how much the baseline still scores the class: a
    blurred cat is still a tiger cat to Lite0 (p about 0.3), a black image is not (p < 0.001).
    The map computed from the same masked images without subtracting p_c(X_b) is compared."""
    with torch.no_grad(), capture(lite0.model, "blocks.1") as cap:
        lite0.model(cat_x[:1])
    for name, expect_large in (("blur", True), ("black", False)):
        res = score_cam(lite0, cat_x[:1], 282, layer="blocks.1", baseline=name, progress=False)
        base = metrics.make_baseline(cat_x[:1], name, mean=lite0.mean, std=lite0.std)
        with torch.no_grad():
            c = float(torch.softmax(lite0.model(base), 1)[0, 282])
        kept = torch.relu(torch.einsum("nk,nkhw->nhw", res.weights + c, cap.activations))
        diff = float((cam_to_image(kept, (224, 224)) - res.upsampled).abs().max())
        if expect_large:
            assert c > 0.1 and diff > 0.2, (name, c, diff)
        else:
            assert c < 0.01 and diff < 0.05, (name, c, diff)
    with pytest.raises(CamError, match="mean=loaded.mean"):
        score_cam(lite0.model, cat_x[:1], 282, layer="blocks.1", baseline="black")
