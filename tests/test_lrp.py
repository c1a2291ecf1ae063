"""Tests of xai_helpers.lrp: every rule against a slow matrix-form reference, conservation, the
model adapters against zennit (an independent LRP implementation), and the model left as found.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xai_helpers.lrp import (
    COMPOSITES,
    Composite,
    Epsilon,
    Gamma,
    LrpError,
    ZBox,
    build_network,
    dense_to_conv,
    lrp,
    pixel_bounds,
    vgg_to_fully_convolutional,
)
from xai_helpers.models import load_model

zennit = pytest.importorskip("zennit")
from zennit_reference import (  # noqa: E402
    zennit_lrp,
    zennit_ready_lite,
    zennit_ready_resnet,
    zennit_ready_vgg,
)

# --------------------------------------------------------------------------------------------
# slow matrix-form references: contributions z_jk = a_j w_jk written out explicitly
# --------------------------------------------------------------------------------------------


def _share(contrib: torch.Tensor, denom: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_j = sum_k contrib[n, k, j] / denom[n, k] * r[n, k], with 0 where denom == 0."""
    out = torch.zeros(contrib.shape[0], contrib.shape[2], dtype=contrib.dtype)
    for n in range(contrib.shape[0]):
        for k in range(contrib.shape[1]):
            if denom[n, k] != 0:
                out[n] += contrib[n, k] / denom[n, k] * r[n, k]
    return out


def reference(rule, w, b, a, r):
    """The rule for y = W a + b, from its textbook formula. w (K, J), b (K,), a/r (N, J)/(N, K)."""
    z_jk = a[:, None, :] * w[None]  # (N, K, J)
    z = z_jk.sum(-1) + b
    if isinstance(rule, Epsilon):
        sign = torch.where(z >= 0, 1.0, -1.0).to(z)
        return _share(z_jk, z + rule.epsilon * sign if rule.epsilon else z, r)
    if isinstance(rule, Gamma):
        g = rule.gamma
        up = z_jk + g * z_jk.clamp(min=0)
        down = z_jk + g * z_jk.clamp(max=0)
        den_up = up.sum(-1) + b + g * b.clamp(min=0)
        den_down = down.sum(-1) + b + g * b.clamp(max=0)
        out = _share(up, den_up, r * (z > 0)) + _share(down, den_down, r * (z < 0))
        return out
    if isinstance(rule, ZBox):
        lo, hi = rule.low.expand_as(a), rule.high.expand_as(a)
        zb = z_jk - lo[:, None, :] * w.clamp(min=0) - hi[:, None, :] * w.clamp(max=0)
        return _share(zb, zb.sum(-1), r)
    raise AssertionError(rule)


def _rules(j: int):
    g = torch.Generator().manual_seed(1)
    low = -torch.rand(1, j, generator=g, dtype=torch.float64) - 1
    high = torch.rand(1, j, generator=g, dtype=torch.float64) + 1
    return [Epsilon(0.0), Epsilon(0.3), Gamma(0.25), Gamma(1.0), ZBox(low, high)]


