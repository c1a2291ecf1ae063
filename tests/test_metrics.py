"""Metrics on constructed cases whose answers are known, on tiny float64 models."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn
from torchvision.transforms import v2 as T

from xai_helpers import metrics
from xai_helpers.metrics import MetricError

H = W = 8


class RegionModel(nn.Module):
    """Two logits; class 0's logit is a weighted sum over a 3 x 3 patch, nothing else is used."""

    def __init__(self) -> None:
        super().__init__()
        self.mask = torch.zeros(H, W, dtype=torch.bool)
        self.mask[1:4, 2:5] = True
        weight = torch.zeros(3, H, W, dtype=torch.float64)
        weight[:, self.mask] = torch.linspace(0.5, 1.5, 27, dtype=torch.float64).view(3, 9)
        self.register_buffer("weight", weight)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logit = (x * self.weight).flatten(1).sum(1)
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def positive_image(n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.5 + torch.rand(n, 3, H, W, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# deletion / insertion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["zeros", "blur", "mean"])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_map_of_the_used_pixels_beats_its_inverse(baseline: str, score: str) -> None:
    model = RegionModel()
    # the used patch is brighter than the rest, so every baseline (zeros, blur, mean colour)
    # lowers its logit
    x = 0.3 * torch.rand(
        1, 3, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    x = x - 0.5
    x[:, :, model.mask] = 0.1  # logit 2.7: probability 0.94, not saturated
    good = model.mask.double()[None]
    bad = 1.0 - good
    kw = {"baseline": baseline, "steps": H * W, "blur_sigma": 1.0, "score": score}
    full = metrics.deletion(model, x, good, 0, **kw).scores[0, 0].item()
    del_good = metrics.deletion(model, x, good, 0, **kw).auc.item()
    del_bad = metrics.deletion(model, x, bad, 0, **kw).auc.item()
    ins_good = metrics.insertion(model, x, good, 0, **kw).auc.item()
    ins_bad = metrics.insertion(model, x, bad, 0, **kw).auc.item()
    assert del_good < del_bad - 0.05 * abs(full)
    assert ins_good > ins_bad + 0.05 * abs(full)


def test_curve_endpoints_are_image_and_baseline() -> None:
    model, x = RegionModel(), positive_image(2)
    maps = torch.rand(2, H, W, generator=torch.Generator().manual_seed(1))
    full = model(x).softmax(1)[:, 0]
    base = model(torch.zeros_like(x)).softmax(1)[:, 0]
    d = metrics.deletion(model, x, maps, [0, 0], steps=16)
    i = metrics.insertion(model, x, maps, 0, baseline="zeros", steps=16)
    assert d.fractions[0] == 0 and d.fractions[-1] == 1 and d.scores.shape == (2, 17)
    torch.testing.assert_close(d.scores[:, 0], full)
    torch.testing.assert_close(d.scores[:, -1], base)
    torch.testing.assert_close(i.scores[:, 0], base)
    torch.testing.assert_close(i.scores[:, -1], full)
    # step k deletes exactly the pixels that insertion inserts: with a linear logit and a zero
    # baseline the two curves add up to the full image's logit at every step
    dl = metrics.deletion(model, x, maps, 0, steps=16, score="logit").scores
    il = metrics.insertion(model, x, maps, 0, baseline="zeros", steps=16, score="logit").scores
    torch.testing.assert_close(dl + il, model(x)[:, :1].expand(-1, 17))


def test_auc_is_trapezoid() -> None:
    f = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    assert metrics.auc(s, f).item() == pytest.approx(0.25 * 0.75 + 0.75 * 0.25)


def test_constant_map_equals_random_order_in_expectation() -> None:
    # Score = logit, linear in the pixels, baseline zeros: deleting a uniformly random subset of
    # n_k pixels leaves E[s_k] = (1 - n_k / HW) s(x), whose trapezoid area is exactly s(x) / 2.
    # The 3 x 3 patch sits near the top, so breaking ties by pixel index (top rows first) would
    # give a very different area: this test fails without random tie-breaking.
    model = RegionModel()
    n = 400
    x = positive_image(1).expand(n, -1, -1, -1).contiguous()
    expected = model(x[:1])[0, 0].item() / 2
    constant = torch.full((n, H, W), 0.3)
    random = torch.rand(n, H, W, generator=torch.Generator().manual_seed(2))
    for mode in ("deletion", "insertion"):
        kw = {"mode": mode, "baseline": "zeros", "steps": 16, "score": "logit", "batch_size": 2048}
        a_const = metrics.perturbation_curve(model, x, constant, 0, seed=3, **kw).auc
        a_rand = metrics.perturbation_curve(model, x, random, 0, seed=4, **kw).auc
        for a in (a_const, a_rand):
            stderr = a.std().item() / math.sqrt(n)
            assert abs(a.mean().item() - expected) < 4 * stderr
        # and in probability, where no closed form is at hand: the two means agree
        kw["score"] = "probability"
        p_const = metrics.perturbation_curve(model, x, constant, 0, seed=5, **kw).auc
        p_rand = metrics.perturbation_curve(model, x, random, 0, seed=6, **kw).auc
        stderr = math.hypot(p_const.std().item(), p_rand.std().item()) / math.sqrt(n)
        assert abs(p_const.mean().item() - p_rand.mean().item()) < 4 * stderr
    top_down = metrics.deletion(model, x[:1], -torch.arange(H * W).view(1, H, W), 0, steps=16)
    assert abs(top_down.auc.item() - a_const.mean().item()) > 0.05  # index order is not random


def test_batching_costs_k_over_b_passes_and_changes_nothing() -> None:
    model, x = RegionModel(), positive_image(3)
    maps = torch.rand(3, H, W, generator=torch.Generator().manual_seed(7))
    results = []
    for batch_size in (1, 7, 64):
        model.calls = 0
        results.append(metrics.deletion(model, x, maps, 0, steps=20, batch_size=batch_size))
        assert model.calls == math.ceil(3 * 21 / batch_size)
    for r in results[1:]:
        torch.testing.assert_close(r.scores, results[0].scores)


def test_low_resolution_maps_are_upsampled() -> None:
    model, x = RegionModel(), positive_image()
    low = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(8))
    up = torch.nn.functional.interpolate(low[:, None].double(), size=(H, W), mode="bilinear")[:, 0]
    a = metrics.deletion(model, x, low, 0, steps=8).scores
    b = metrics.deletion(model, x, up, 0, steps=8).scores
    torch.testing.assert_close(a, b)


def test_baselines() -> None:
    x = positive_image(2)
    torch.testing.assert_close(metrics.make_baseline(x, "zeros"), torch.zeros_like(x))
    mean = metrics.make_baseline(x, "mean")
    torch.testing.assert_close(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
    flat = torch.full((1, 3, 16, 16), 0.7, dtype=torch.float64)
    torch.testing.assert_close(metrics.make_baseline(flat, "blur", blur_sigma=2.0), flat)
    blurred = metrics.make_baseline(x, "blur", blur_sigma=1.0)
    assert blurred.var() < x.var()
    grey = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    torch.testing.assert_close(metrics.make_baseline(x, grey)[1, :, 4, 4], grey.view(3).double())
    with pytest.raises(MetricError, match="unknown baseline"):
        metrics.make_baseline(x, "noise")  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="does not broadcast"):
        metrics.make_baseline(x, torch.zeros(5))


def test_bad_inputs_give_clear_errors() -> None:
    model, x = RegionModel(), positive_image(2)
    with pytest.raises(MetricError, match=r"maps must be \(N, H, W\)"):
        metrics.deletion(model, x, torch.zeros(3, H, W), 0)
    with pytest.raises(MetricError, match="one class per image"):
        metrics.deletion(model, x, torch.zeros(2, H, W), [0, 1, 0])
    with pytest.raises(MetricError, match="batch"):
        metrics.deletion(model, x[0], torch.zeros(2, H, W), 0)
    with pytest.raises(MetricError, match="NaN"):
        metrics.deletion(model, x, torch.full((2, H, W), float("nan")), 0)
    with pytest.raises(MetricError, match="mode"):
        metrics.perturbation_curve(model, x, torch.zeros(2, H, W), 0, mode="both")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence
# --------------------------------------------------------------------------------------------


def test_average_drop_and_increase_against_the_formula() -> None:
    model, x = RegionModel(), positive_image(3)
    maps = torch.stack([model.mask.double(), 1 - model.mask.double(), torch.ones(H, W)])
    maps[2, 0, 0] = 0.0  # nearly all ones: almost the full image
    result = metrics.average_drop_increase(model, x, maps, 0)
    y = model(x).softmax(1)[:, 0]
    for i in range(3):
        m = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
        o = model((x[i] * m)[None]).softmax(1)[0, 0]
        assert result.masked[i].item() == pytest.approx(o.item())
        assert result.drop[i].item() == pytest.approx(max(0.0, (y[i] - o).item()) / y[i].item())
        assert bool(result.increase[i]) == bool(o > y[i])
    assert result.drop[0].item() == pytest.approx(0.0, abs=1e-12)  # keeps every used pixel
    assert result.drop[1].item() > 0.3  # keeps none of them
    expected_drop = 100 * result.drop.mean().item()
    assert result.average_drop == pytest.approx(expected_drop)
    assert result.increase_in_confidence == pytest.approx(100 * result.increase.double().mean())


# --------------------------------------------------------------------------------------------
# localisation
# --------------------------------------------------------------------------------------------


def peak_map(r: int, c: int, size: int = 64) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[0, r, c] = 1.0
    return m


def test_pointing_game_on_hand_built_boxes() -> None:
    inside = metrics.boxes_to_mask([(10, 20, 30, 40)], (64, 64))
    assert metrics.pointing_game(peak_map(25, 15), inside, tolerance=0).item()  # row 25, col 15
    assert not metrics.pointing_game(peak_map(15, 25), inside, tolerance=0).item()  # swapped
    # 5 px to the right of the box's right edge (last column 29): a hit only with tolerance
    assert not metrics.pointing_game(peak_map(25, 34), inside, tolerance=4).item()
    assert metrics.pointing_game(peak_map(25, 34), inside, tolerance=5).item()
    # distance is Euclidean: corner pixel (row 20, col 29) vs peak (20 - 3, 29 + 4) is 5 away
    assert metrics.pointing_game(peak_map(17, 33), inside, tolerance=5).item()
    assert not metrics.pointing_game(peak_map(17, 33), inside, tolerance=4).item()
    assert not metrics.pointing_game(peak_map(16, 33), inside, tolerance=5).item()  # 5.66 away
    # a union of two boxes
    two = metrics.boxes_to_mask([[(0, 0, 5, 5), (50, 50, 60, 60)]], (64, 64))
    assert metrics.pointing_game(peak_map(55, 55), two, tolerance=0).item()


def test_boxes_to_mask_uses_pixel_centres() -> None:
    mask = metrics.boxes_to_mask([(1.4, 0.0, 3.6, 2.0)], (4, 5))[0]
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:3] = True  # centres 1.5 and 2.5 are inside [1.4, 3.6); 3.5 is too
    expected[0:2, 3] = True
    assert torch.equal(mask, expected)
    with pytest.raises(MetricError, match="left, top, right, bottom"):
        metrics.boxes_to_mask([[(1, 2, 3)]], (4, 4))


def test_energy_pointing_game() -> None:
    size = 10
    mask = metrics.boxes_to_mask([(0, 0, 5, 10)], (size, size))  # left half
    left = torch.zeros(1, size, size)
    left[0, :, :5] = 2.0
    assert metrics.energy_pointing_game(left, mask).item() == pytest.approx(1.0)
    assert metrics.energy_pointing_game(2.0 - left, mask).item() == pytest.approx(0.0)
    ramp = torch.arange(size, dtype=torch.float64).expand(size, size)[None]  # x, 0 .. 9
    expected = sum(range(5)) / sum(range(10))  # min-max normalised ramp: x / 9
    assert metrics.energy_pointing_game(ramp, mask).item() == pytest.approx(expected)
    # a constant map has no energy to place: it scores the box's share of the image
    assert metrics.energy_pointing_game(torch.ones(1, size, size), mask).item() == 0.5
    with pytest.raises(MetricError, match="boxes_to_mask"):
        metrics.energy_pointing_game(torch.ones(1, 4, 4), mask)


@pytest.mark.parametrize("image_size", [(451, 300), (300, 451), (640, 427), (512, 512)])
def test_box_mapping_matches_the_real_resize_and_crop(image_size: tuple[int, int]) -> None:
    box = (37, 21, image_size[0] - 60, image_size[1] - 45)
    drawn = np.zeros(image_size[::-1], dtype=np.uint8)
    drawn[box[1] : box[3], box[0] : box[2]] = 255
    geometry = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(224),
        ]
    )
    seen = np.asarray(geometry(Image.fromarray(drawn))) >= 128
    mapped = metrics.box_to_input_frame(box, image_size, resize=256, crop=224)
    ours = metrics.boxes_to_mask([mapped], (224, 224))[0].numpy()
    rows, cols = np.nonzero(seen)
    assert abs(rows.min() - mapped[1]) <= 1 and abs(rows.max() + 1 - mapped[3]) <= 1
    assert abs(cols.min() - mapped[0]) <= 1 and abs(cols.max() + 1 - mapped[2]) <= 1
    assert (ours != seen).mean() < 0.01


