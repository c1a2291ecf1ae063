"""Occlusion and RISE: against captum's ``Occlusion`` and against slow references that occlude or
mask one copy at a time, written out without the package's batching, mask building or averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_helpers.baselines import baseline_batch
from xai_helpers.explain import explain
from xai_helpers.hooks import count_hooks, count_passes
from xai_helpers.occlusion import (
    PerturbationError,
    occlusion,
    occlusion_positions,
    rise,
    rise_masks,
)
from xai_helpers.registry import get_method


@pytest.fixture(scope="module")
def xs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 13, 12, dtype=torch.float64)


def scores_of(model, batch, score="probability"):
    with torch.no_grad():
        out = model(batch)
    return torch.softmax(out, dim=1) if score == "probability" else out


# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------


def slow_occlusion(model, x, target, patch, stride, base, score="probability"):
    """One occluded copy per forward pass; each pixel's drops listed and averaged explicitly."""
    n, _, h, w = x.shape
    out = torch.zeros(n, h, w, dtype=x.dtype)
    for i in range(n):
        clean = scores_of(model, x[i : i + 1], score)[0, target[i]].item()
        drops = [[[] for _ in range(w)] for _ in range(h)]
        top = 0
        while True:
            left = 0
            while True:
                copy = x[i].clone()
                copy[:, top : top + patch[0], left : left + patch[1]] = base[
                    i, :, top : top + patch[0], left : left + patch[1]
                ]
                d = clean - scores_of(model, copy[None], score)[0, target[i]].item()
                for r in range(top, min(top + patch[0], h)):
                    for c in range(left, min(left + patch[1], w)):
                        drops[r][c].append(d)
                if left + patch[1] >= w:
                    break
                left += stride[1]
            if top + patch[0] >= h:
                break
            top += stride[0]
        for r in range(h):
            for c in range(w):
                out[i, r, c] = sum(drops[r][c]) / len(drops[r][c])
    return out


@pytest.mark.parametrize(
    ("patch", "stride", "score"),
    [((4, 4), (2, 2), "probability"), ((5, 3), (3, 2), "logit"), ((4, 4), (4, 4), "probability")],
)
def test_occlusion_matches_slow_reference(tiny, xs, patch, stride, score):
    base = baseline_batch(xs, "image_mean")
    res = occlusion(
        tiny,
        xs,
        [1, 3],
        patch=patch,
        stride=stride,
        baseline="image_mean",
        score=score,
        batch_size=5,
        progress=False,
    )
    ref = slow_occlusion(tiny, xs, [1, 3], patch, stride, base, score)
    torch.testing.assert_close(res.saliency, ref, rtol=1e-9, atol=1e-12)
    assert res.saliency.abs().max() > 0


def test_occlusion_positions_cover_the_edge_like_captum():
    # (13 - 5) / 3 is not an integer: the last patch starts at 9 and is cut at the border
    assert occlusion_positions(13, 5, 3) == [0, 3, 6, 9]
    assert (
        occlusion_positions(224, 32, 16)[-1] == 192 and len(occlusion_positions(224, 32, 16)) == 13
    )
    assert occlusion_positions(8, 8, 100) == [0]  # one patch over the whole axis


@pytest.mark.parametrize(("patch", "stride"), [(4, 2), (5, 3)])
def test_occlusion_matches_captum(tiny, xs, patch, stride):
    captum = pytest.importorskip("captum.attr")
    base = baseline_batch(xs, "image_mean")
    ours = occlusion(
        tiny, xs, [0, 4], patch=patch, stride=stride, baseline="image_mean", progress=False
    )
    ref = captum.Occlusion(lambda inp: torch.softmax(tiny(inp), dim=1)).attribute(
        xs,
        sliding_window_shapes=(3, patch, patch),
        strides=(3, stride, stride),
        baselines=base,
        target=[0, 4],
        perturbations_per_eval=7,
    )
    # captum attributes each colour channel; the window spans all three, so they are equal
    torch.testing.assert_close(ref[:, 0], ref[:, 2])
    # captum accumulates in float32 (its result is float32 for a float64 input)
    torch.testing.assert_close(ours.saliency, ref[:, 0].double(), rtol=1e-5, atol=1e-7)
    assert ours.saliency.abs().max() > 1e-4  # the tolerance is far below the values