@pytest.mark.parametrize("index", range(5))
def test_rules_match_matrix_reference_on_dense_layer(index):
    torch.manual_seed(0)
    n, j, k = 3, 7, 5
    rule = _rules(j)[index]
    w, b = torch.randn(k, j, dtype=torch.float64), torch.randn(k, dtype=torch.float64)
    a = torch.randn(n, j, dtype=torch.float64)  # mixed signs exercise the generalised gamma
    if isinstance(rule, ZBox):
        a = torch.rand(n, j, dtype=torch.float64) * 2 - 1  # inside the box
    r = torch.randn(n, k, dtype=torch.float64)
    ours = rule(lambda x, w_, b_: F.linear(x, w_, b_), w, b, a, r)
    torch.testing.assert_close(ours, reference(rule, w, b, a, r), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("groups, stride, padding", [(1, 1, 1), (1, 2, 0), (2, 2, 1)])
def test_rules_match_matrix_reference_on_conv_layer(index, groups, stride, padding):
    """A convolution is a dense layer with a structured matrix: build it column by column."""
    torch.manual_seed(0)
    c_in, c_out, size = 2, 4, 5
    conv = nn.Conv2d(c_in, c_out, 3, stride, padding, groups=groups).double()
    fn = lambda x, w_, b_: F.conv2d(x, w_, b_, stride, padding, 1, groups)  # noqa: E731
    j = c_in * size * size
    basis = torch.eye(j, dtype=torch.float64).view(j, c_in, size, size)
    with torch.no_grad():
        matrix = fn(basis, conv.weight, None).flatten(1).T  # (K, J)
        bias = fn(torch.zeros(1, c_in, size, size, dtype=torch.float64), conv.weight, conv.bias)
    bias = bias.flatten()
    rule = _rules(j)[index]
    if isinstance(rule, ZBox):
        rule = ZBox(rule.low.view(1, c_in, size, size), rule.high.view(1, c_in, size, size))
    a = torch.rand(2, c_in, size, size, dtype=torch.float64) * 2 - 1
    r = torch.randn(2, matrix.shape[0], dtype=torch.float64)
    out_shape = fn(a, conv.weight, conv.bias).shape
    ours = rule(fn, conv.weight.detach(), conv.bias.detach(), a, r.view(out_shape))
    ref_rule = (
        rule if not isinstance(rule, ZBox) else ZBox(rule.low.flatten(1), rule.high.flatten(1))
    )
    expected = reference(ref_rule, matrix, bias, a.flatten(1), r)
    torch.testing.assert_close(ours.flatten(1), expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# conservation
# --------------------------------------------------------------------------------------------


def test_lrp0_conserves_relevance_exactly_without_biases():
    """Bias-free ReLU ResNet (BN at init folds to zero bias): every layer holds the logit."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    nn.init.zeros_(model.fc.bias)
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    res = lrp(model, x, composite="lrp0", return_layers=True)
    logit = res.logits[torch.arange(2), res.target]
    assert len(res.layer_sums) > 10
    for name, total in res.layer_sums.items():
        torch.testing.assert_close(total, logit, rtol=1e-9, atol=0, msg=name)
    torch.testing.assert_close(res.relevance.sum((1, 2)), logit, rtol=1e-9, atol=0)


def test_biases_and_epsilon_absorb_relevance():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(4, 6, 1, 1, dtype=torch.float64)
    flat = nn.Sequential(nn.Flatten(), *net).eval()
    exact = lrp(flat, x, composite="lrp0")
    logit = exact.logits.gather(1, exact.target[:, None])[:, 0]
    # with biases the total is not the logit; ε only ever shrinks the magnitudes
    assert (exact.relevance.sum((1, 2)) - logit).abs().max() > 1e-3
    eps = lrp(flat, x, composite="epsilon")
    assert eps.relevance.abs().sum() < exact.relevance.abs().sum()


# --------------------------------------------------------------------------------------------
# zennit as the independent reference
# --------------------------------------------------------------------------------------------


def _max_rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _non_degenerate(model: nn.Module, x: torch.Tensor) -> None:
    """Rescale the last layer so random logits are O(1): relevance then has a sensible size."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        scale = model(x).std()
        last.weight /= scale
        last.bias.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return load_model("vgg16", weights=None, device="cpu")


def test_vgg16_dense_to_conv_preserves_logits(vgg16):
    conv = vgg_to_fully_convolutional(vgg16.model)
    assert not any(isinstance(m, nn.Linear) for m in conv.modules())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = vgg16.model(x)
        got = conv(x)
    assert got.shape == (1, 1000)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_vgg16_lrp_matches_zennit(vgg16):
    """32-pixel input (the conv part is size-agnostic; avgpool stretches 1x1 to 7x7).

    float32 through 16 layers: agreement to 1e-4 of the largest relevance (float32 round-off,
    amplified by the divisions).
    """
    torch.manual_seed(1)
    model = vgg16.model  # random weights owned by this test module
    x = torch.randn(1, 3, 32, 32)
    _non_degenerate(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items() if "classifier" not in k}
    res = lrp(dataclasses.replace(vgg16, model=model), x)
    net = build_network(model)
    rules = net.rules("epsilon-gamma-box")
    assert [type(rules[n]).__name__ for n in net.features[:2]] == ["ZBox", "Gamma"]
    assert [rules[n] for n in net.head] == [Epsilon(0.0)] * 3
    assert sum(isinstance(r, Gamma) for r in rules.values()) == 6  # conv1_2..conv3_3
    low, high = pixel_bounds(vgg16.mean, vgg16.std)
    zmodel, extra = zennit_ready_vgg(model)
    theirs = zennit_lrp(zmodel, x, res.target, rules, extra, low=low.float(), high=high.float())
    diff = _max_rel_diff(res.input_relevance, theirs)
    print(f"VGG16 max |ours - zennit| / max |zennit| = {diff:.2e}")
    assert diff < 1e-4, diff
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_lite0_batchnorm_folding_preserves_outputs(lite0):
    x = lite0.preprocess("data/chelsea.png")
    net = build_network(lite0.model)
    with torch.no_grad():
        expected = lite0.model(x)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    double, xd = copy.deepcopy(lite0.model).double(), x.double()[:, :, 80:144, 80:144]
    torch.testing.assert_close(build_network(double)(xd), double(xd), rtol=0, atol=1e-10)


def test_lite0_lrp_matches_zennit(lite0):
    """Real weights, the cat photo's central 112 px (float32: float64 depthwise convolutions are
    six times slower on CPU). Tolerance 1e-5 of the largest relevance: float32 round-off through
    49 layers of divisions; any difference of rule would show at order 1."""
    x = lite0.preprocess("data/chelsea.png")[:, :, 56:168, 56:168]
    model = copy.deepcopy(lite0.model)
    loaded = dataclasses.replace(lite0, model=model)
    res = lrp(loaded, x, return_layers=True)
    rules = build_network(model).rules()
    zmodel, extra = zennit_ready_lite(model)
    with torch.no_grad():
        torch.testing.assert_close(zmodel(x), model(x), rtol=0, atol=1e-4)
    low, high = pixel_bounds(lite0.mean, lite0.std)
    low, high = low.float(), high.float()
    theirs = zennit_lrp(zmodel, x, res.target, rules, extra, low=low, high=high)
    diff = _max_rel_diff(res.input_relevance, theirs)
    print(f"Lite0 max |ours - zennit| / max |zennit| = {diff:.2e}")
    assert diff < 1e-5, diff
    assert list(res.layer_sums)[:3] == ["output", "classifier", "global_pool"]


def _resnet50_with_random_bn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = load_model("resnet50", weights=None, device="cpu").model
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is tested
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.double().eval()


def test_resnet50_folding_and_lrp_match_zennit():
    model = _resnet50_with_random_bn(0)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    _non_degenerate(model, x)
    net = build_network(model)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    low, high = pixel_bounds((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    res = lrp(model, x, bounds=(low, high))
    zmodel, extra, canonizers = zennit_ready_resnet(model)
    theirs = zennit_lrp(zmodel, x, res.target, net.rules(), extra, canonizers, low=low, high=high)
    diff = _max_rel_diff(res.input_relevance, theirs)
    print(f"ResNet50 max |ours - zennit| / max |zennit| = {diff:.2e}")
    assert diff < 1e-9, diff


# --------------------------------------------------------------------------------------------
# the model is left as found; inputs and errors
# --------------------------------------------------------------------------------------------


def _state(model: nn.Module):
    return (
        model.training,
        {k: (v.clone(), v.requires_grad) for k, v in model.named_parameters()},
        {k: v.clone() for k, v in model.named_buffers()},
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    )


def test_model_parameters_and_hooks_unchanged(lite0):
    before = _state(lite0.model)
    x = lite0.preprocess(["data/chelsea.png", "data/coffee.png"])[:, :, 32:192, 32:192]
    res = lrp(lite0, x, target=["tiger cat", 967], return_layers=True)
    assert res.relevance.shape == (2, 160, 160) and res.input_relevance.shape == (2, 3, 160, 160)
    assert res.target.tolist() == [282, 967]
    after = _state(lite0.model)
    assert before[0] == after[0] and before[3] == after[3]
    for k, (value, grad) in before[1].items():
        assert torch.equal(value, after[1][k][0]) and grad == after[1][k][1], k
        assert lite0.model.get_parameter(k).grad is None
    for k, value in before[2].items():
        assert torch.equal(value, after[2][k]), k


def test_batch_equals_single_images():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 5),
        )
        .double()
        .eval()
    )
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    bounds = (-3.0, 3.0)
    batch = lrp(model, x, target=[0, 1, 2], bounds=bounds).input_relevance
    for i in range(3):
        single = lrp(model, x[i : i + 1], target=i, bounds=bounds).input_relevance
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 10}, "not a class index"),
        ({"target": "cat"}, "class names need a LoadedModel"),
        ({"composite": "nope"}, "unknown composite"),
        ({"bounds": None}, "needs input bounds"),
    ],
)
def test_clear_errors(kwargs, match):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 5, 5))
    model.eval()
    kwargs = {"bounds": (-1.0, 1.0), **kwargs}
    with pytest.raises(LrpError, match=match):
        lrp(model, torch.zeros(1, 3, 5, 5), **kwargs)