def test_model_geometry_and_photo_boxes() -> None:
    from xai_helpers.images import sample_image
    from xai_helpers.models import load_model

    lm = load_model("efficientnet_lite0", device="cpu", weights=None)
    assert metrics.model_geometry(lm) == (256, 224)
    objects = metrics.load_photo_boxes()
    assert {o.image for o in objects} == {"chelsea", "coffee", "rocket", "cat_and_coffee"}
    for o in objects:
        w, h = sample_image(o.image).size
        left, top, right, bottom = o.box
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert all(0 <= c < 1000 for c in o.classes)
    rocket = next(o for o in objects if o.image == "rocket")
    mapped = metrics.box_to_input_frame(rocket.box, (640, 427), *metrics.model_geometry(lm))
    assert 10 < mapped[2] - mapped[0] < 25  # a thin strip in the middle of the crop
    assert 90 < mapped[0] < 134


# --------------------------------------------------------------------------------------------
# sanity checks
# --------------------------------------------------------------------------------------------


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def gradient_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x).gather(1, target[:, None]).sum().backward()
    return (x.grad * x).sum(1).detach()


def test_randomizing_a_layer_changes_exactly_that_layer() -> None:
    model = tiny_cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random = metrics.randomize_layers(model, ["3"], seed=1)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    assert not random.training and random is not model
    for k, v in random.state_dict().items():
        changed = not torch.equal(v, before[k])
        assert changed == k.startswith("3."), k
    # same seed, same noise; a layer's noise does not depend on what else is randomised
    again = metrics.randomize_layers(model, ["7", "3"], seed=1)
    assert torch.equal(again[3].weight, random[3].weight)
    other = metrics.randomize_layers(model, ["3"], seed=2)
    assert not torch.equal(other[3].weight, random[3].weight)
    # scale is kept, structure is not
    w0, w1 = model[3].weight, random[3].weight
    assert abs(w1.std() / w0.std() - 1) < 0.3
    # BatchNorm: parameters randomised, running statistics (buffers) kept
    bn = metrics.randomize_layers(model, ["1"], seed=0)[1]
    assert torch.equal(bn.running_var, model[1].running_var)
    assert not torch.equal(bn.weight, model[1].weight)
    with pytest.raises(MetricError, match="no submodule"):
        metrics.randomize_layers(model, ["head"])


