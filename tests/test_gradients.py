"""The gradient family against captum, on the real Lite0 and on ResNet50/VGG16 with random weights.

captum's ``GuidedBackprop`` and ``GuidedGradCam`` modify ``nn.ReLU`` modules only; Lite0's
activations are ``nn.ReLU6``. For the comparison on Lite0, captum runs on a copy of the model
whose ReLU6 modules are a subclass of ``nn.ReLU`` that computes ReLU6 (so captum hooks them),
and on the original model it must equal the plain gradient.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from xai_helpers import gradients as G
from xai_helpers.explain import explain
from xai_helpers.hooks import count_hooks
from xai_helpers.images import sample_path
from xai_helpers.models import load_model
from xai_helpers.registry import method_names

captum_attr = pytest.importorskip("captum.attr")

METHODS = [
    "saliency",
    "gradient_x_input",
    "guided_backprop",
    "guided_grad_cam",
    "smooth_grad",
    "integrated_gradients",
]


def close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> float:
    """Largest difference relative to the largest |theirs|; asserts it is below ``rel``."""
    diff = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
    assert diff < rel, diff
    return diff


@pytest.fixture(scope="module")
def cat(lite0):
    x = lite0.preprocess(sample_path("chelsea"))
    with torch.no_grad():
        c = int(lite0.model(x).argmax())
    return x, c


@pytest.fixture(scope="module")
def lite0_twin(lite0):
    return G.relu6_as_relu(lite0.model)


@pytest.fixture(autouse=True)
def no_captum_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about its hooks on every call
        yield


# ----------------------------------------------------------------------------------------------
# against captum on the real Lite0
# ----------------------------------------------------------------------------------------------


def test_saliency_and_input_x_gradient_equal_captum(lite0, cat):
    x, c = cat
    ours = G.saliency(lite0, x, c).attributions
    close(ours, captum_attr.Saliency(lite0.model).attribute(x, target=c, abs=False))
    close(
        G.channel_max_abs(ours)[:, None],
        captum_attr.Saliency(lite0.model).attribute(x, target=c).amax(1, keepdim=True),
    )
    ixg = captum_attr.InputXGradient(lite0.model).attribute(x, target=c)
    close(G.gradient_x_input(lite0, x, c).attributions, ixg)


def test_guided_backprop_equals_captum_with_relu6_hooked(lite0, lite0_twin, cat):
    x, c = cat
    ours = G.guided_backprop(lite0, x, c).attributions
    close(ours, captum_attr.GuidedBackprop(lite0_twin).attribute(x, target=c))
    # captum leaves ReLU6 alone: on the real Lite0 its "guided" backprop is the gradient
    theirs = captum_attr.GuidedBackprop(lite0.model).attribute(x, target=c)
    close(theirs, G.saliency(lite0, x, c).attributions)
    assert float((ours - theirs).abs().max()) > 0.1 * float(ours.abs().max())


def test_guided_grad_cam_equals_captum(lite0, lite0_twin, cat):
    x, c = cat
    ours = G.guided_grad_cam(lite0, x, c).attributions
    ggc = captum_attr.GuidedGradCam(lite0_twin, lite0_twin.bn2)
    close(ours, ggc.attribute(x, target=c, interpolate_mode="bilinear"))


def test_smooth_grad_equals_noise_tunnel_with_the_same_noise(lite0, cat):
    x, c = cat
    ours = G.smooth_grad(lite0, x, c, noise_level=0.1, n_samples=6, seed=3, batch_size=4)
    sigma = 0.1 * float(x.max() - x.min())
    torch.manual_seed(3)  # captum draws from the global generator, all samples at once
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(lite0.model))
    theirs = nt.attribute(x, nt_type="smoothgrad", nt_samples=6, stdevs=sigma, target=c, abs=False)
    close(ours.attributions, theirs, rel=1e-4)


def test_integrated_gradients_equals_captum(lite0, cat):
    x, c = cat
    black = torch.full_like(x, -1.0)  # (0 - 0.5) / 0.5
    ig = captum_attr.IntegratedGradients(lite0.model)
    ours = G.integrated_gradients(lite0, x, c, "black", steps=4, batch_size=3)
    theirs, delta = ig.attribute(x, black, target=c, n_steps=4, return_convergence_delta=True)
    close(ours.attributions, theirs, rel=1e-4)
    assert abs(float(ours.delta - delta)) < 1e-3 * float(ours.score_difference.abs())
    # captum's trapezoid weights are 1/m (halved at the ends), summing to (m - 1)/m, not 1;
    # ours are 1/(m - 1), the trapezoid rule on m points: the two differ by that factor
    ours = G.integrated_gradients(lite0, x, c, "black", steps=4, rule="riemann_trapezoid")
    theirs = ig.attribute(x, black, target=c, n_steps=4, method="riemann_trapezoid")
    close(ours.attributions * 3 / 4, theirs, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# ResNet50 and VGG16 with random weights (in-place ReLUs, a ReLU module used three times)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["resnet50", "vgg16"])
def random_model(request):
    torch.manual_seed(0)
    lm = load_model(request.param, device="cpu", weights=None)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return lm, x


def test_random_models_equal_captum(random_model):
    # random weights give large logits, so float32 sums in another order differ by ~1e-3
    lm, x = random_model
    model, t = lm.model, [3, 7]
    close(
        G.guided_backprop(lm, x, t).attributions,
        captum_attr.GuidedBackprop(model).attribute(x, target=t),
        rel=1e-2,
    )
    layer = dict(model.named_modules())[lm.cam_layer]
    theirs = captum_attr.GuidedGradCam(model, layer).attribute(
        x, target=t, interpolate_mode="bilinear"
    )
    close(G.guided_grad_cam(lm, x, t).attributions, theirs, rel=1e-2)
    base = torch.zeros_like(x)
    ours = G.integrated_gradients(lm, x, t, base, steps=4, rule="riemann_middle", batch_size=3)
    ig = captum_attr.IntegratedGradients(model)
    close(ours.attributions, ig.attribute(x, base, t, n_steps=4, method="riemann_middle"), 1e-2)
    assert count_hooks(model) == 0


# ----------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------


def test_completeness_error_shrinks_with_steps(lite0, cat):
    x, c = cat
    errors = [
        float(G.integrated_gradients(lite0, x, c, steps=s, rule="riemann_trapezoid").delta.abs())
        for s in (16, 64)
    ]
    score = float(G.integrated_gradients(lite0, x, c, steps=1).score_difference.abs())
    assert errors[1] < errors[0] / 10 and errors[1] < 0.1 * score, errors


def test_path_rules_integrate():
    for rule in G.RULES:
        a, w = G.path_rule(16, rule)
        assert abs(float(w.sum()) - 1) < 1e-12 and a.min() >= 0 and a.max() <= 1
    a, w = G.path_rule(3, "gausslegendre")  # exact up to degree 5
    assert abs(float((w * a**5).sum()) - 1 / 6) < 1e-12


def test_hooks_removed_and_state_restored_after_error(lite0, cat):
    x, _ = cat
    model = lite0.model
    before = count_hooks(model)
    with pytest.raises(ValueError, match="out of range"):
        G.guided_backprop(lite0, x, 5000)
    with pytest.raises(RuntimeError, match="boom"), G.guided_relus(model):
        raise RuntimeError("boom")
    assert count_hooks(model) == before
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # after the error, the plain gradient is the plain gradient again
    close(G.saliency(lite0, x, 1).attributions, captum_attr.Saliency(model).attribute(x, 1, False))


def test_seeded_and_batched_runs_are_deterministic(lite0):
    x = lite0.preprocess(sample_path("coffee"))[:, :, ::4, ::4].contiguous()
    a = G.smooth_grad(lite0, x, 967, n_samples=5, seed=1, batch_size=5).attributions
    b = G.smooth_grad(lite0, x, 967, n_samples=5, seed=1, batch_size=2).attributions
    other = G.smooth_grad(lite0, x, 967, n_samples=5, seed=2, batch_size=5).attributions
    assert torch.allclose(a, b, atol=1e-6 * float(a.abs().max()))
    assert not torch.allclose(a, other, atol=0.01 * float(a.abs().max()))
    one = G.integrated_gradients(lite0, x, 967, steps=6, batch_size=6).attributions
    many = G.integrated_gradients(lite0, x, 967, steps=6, batch_size=4).attributions
    assert torch.allclose(one, many, atol=1e-6 * float(one.abs().max()))


def test_bad_input_messages(lite0, cat):
    x, c = cat
    with pytest.raises(G.GradientError, match="noise_level"):
        G.smooth_grad(lite0, x, c, noise_level=-0.1)
    with pytest.raises(G.GradientError, match="n_samples must be a positive"):
        G.smooth_grad(lite0, x, c, n_samples=0)
    with pytest.raises(G.GradientError, match="unknown rule"):
        G.integrated_gradients(lite0, x, c, rule="simpson")
    with pytest.raises(G.GradientError, match="normalisation"):
        G.integrated_gradients(lite0.model, x, c, baseline="black")
    with pytest.raises(G.GradientError, match="channel"):
        G.saliency(lite0, x[:, :1])
    with pytest.raises(G.GradientError, match="no ReLU module"):
        G.guided_backprop(lite0, x, c, activations=(nn.ReLU,))


def test_registry_and_explain(lite0):
    assert set(METHODS) <= set(method_names(family="gradient"))
    x = lite0.preprocess(sample_path("chelsea"))[:, :, ::4, ::4].contiguous()
    fast = {"smooth_grad": {"n_samples": 2}, "integrated_gradients": {"steps": 2}}
    for name in METHODS:
        m = explain(lite0, x, name, **fast.get(name, {}))
        assert m.shape == (1, 56, 56) and torch.isfinite(m).all(), name
    assert count_hooks(lite0.model) == 0