def test_unsupported_layers_and_inputs_fail_loudly():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Sigmoid(), nn.Flatten()).eval()
    with pytest.raises(LrpError, match="Sigmoid"):
        lrp(model, torch.zeros(1, 3, 5, 5), bounds=(0.0, 1.0))
    with pytest.raises(LrpError, match="x\\[None\\]"):
        lrp(model, torch.zeros(3, 5, 5))
    assert set(COMPOSITES) >= {"epsilon-gamma-box", "epsilon", "lrp0"}


# --------------------------------------------------------------------------------------------
# LRP-gamma as run: the paper's rule where it applies, the sign-generalised rule elsewhere
# --------------------------------------------------------------------------------------------


def paper_gamma(w, b, a, r, gamma):
    """Montavon et al. 2019, Sec. 10.2.1, as printed: rho(w) = w + gamma w+, for every output."""
    rho_w, rho_b = w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0)
    contrib = a[:, None, :] * rho_w[None]  # (N, K, J)
    return _share(contrib, contrib.sum(-1) + rho_b, r)


def generalised_gamma(w, b, a, r, gamma):
    """The rule the code runs, from its formula: agreeing contributions amplified, per output."""
    out = torch.zeros_like(a)
    for n in range(a.shape[0]):
        for k in range(w.shape[0]):
            z_jk = [float(a[n, j] * w[k, j]) for j in range(w.shape[1])]
            z_k = sum(z_jk) + float(b[k])
            if z_k == 0:
                continue
            keep = (lambda v: max(v, 0.0)) if z_k > 0 else (lambda v: min(v, 0.0))
            denom = sum(v + gamma * keep(v) for v in z_jk) + float(b[k]) + gamma * keep(float(b[k]))
            for j in range(w.shape[1]):
                out[n, j] += (z_jk[j] + gamma * keep(z_jk[j])) / denom * float(r[n, k])
    return out