def test_cascading_randomization_passing_and_failing() -> None:
    model = tiny_cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    passing = metrics.cascading_randomization(
        model, ["7", "3", "0"], gradient_times_input, x, target
    )
    assert passing.steps == ["original", "7", "3", "0"]
    assert passing.spearman.shape == passing.ssim.shape == (4, 3)
    assert passing.maps.shape == (4, 3, 12, 12)
    torch.testing.assert_close(passing.spearman[0], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(passing.ssim[0], torch.ones(3, dtype=torch.float64))
    assert passing.spearman[-1].abs().mean() < 0.6  # fully randomised: little left in common
    # an "explanation" that ignores the model (edges of the image) fails: nothing changes
    edges = lambda m, x, t: (x[:, :, 1:, 1:] - x[:, :, :-1, :-1]).abs().sum(1)  # noqa: E731
    failing = metrics.cascading_randomization(model, ["7", "3", "0"], edges, x, target)
    torch.testing.assert_close(failing.spearman, torch.ones(4, 3, dtype=torch.float64))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_similarity_measures() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 9, 9, generator=g), torch.rand(2, 9, 9, generator=g)
    ours = metrics.spearman_rank(a, b)
    for i in range(2):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic)
    assert metrics.spearman_rank(a, 3 * a + 1).tolist() == pytest.approx([1.0, 1.0])
    assert metrics.spearman_rank(a, -a, absolute=True).tolist() == pytest.approx([1.0, 1.0])
    assert metrics.spearman_rank(a, torch.zeros_like(a)).tolist() == [0.0, 0.0]
    assert metrics.ssim(a, 2 * a).tolist() == pytest.approx([1.0, 1.0])
    assert (metrics.ssim(a, b) < 0.5).all()
    with pytest.raises(MetricError, match="paired"):
        metrics.ssim(a, b[:1])


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------