def test_occlusion_matches_captum_on_lite0(lite0):
    captum = pytest.importorskip("captum.attr")
    x = lite0.preprocess("data/chelsea.png")
    x = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    ours = occlusion(lite0, x, "tiger cat", patch=16, stride=12, baseline="black", progress=False)
    black = baseline_batch(x, "black", lite0.mean, lite0.std)
    with torch.no_grad():
        ref = captum.Occlusion(lambda inp: torch.softmax(lite0.model(inp), dim=1)).attribute(
            x,
            sliding_window_shapes=(3, 16, 16),
            strides=(3, 12, 12),
            baselines=black,
            target=lite0.class_index("tiger cat"),
            perturbations_per_eval=16,
        )
    scale = ref.abs().max().item()
    assert scale > 1e-3
    assert (ours.saliency - ref[:, 0]).abs().max().item() < 1e-5 * max(scale, 1.0)


def test_occlusion_batch_size_and_shared_passes(tiny, xs):
    one = occlusion(tiny, xs, [1, 2], patch=4, stride=3, batch_size=1, progress=False)
    many = occlusion(tiny, xs, [1, 2], patch=4, stride=3, batch_size=64, progress=False)
    torch.testing.assert_close(one.saliency, many.saliency, rtol=1e-10, atol=1e-12)
    # the same image for two classes: one set of passes, and each map as if computed alone
    pair = xs[:1].expand(2, -1, -1, -1)
    with count_passes(tiny) as counted:
        both = occlusion(tiny, pair, [1, 2], patch=4, stride=3, batch_size=8, progress=False)
    positions = len(occlusion_positions(13, 4, 3)) * len(occlusion_positions(12, 4, 3))
    assert both.passes == positions
    assert counted.images == 2 + positions  # the clean pass on the pair, then the occluded copies
    assert counted.forward == 1 + math.ceil(positions / 8)
    for k, t in enumerate([1, 2]):
        alone = occlusion(tiny, xs[:1], t, patch=4, stride=3, progress=False)
        torch.testing.assert_close(both.saliency[k], alone.saliency[0], rtol=1e-10, atol=1e-12)


def test_occlusion_leaves_the_model_alone(tiny, xs):
    tiny.train()
    try:
        occlusion(tiny, xs, patch=6, stride=6, progress=False)
        assert tiny.training and count_hooks(tiny) == 0
    finally:
        tiny.eval()


# ----------------------------------------------------------------------------------------------
# RISE
# ----------------------------------------------------------------------------------------------


def bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation with align_corners=False."""
    mat = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        mat[o, lo] += 1 - frac
        mat[o, hi] += frac
    return mat


def reference_masks(n, size, cells, p, seed):
    """Petsiuk et al.'s recipe written out: grids, then shifts, from the same seeded generator;
    the upsampling as two explicit interpolation matrices."""
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, cells, cells, generator=gen) < p).double().numpy()
    cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
    dy = torch.randint(0, cell[0], (n,), generator=gen).tolist()
    dx = torch.randint(0, cell[1], (n,), generator=gen).tolist()
    rows = bilinear_1d(cells, (cells + 1) * cell[0])
    cols = bilinear_1d(cells, (cells + 1) * cell[1])
    masks = []
    for i in range(n):
        big = rows @ grids[i] @ cols.T
        masks.append(big[dy[i] : dy[i] + size[0], dx[i] : dx[i] + size[1]])
    return torch.tensor(np.stack(masks))


def test_rise_masks_follow_the_recipe():
    masks = rise_masks(40, (13, 12), cells=3, p=0.3, seed=5)
    ref = reference_masks(40, (13, 12), 3, 0.3, 5)
    assert masks.shape == (40, 13, 12)
    torch.testing.assert_close(masks.double(), ref, rtol=0, atol=1e-6)
    assert masks.min() >= 0 and masks.max() <= 1
    big = rise_masks(400, (56, 56), cells=7, p=0.3, seed=0)
    assert abs(big.mean().item() - 0.3) < 0.03  # each pixel kept with probability about p


def slow_rise(model, x, target, masks, p, base, score="probability"):
    out = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype)
    for i in range(x.shape[0]):
        for m in masks:
            copy = base[i] + m * (x[i] - base[i])
            out[i] += scores_of(model, copy[None], score)[0, target[i]] * m
    return out / (len(masks) * p)


@pytest.mark.parametrize(
    ("baseline", "score"), [("dataset_mean", "probability"), ("blur", "logit")]
)
def test_rise_matches_slow_reference(tiny, xs, baseline, score):
    res = rise(
        tiny,
        xs,
        [2, 0],
        n_masks=30,
        cells=4,
        p=0.4,
        seed=3,
        baseline=baseline,
        score=score,
        batch_size=7,
        progress=False,
        checkpoints=[10, 30],
    )
    masks = reference_masks(30, (13, 12), 4, 0.4, 3)
    base = baseline_batch(xs, baseline)
    ref = slow_rise(tiny, xs, [2, 0], masks, 0.4, base, score)
    torch.testing.assert_close(res.saliency, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(res.partial[30], res.saliency)
    ref10 = slow_rise(tiny, xs, [2, 0], masks[:10], 0.4, base, score)
    torch.testing.assert_close(res.partial[10], ref10, rtol=1e-6, atol=1e-9)
    assert res.passes == 2 * 30


def test_rise_is_deterministic_and_batch_size_invariant(tiny, xs):
    kwargs = {"n_masks": 25, "cells": 3, "progress": False}
    a = rise(tiny, xs, 1, seed=7, batch_size=1, **kwargs)
    b = rise(tiny, xs, 1, seed=7, batch_size=25, **kwargs)
    c = rise(tiny, xs, 1, seed=8, batch_size=4, **kwargs)
    torch.testing.assert_close(a.saliency, b.saliency, rtol=1e-10, atol=1e-12)
    assert (a.saliency - c.saliency).abs().max() > 1e-3  # another seed, other masks
    assert a.normalized.min() == 0 and a.normalized.max() == 1


def test_rise_shares_passes_between_classes(tiny, xs):
    pair = xs[:1].expand(2, -1, -1, -1)
    with count_passes(tiny) as counted:
        both = rise(tiny, pair, [0, 3], n_masks=12, cells=3, batch_size=5, progress=False)
    assert both.passes == 12 and counted.images == 2 + 12
    alone = rise(tiny, xs[:1], 3, n_masks=12, cells=3, progress=False)
    torch.testing.assert_close(both.saliency[1], alone.saliency[0], rtol=1e-10, atol=1e-12)


def test_registry_and_explain(lite0):
    x = lite0.preprocess("data/coffee.png")
    x = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
    occ = get_method("occlusion")
    assert occ.family == "perturbation" and occ.signed and not occ.needs_gradients
    assert get_method("rise").family == "perturbation" and not get_method("rise").signed
    direct = occlusion(lite0, x, "espresso", patch=16, stride=16, progress=False).saliency
    via = explain(lite0, x, "occlusion", "espresso", patch=16, stride=16, progress=False)
    torch.testing.assert_close(via, direct)
    maps = explain(lite0, x, "rise", "espresso", n_masks=8, progress=False)
    assert maps.shape == (1, 64, 64) and maps.min() == 0 and maps.max() == 1


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": 20}, "larger than the image"),
        ({"patch": 4, "stride": 5}, "stride 5 > patch 4"),
        ({"patch": 0}, "patch must be a positive int"),
        ({"patch": (4, 4, 4)}, "pair"),
        ({"score": "prob"}, "score must be"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"baseline": "grey"}, "unknown baseline 'grey'"),
        ({"baseline": "black"}, "normalisation"),
        ({"target": 9}, "out of range"),
    ],
)
def test_occlusion_errors(tiny, xs, kwargs, match):
    with pytest.raises(PerturbationError, match=match):
        occlusion(tiny, xs, **{"progress": False, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 0.0}, r"p \(the probability"),
        ({"p": 1.5}, r"p \(the probability"),
        ({"n_masks": 0}, "n_masks must be a positive int"),
        ({"cells": 20}, "do not fit"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"checkpoints": [5, 50]}, "at most n_masks"),
    ],
)
def test_rise_errors(tiny, xs, kwargs, match):
    with pytest.raises(PerturbationError, match=match):
        rise(tiny, xs, **{"progress": False, "n_masks": 10, **kwargs})


def test_bad_inputs(tiny):
    with pytest.raises(PerturbationError, match="torch.Tensor"):
        occlusion(tiny, np.zeros((1, 3, 8, 8)))
    with pytest.raises(PerturbationError, match="LoadedModel or an nn.Module"):
        rise(lambda t: t, torch.zeros(1, 3, 8, 8))
    with pytest.raises(PerturbationError, match="channel"):
        occlusion(tiny, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