def test_gamma_is_the_papers_rule_for_positive_inputs_and_outputs():
    torch.manual_seed(5)
    w = torch.randn(4, 6, dtype=torch.float64)  # weights of both signs
    b = torch.rand(4, dtype=torch.float64) + 10.0  # every z_k > 0
    a = torch.rand(3, 6, dtype=torch.float64)  # inputs >= 0, as after a ReLU
    assert ((a @ w.T + b) > 0).all() and (w < 0).any()
    r = torch.randn(3, 4, dtype=torch.float64)
    ours = Gamma(0.25)(lambda x, w_, b_: F.linear(x, w_, b_), w, b, a, r)
    torch.testing.assert_close(ours, paper_gamma(w, b, a, r, 0.25), rtol=1e-10, atol=1e-12)


def test_gamma_on_inputs_of_both_signs_is_the_generalised_rule():
    """Negative inputs and negative outputs (as after Lite0's linear bottlenecks): the code
    equals the explicit sums of the generalised rule, and not the paper's formula."""
    torch.manual_seed(6)
    w, b = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a = torch.randn(4, 7, dtype=torch.float64)
    z = a @ w.T + b
    assert (a < 0).any() and (a > 0).any() and (z < 0).any() and (z > 0).any()
    r = torch.randn(4, 5, dtype=torch.float64)
    ours = Gamma(0.5)(lambda x, w_, b_: F.linear(x, w_, b_), w, b, a, r)
    torch.testing.assert_close(ours, generalised_gamma(w, b, a, r, 0.5), rtol=1e-10, atol=1e-12)
    assert (ours - paper_gamma(w, b, a, r, 0.5)).abs().max() > 1e-2