def test_measure_cost_counts_passes_and_removes_hooks() -> None:
    model = tiny_cnn()
    x = torch.randn(5, 3, 12, 12, dtype=torch.float64)

    def three_forwards_one_backward() -> str:
        with torch.no_grad():
            model(x)
            model(x[:2])
        model(x).sum().backward()
        return "done"

    result, cost = metrics.measure_cost(three_forwards_one_backward, model)
    assert result == "done"
    assert (cost.forward_passes, cost.forward_images, cost.backward_passes) == (3, 12, 1)
    assert cost.seconds > 0 and cost.peak_memory_mib >= 0
    assert not model._forward_hooks

    def boom() -> None:
        model(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        metrics.measure_cost(boom, model)
    assert not model._forward_hooks

    # without the memory sampler: the same passes, no sampler thread left, the peak NaN
    threads = threading.active_count()
    _, quiet = metrics.measure_cost(three_forwards_one_backward, model, memory=False)
    assert (quiet.forward_passes, quiet.forward_images, quiet.backward_passes) == (3, 12, 1)
    assert math.isnan(quiet.peak_memory_mib) and quiet.memory_mib(floor_mib=0.0) is None
    assert threading.active_count() == threads and not model._forward_hooks


def test_measure_cost_repeats_and_says_when_memory_means_something() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    calls = []

    def forward() -> int:
        calls.append(1)
        with torch.no_grad():
            model(x)
        return len(calls)

    first, cost = metrics.measure_cost(forward, model, repeats=3)
    assert first == 1 and len(calls) == 3  # the first call's result, three measured calls
    assert (cost.forward_passes, cost.forward_images) == (1, 2)  # per call, not summed
    assert cost.repeats == 3 and len(cost.seconds_all) == 3 and len(cost.peak_memory_all_mib) == 3
    assert cost.seconds == sorted(cost.seconds_all)[1]  # the median
    assert cost.memory_mib() is None  # a few kiB: below the sampler's floor, never reported
    made_up = metrics.Cost(1.0, 1, 1, 0, 100.0, 3, (1.0,) * 3, (90.0, 100.0, 105.0))
    assert made_up.memory_mib() == 100.0 and made_up.memory_spread_mib == 15.0
    noisy = metrics.Cost(1.0, 1, 1, 0, 100.0, 3, (1.0,) * 3, (20.0, 100.0, 180.0))
    assert noisy.memory_mib() is None
    once = metrics.Cost(1.0, 1, 1, 0, 100.0)
    assert once.memory_mib() is None  # one call says nothing about the spread
    with pytest.raises(MetricError, match="repeats"):
        metrics.measure_cost(forward, model, repeats=0)