def test_lite0_feeds_gamma_negative_inputs(lite0):
    """Where the difference matters: a gamma layer of Lite0 sees inputs of both signs."""
    net = build_network(lite0.model)
    rules = net.rules()
    x = lite0.preprocess(["data/chelsea.png"])
    net(x)
    from xai_helpers.lrp.network import Affine

    def affine_steps(steps):
        for s in steps:
            if isinstance(s, Affine):
                yield s
            for inner in getattr(s, "body", []) + getattr(s, "skip", []):
                yield from affine_steps([inner])

    mixed = [
        s.name
        for s in affine_steps(net.steps)
        if isinstance(rules[s.name], Gamma) and bool((s._input < 0).any())
    ]
    assert mixed, "no gamma layer of Lite0 sees negative inputs"


# --------------------------------------------------------------------------------------------
# adapters by type, rules by type, unsupported blocks
# --------------------------------------------------------------------------------------------


def test_torchvision_mobilenet_block_is_named_with_the_fix():
    from torchvision.models.mobilenetv2 import InvertedResidual

    mobilenet = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(LrpError, match=r"the model \(MobileNetV2.*register_adapter\(MobileNetV2"):
        lrp(mobilenet, x, target=0, bounds=(-3.0, 3.0))
    stack = nn.Sequential(mobilenet.features[:3], nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(LrpError, match=r"'0\.1' \(InvertedResidual, from torchvision") as info:
        lrp(stack, x, target=0, bounds=(-3.0, 3.0))
    assert "register_adapter(InvertedResidual, fn)" in str(info.value)
    assert isinstance(mobilenet.features[1], InvertedResidual)


def test_a_registered_adapter_makes_mobilenet_explainable(monkeypatch):
    """The table is open: two small adapters (the block and the model's forward) suffice, and
    the rebuilt network is checked against the model's logits on every call."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    from xai_helpers.lrp import ADAPTERS, Step, register_adapter, translate
    from xai_helpers.lrp.network import Flatten, Pool, Residual

    def block(name: str, module: nn.Module) -> list[Step]:
        body = translate([(f"{name}.conv", module.conv)])
        return [Residual(name, body, [])] if module.use_res_connect else body

    def model(name: str, module: nn.Module) -> list[Step]:  # features, mean pool, classifier
        pool = Pool("pool", lambda t: F.adaptive_avg_pool2d(t, 1))
        return [*translate([("features", module.features)]), pool, Flatten("flatten"),
                *translate([("classifier", module.classifier)])]

    monkeypatch.setitem(ADAPTERS, InvertedResidual, block)  # removed again after the test
    monkeypatch.setitem(ADAPTERS, torchvision.models.MobileNetV2, model)
    with pytest.raises(LrpError, match="already has an adapter"):
        register_adapter(torchvision.models.MobileNetV2, model)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    res = lrp(net, x, composite="lrp0", bounds=(-3.0, 3.0), return_layers=True)
    assert torch.isfinite(res.relevance).all() and len(res.layer_sums) > 10


def test_rules_by_layer_type():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
    ).eval()
    net = build_network(model)
    rules = net.rules("epsilon-gamma-box-by-type")
    assert [type(rules[n]).__name__ for n in ["0", "2", "6", "8"]] == [
        "ZBox", "Gamma", "Epsilon", "Epsilon"
    ]
    assert rules["6"] == Epsilon(1e-6)
    # by_type overrides the depth rules; first beats both
    mixed = Composite(
        first=ZBox(), lower=Epsilon(0.1), middle=Epsilon(0.2), top=Epsilon(0.0),
        by_type=((nn.Linear, Gamma(1.0)),),
    )
    rules = net.rules(mixed)
    assert isinstance(rules["0"], ZBox) and rules["2"] == Epsilon(0.1) and rules["8"] == Gamma(1.0)
    with pytest.raises(LrpError, match=r"no rule for layer '6' \(Linear\)"):
        net.rules(Composite(first=ZBox(), by_type=((nn.Conv2d, Gamma(0.25)),)))


def test_by_type_composite_matches_zennit_epsilon_gamma_box():
    """zennit's EpsilonGammaBox assigns its rules by layer type too: the same relevance."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox

    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(54, 10), nn.ReLU(), nn.Linear(10, 4),
    ).double().eval()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64) * 2 - 1
    low, high = torch.full_like(x, -1.0), torch.full_like(x, 1.0)
    ours = lrp(model, x, target=[1, 3], composite="epsilon-gamma-box-by-type", bounds=(-1.0, 1.0))
    r_out = torch.zeros(2, 4, dtype=torch.float64)
    r_out[[0, 1], [1, 3]] = ours.logits[[0, 1], [1, 3]]
    composite = EpsilonGammaBox(low=low, high=high, stabilizer=1e-12)
    with Gradient(model=model, composite=composite) as attributor:
        _, theirs = attributor(x.clone().requires_grad_(True), r_out)
    torch.testing.assert_close(ours.input_relevance, theirs, rtol=1e-6, atol=1e-9)


def test_lrp_counts_its_passes():
    from xai_helpers.metrics import measure_cost

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4)).eval()
    x = torch.rand(3, 3, 5, 5)
    _, cost = measure_cost(lambda: lrp(model, x, bounds=(0.0, 1.0), batch_size=3), model)
    # the model once (the logits), its canonized copy once forward and once backward
    assert (cost.forward_passes, cost.forward_images, cost.backward_passes) == (2, 6, 1)
    # by default the copy runs 2 images at a time: chunks of 2 and 1
    _, cost = measure_cost(lambda: lrp(model, x, bounds=(0.0, 1.0)), model)
    assert (cost.forward_passes, cost.forward_images, cost.backward_passes) == (3, 6, 2)


def test_lrp_in_chunks_equals_one_pass():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4)).eval()
    x = torch.rand(5, 3, 5, 5, dtype=torch.float64)
    model = model.double()
    whole = lrp(model, x, [0, 1, 2, 3, 0], bounds=(0.0, 1.0), return_layers=True, batch_size=5)
    for size in (1, 2, 4):
        parts = lrp(model, x, [0, 1, 2, 3, 0], bounds=(0.0, 1.0), return_layers=True,
                    batch_size=size)
        torch.testing.assert_close(parts.input_relevance, whole.input_relevance)
        assert list(parts.layer_sums) == list(whole.layer_sums)
        for k in whole.layer_sums:
            torch.testing.assert_close(parts.layer_sums[k], whole.layer_sums[k])
    with pytest.raises(LrpError, match="batch_size"):
        lrp(model, x, bounds=(0.0, 1.0), batch_size=0)


def test_dense_to_conv_shares_the_weights_and_computes_the_same():
    torch.manual_seed(0)
    linear = nn.Linear(2 * 3 * 3, 4)
    conv = dense_to_conv(linear, 2, 3)
    assert conv.weight.data_ptr() == linear.weight.data_ptr()  # a view: no copy
    assert conv.bias.data_ptr() == linear.bias.data_ptr()
    x = torch.randn(5, 2, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(conv(x).flatten(1), linear(x.flatten(1)))
    with pytest.raises(LrpError, match="not 3x3x3"):
        dense_to_conv(linear, 3, 3)
