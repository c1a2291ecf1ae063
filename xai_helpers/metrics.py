r"""Measuring explanations instead of awarding them stars: faithfulness, localisation, sanity, cost.

Every metric takes plain tensors, so it works for any method that returns a map:

* ``model``: any callable ``(B, 3, H, W) -> (B, C)`` logits (an ``nn.Module`` in eval mode);
* ``x``: the preprocessed batch ``(N, 3, H, W)`` the model sees;
* ``maps``: one map per image, ``(N, H, W)`` (a smaller ``(N, h, w)`` map is upsampled bilinearly);
* ``target``: the explained class of each image, ``(N,)``.

Faithfulness
    :func:`deletion` and :func:`insertion` curves with their area under the curve (Petsiuk et
    al., "RISE", BMVC 2018, Sec. 4.1), batched so that a curve of :math:`K` steps for :math:`N`
    images costs :math:`\lceil N(K+1)/B \rceil` forward passes of batch size :math:`B`;
    :func:`average_drop_increase` (Chattopadhay et al., "Grad-CAM++", WACV 2018, Sec. 5.1).
Localisation
    :func:`pointing_game` (Zhang et al., "Top-down neural attention by excitation backprop",
    ECCV 2016 / IJCV 2018, Sec. 5.1) and :func:`energy_pointing_game` (Wang et al.,
    "Score-CAM", CVPR-W 2020, Sec. 5.2), against boxes given in the original photo's pixels and
    mapped through the model's resize and centre crop by :func:`box_to_input_frame`.
Sanity
    :func:`randomize_layers` and :func:`cascading_randomization` (Adebayo et al., "Sanity
    checks for saliency maps", NeurIPS 2018, Sec. 3.1), compared with :func:`spearman_rank` and
    :func:`ssim`.
Cost
    :func:`measure_cost`: wall time, forward/backward passes (counted as they happen) and peak
    memory of a call, repeated so that memory is reported only where it is more than noise.

Baselines ("what does a removed pixel become?") are named with the course's one vocabulary
(:mod:`xai_helpers.baselines`) or given as a tensor: ``"dataset_mean"`` is the all-zero
*input tensor*, i.e. the dataset mean colour after normalisation (mid-grey for
EfficientNet-Lite, whose mean = std = 0.5); ``"black"`` is RGB (0, 0, 0) (it needs the model's
``mean`` and ``std``); ``"image_mean"`` is each image's own mean colour; ``"blur"`` is a
Gaussian blur of the image (RISE's insertion baseline). The boxes and their masks are
:mod:`xai_helpers.boxes`' (re-exported here).
"""

from __future__ import annotations

import copy
import math
import statistics
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import psutil
import torch
from torch import Tensor, nn

from .baselines import BaselineName, baseline_batch
from .boxes import (
    BOXES_PATH,
    PhotoObject,
    box_to_input_frame,
    boxes_to_mask,
    load_photo_boxes,
    model_geometry,
)
from .errors import MetricError
from .hooks import count_passes
from .inputs import check_batch, forward_channels_last, resolve_targets
from .maps import Ties, normalize_per_image, rank_pixels, upsample
from .perturb import rank_correlation
from .progress import progress as progress_bar

__all__ = [
    "BOXES_PATH",
    "MEMORY_FLOOR_MIB",
    "Baseline",
    "Cost",
    "CurveResult",
    "DropIncrease",
    "MetricError",
    "PhotoObject",
    "SanityResult",
    "auc",
    "average_drop_increase",
    "box_to_input_frame",
    "box_share",
    "boxes_to_mask",
    "cascading_randomization",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "load_photo_boxes",
    "make_baseline",
    "measure_cost",
    "model_geometry",
    "perturbation_curve",
    "pointing_game",
    "randomize_layers",
    "spearman_rank",
    "ssim",
]

Baseline = Tensor | BaselineName
_R = TypeVar("_R")


# --------------------------------------------------------------------------------------------
# input checks and small helpers
# --------------------------------------------------------------------------------------------


def _check_batch(
    x: Tensor, maps: Tensor, target: Tensor | int | Sequence[int], model: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Check ``x`` (:func:`xai_helpers.inputs.check_batch`) and the shapes; return ``x`` (on
    the model's device), ``maps`` at the input resolution and ``target`` as (N,) long."""
    x = check_batch(x, model, error=MetricError)
    maps = torch.as_tensor(maps).detach()
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        raise MetricError(
            f"maps must be (N, H, W) with N = {x.shape[0]} images, got {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise MetricError("maps contain NaN or inf; fix the explanation before scoring it")
    maps = maps.to(device=x.device, dtype=x.dtype)
    if maps.shape[-2:] != x.shape[-2:]:
        # low-resolution maps (a CAM's h x w) are upsampled as the CAM papers display them
        maps = upsample(maps, tuple(x.shape[-2:]))
    return x, maps, _as_target(target, x.shape[0], x.device)


def _as_target(target: Tensor | int | Sequence[int], n: int, device: torch.device) -> Tensor:
    if target is None:
        raise MetricError("pass target, the explained class of each image (e.g. CamResult.target)")
    return resolve_targets(target, n=n, error=MetricError).to(device)


def _scores(logits: Tensor, target: Tensor, score: str) -> Tensor:
    if score == "probability":
        return logits.softmax(dim=1).gather(1, target[:, None])[:, 0]
    if score == "logit":
        return logits.gather(1, target[:, None])[:, 0]
    raise MetricError(f"score must be 'probability' or 'logit', not {score!r}")


def make_baseline(
    x: Tensor,
    baseline: Baseline = "dataset_mean",
    blur_sigma: float = 5.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    r"""The image a removed pixel is replaced with (deletion) or a curve starts from (insertion).

    Parameters
    ----------
    x:
        The preprocessed batch ``(N, 3, H, W)``.
    baseline:
        A name of :mod:`xai_helpers.baselines`: ``"dataset_mean"`` (the zero input tensor:
        after normalisation the dataset mean colour), ``"black"`` (needs ``mean`` and ``std``,
        the model's normalisation), ``"image_mean"`` (each image's own per-channel mean
        colour), ``"blur"`` (a Gaussian blur of ``x`` with standard deviation ``blur_sigma``
        pixels and a kernel of :math:`2\lceil 2\sigma \rceil + 1` pixels; Petsiuk et al. 2018
        blur with :math:`\sigma = 5`); or a tensor broadcastable to ``x``. The old names
        ``"zeros"`` (= ``"dataset_mean"``) and ``"mean"`` (= ``"image_mean"``) still work, with
        a ``DeprecationWarning``.
    """
    return baseline_batch(x, baseline, mean, std, blur_sigma, error=MetricError)


# --------------------------------------------------------------------------------------------
# faithfulness: deletion and insertion (Petsiuk et al. 2018)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve per image.

    Attributes
    ----------
    fractions:
        ``(K+1,)`` fraction of pixels deleted (or inserted) at each step, from 0 to 1.
    scores:
        ``(N, K+1)`` score of the target class (probability by default) at each step.
    auc:
        ``(N,)`` area under each curve (trapezoid rule over ``fractions``).
    mode:
        ``"deletion"`` (lower is better) or ``"insertion"`` (higher is better).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor
    mode: str

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def auc(scores: Tensor, fractions: Tensor) -> Tensor:
    r"""Area under curves by the trapezoid rule, :math:`\sum_k \tfrac12 (s_k + s_{k+1})
    (f_{k+1} - f_k)`, along the last axis."""
    return torch.trapezoid(scores, fractions.to(scores), dim=-1)


@torch.no_grad()
def perturbation_curve(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int | Sequence[int],
    mode: Literal["deletion", "insertion"] = "deletion",
    baseline: Baseline = "dataset_mean",
    steps: int = 50,
    batch_size: int = 8,
    score: Literal["probability", "logit"] = "probability",
    blur_sigma: float = 5.0,
    seed: int = 0,
    progress: bool = False,
    ties: Ties = "random",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> CurveResult:
    r"""Deletion or insertion curve: perturb pixels in order of decreasing map value.

    At step :math:`k = 0, \dots, K` the :math:`n_k = \mathrm{round}(k\,HW/K)` most important
    pixels (all three colour channels) are replaced by the baseline (deletion) or copied from the
    image onto the baseline (insertion); the curve is the target's score
    :math:`f_c(\tilde x^{(k)})` against :math:`n_k / HW`, and its area is the metric
    (Petsiuk et al., "RISE: Randomized input sampling for explanation of black-box models",
    BMVC 2018, Sec. 4.1). All :math:`N(K+1)` perturbed images are evaluated in batches of
    ``batch_size``, mixing images, so a curve costs about :math:`(K+1)/B` forward passes per
    image. The order is :func:`xai_helpers.maps.rank_pixels`; ties in the map are broken
    uniformly at random (``seed``), or in raster order with ``ties="raster"`` (the rule of
    :func:`xai_helpers.perturb.top_k_mask`).

    Parameters
    ----------
    model, x, maps, target:
        See the module docstring.
    mode:
        ``"deletion"`` (a faithful map makes the score fall fast: low AUC is good) or
        ``"insertion"`` (a faithful map makes it rise fast: high AUC is good).
    baseline, mean, std:
        See :func:`make_baseline`; RISE uses ``"dataset_mean"`` (its zero tensor) for deletion
        and ``"blur"`` for insertion.
    steps:
        :math:`K`, the number of perturbation steps (RISE: :math:`HW/224`, i.e. 224 steps).
    score:
        ``"probability"`` (softmax, as in RISE) or ``"logit"``.
    """
    x, maps, target = _check_batch(x, maps, target, model)
    if mode not in ("deletion", "insertion"):
        raise MetricError(f"mode must be 'deletion' or 'insertion', not {mode!r}")
    if steps < 1 or batch_size < 1:
        raise MetricError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    n, c, h, w = x.shape
    hw = h * w
    base = make_baseline(x, baseline, blur_sigma, mean, std)
    ranks = rank_pixels(maps, ties, torch.Generator().manual_seed(seed))
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * hw / steps).long()
    counts = counts.to(x.device)
    fractions = counts.double().cpu() / hw
    total = n * (steps + 1)
    scores = torch.empty(total, dtype=torch.float64)
    flat_x, flat_b = x.flatten(2), base.flatten(2)
    batches = range(0, total, batch_size)
    if progress:
        batches = progress_bar(batches, desc=mode, leave=False)
    for start in batches:
        pair = torch.arange(start, min(start + batch_size, total), device=x.device)
        image, step = pair // (steps + 1), pair % (steps + 1)
        changed = (ranks[image] < counts[step][:, None])[:, None, :]  # (B, 1, HW)
        if mode == "deletion":
            batch = torch.where(changed, flat_b[image], flat_x[image])
        else:
            batch = torch.where(changed, flat_x[image], flat_b[image])
        logits = forward_channels_last(model, batch.view(-1, c, h, w))
        scores[start : start + len(pair)] = _scores(logits, target[image], score).double().cpu()
    scores = scores.view(n, steps + 1)
    return CurveResult(fractions=fractions, scores=scores, auc=auc(scores, fractions), mode=mode)


def deletion(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int | Sequence[int],
    baseline: Baseline = "dataset_mean",
    **kwargs: Any,
) -> CurveResult:
    """Deletion curve (lower AUC = more faithful); see :func:`perturbation_curve`."""
    return perturbation_curve(model, x, maps, target, mode="deletion", baseline=baseline, **kwargs)


def insertion(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int | Sequence[int],
    baseline: Baseline = "blur",
    **kwargs: Any,
) -> CurveResult:
    """Insertion curve (higher AUC = more faithful); see :func:`perturbation_curve`."""
    return perturbation_curve(model, x, maps, target, mode="insertion", baseline=baseline, **kwargs)


# --------------------------------------------------------------------------------------------
# faithfulness: Average Drop and Increase in Confidence (Chattopadhay et al. 2018)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropIncrease:
    """Average Drop and Increase in Confidence of one set of maps.

    Attributes
    ----------
    full, masked:
        ``(N,)`` scores :math:`Y_i^c` of the full image and :math:`O_i^c` of the image seen
        through the map.
    drop:
        ``(N,)`` :math:`\\max(0, Y_i^c - O_i^c) / Y_i^c`.
    increase:
        ``(N,)`` bool, :math:`Y_i^c < O_i^c`.
    average_drop, increase_in_confidence:
        Both in percent, over the batch (lower drop and higher increase are better).
    """

    full: Tensor
    masked: Tensor
    drop: Tensor
    increase: Tensor

    @property
    def average_drop(self) -> float:
        return 100.0 * float(self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        return 100.0 * float(self.increase.double().mean())


@torch.no_grad()
def average_drop_increase(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    maps: Tensor,
    target: Tensor | int | Sequence[int],
    baseline: Baseline = "dataset_mean",
    batch_size: int = 8,
    blur_sigma: float = 5.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DropIncrease:
    r"""Average Drop and Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018,
    Sec. 5.1, Eqs. 20-21).

    The image is seen through the map :math:`M \in [0, 1]` (min-max normalised per image):
    :math:`\tilde x = b + M \odot (x - b)`, which is :math:`M \odot x` for the default
    ``"dataset_mean"`` baseline (the zero tensor). With :math:`Y_i^c` the softmax probability
    of the target on the full image and :math:`O_i^c` on :math:`\tilde x`,

    .. math::
        \text{Average Drop} = \frac{100}{N} \sum_i \frac{\max(0, Y_i^c - O_i^c)}{Y_i^c},
        \qquad
        \text{Increase in Confidence} = \frac{100}{N} \sum_i \mathbb 1[Y_i^c < O_i^c].

    For signed maps (LRP) pass the positive part: min-max normalisation of a signed map would
    put "no relevance" at some grey level in between.
    """
    x, maps, target = _check_batch(x, maps, target, model)
    base = make_baseline(x, baseline, blur_sigma, mean, std)
    masked_x = base + normalize_per_image(maps)[:, None] * (x - base)
    full, masked = [], []
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        for images, out in ((x, full), (masked_x, masked)):
            logits = forward_channels_last(model, images[sl])
            out.append(_scores(logits, target[sl], "probability"))
    y, o = torch.cat(full).double().cpu(), torch.cat(masked).double().cpu()
    drop = (y - o).clamp_min(0) / y.clamp_min(torch.finfo(torch.float64).tiny)
    return DropIncrease(full=y, masked=o, drop=drop, increase=y < o)


# --------------------------------------------------------------------------------------------
# localisation: boxes, pointing game, energy-based pointing game
# --------------------------------------------------------------------------------------------


def _check_masks(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    maps = torch.as_tensor(maps).detach().double()
    masks = torch.as_tensor(masks, device=maps.device).bool()
    if maps.dim() == 2:
        maps, masks = maps[None], masks.reshape(1, *masks.shape[-2:])
    if maps.shape != masks.shape:
        raise MetricError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ; build the masks "
            "at the map's resolution with boxes_to_mask(boxes, maps.shape[-2:])"
        )
    return maps, masks


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 15) -> Tensor:
    r"""Pointing game: is the map's maximum on the object? (Zhang et al., "Top-down neural
    attention by excitation backprop", ECCV 2016 / IJCV 2018, Sec. 5.1.)

    A hit when the most salient pixel :math:`p^\star = \arg\max_p M(p)` lies within
    ``tolerance`` pixels (Euclidean; the paper uses 15) of a pixel of the object mask.
    Accuracy is :math:`\#\text{hits} / N`. Ties for the maximum go to the first pixel in
    row-major order, so a constant map points at the top-left corner.

    Returns
    -------
    Tensor
        ``(N,)`` bool hits.
    """
    maps, masks = _check_masks(maps, masks)
    n, h, w = maps.shape
    peak = maps.flatten(1).argmax(1)
    hits = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        r, c = divmod(int(peak[i]), w)
        r0, r1, c0, c1 = (
            max(r - tolerance, 0),
            r + tolerance + 1,
            max(c - tolerance, 0),
            c + tolerance + 1,
        )
        near = masks[i, r0:r1, c0:c1]
        yy = torch.arange(r0, r0 + near.shape[0])[:, None] - r
        xx = torch.arange(c0, c0 + near.shape[1])[None, :] - c
        hits[i] = bool((near & (yy**2 + xx**2 <= tolerance**2)).any())
    return hits


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Energy-based pointing game: the share of the map's energy inside the box (Wang et al.,
    "Score-CAM: Score-weighted visual explanations for CNNs", CVPR-W 2020, Sec. 5.2).

    .. math::
        \text{Proportion} = \frac{\sum_{p \in \text{bbox}} M(p)}
        {\sum_{p \in \text{bbox}} M(p) + \sum_{p \notin \text{bbox}} M(p)}

    with each map min-max normalised to [0, 1] first. A constant map spreads its energy evenly,
    so it scores the box's share of the image (the chance level). For signed maps (LRP) pass
    the positive part.

    Returns
    -------
    Tensor
        ``(N,)`` proportions in [0, 1].
    """
    maps, masks = _check_masks(maps, masks)
    unit = normalize_per_image(maps)
    total = unit.flatten(1).sum(1)
    inside = (unit * masks).flatten(1).sum(1)
    area = masks.flatten(1).double().mean(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), area)


def box_share(maps: Tensor, box: Sequence[float] | Tensor) -> Tensor | float:
    r"""The share of a map's mass inside a box: :math:`\sum_{p \in \text{box}} M(p) /
    \sum_p M(p)`.

    ``maps`` is one map (H, W) (then a float is returned) or a batch (N, H, W) (then (N,));
    ``box`` is ``(left, top, right, bottom)`` in the map's pixels (pixel centres inside, see
    :func:`xai_helpers.boxes.boxes_to_mask`; e.g. from ``sample_boxes(name, loaded)``) or a
    bool mask. The map is taken as it is (no normalisation): for a CAM's ``upsampled`` map,
    whose minimum is 0, this is :func:`energy_pointing_game`; for a signed map (LRP) pass its
    positive part. A map that sums to zero has no mass to share: NaN.
    """
    m = torch.as_tensor(maps).detach().double()
    single = m.dim() == 2
    if single:
        m = m[None]
    if m.dim() != 3:
        raise MetricError(f"maps must be (H, W) or (N, H, W), got {tuple(m.shape)}")
    if isinstance(box, Tensor) and box.dtype == torch.bool:
        mask = box.to(m.device).expand_as(m)
    else:
        mask = boxes_to_mask([box], tuple(m.shape[-2:]))[0].to(m.device).expand_as(m)
    total = m.flatten(1).sum(1)
    inside = (m * mask).flatten(1).sum(1)
    share = torch.where(total != 0, inside / torch.where(total != 0, total, 1.0), torch.nan)
    return float(share[0]) if single else share


# --------------------------------------------------------------------------------------------
# sanity checks: cascading randomisation (Adebayo et al. 2018)
# --------------------------------------------------------------------------------------------


def randomize_layers(
    model: nn.Module, names: Sequence[str], seed: int = 0, inplace: bool = False
) -> nn.Module:
    r"""Re-initialise the learnable parameters of the named submodules (and their children).

    Each parameter tensor :math:`W` is replaced by Gaussian noise of the same mean and standard
    deviation, :math:`W' \sim \mathcal N(\bar W, \mathrm{sd}(W)^2)`, so its scale (and hence the
    activations' scale) is kept while everything learned is destroyed -- the re-initialisation
    of Adebayo et al. ("Sanity checks for saliency maps", NeurIPS 2018, Sec. 3.1). Buffers
    (BatchNorm running statistics) are left alone. The noise of parameter ``name`` is seeded
    from ``seed`` and the name, so a layer gets the same noise whatever else is randomised.

    Works on a deep copy unless ``inplace=True``; the copy keeps the original's mode.
    """
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    for name in names:
        if name not in modules:
            known = ", ".join(n for n, _ in target.named_children())
            raise MetricError(f"model has no submodule {name!r}; top-level ones are: {known}")
        with torch.no_grad():
            for pname, p in modules[name].named_parameters():
                full = f"{name}.{pname}" if name else pname
                gen = torch.Generator().manual_seed(seed * 1_000_003 + _stable_hash(full))
                std = float(p.std()) if p.numel() > 1 else 0.0
                if not std > 0:  # e.g. a freshly initialised all-ones BatchNorm weight
                    std = float(p.abs().mean()) or 1.0
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.copy_((float(p.mean()) + std * noise).to(p))
    return target


def _stable_hash(text: str) -> int:
    # Python's hash() of a str changes between runs (PYTHONHASHSEED); CRC-32 does not.
    return zlib.crc32(text.encode())


def spearman_rank(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    r"""Spearman rank correlation between paired maps ``(N, H, W)``: Pearson's :math:`r` of the
    pixel ranks (average ranks for ties), as in Adebayo et al. 2018, Sec. 3.

    ``absolute=True`` compares :math:`|a|` and :math:`|b|` (for signed maps). A constant map has
    no ordering to share, so its correlation is defined as 0 here (the robustness notebook's
    :func:`~xai_helpers.perturb.rank_correlation`, which computes each pair, reports NaN).
    """
    a_np, b_np = _paired_numpy(a, b, absolute)
    rhos = [rank_correlation(u, v) for u, v in zip(a_np, b_np, strict=True)]
    return torch.nan_to_num(torch.tensor(rhos, dtype=torch.float64), nan=0.0)


def ssim(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    r"""Structural similarity (Wang et al., IEEE TIP 2004, Eq. 13) of paired maps ``(N, H, W)``,
    each min-max normalised to [0, 1] first (``data_range = 1``; scikit-image's 7x7 window)."""
    from skimage.metrics import structural_similarity

    a_np, b_np = _paired_numpy(a, b, absolute)
    a_np = normalize_per_image(torch.from_numpy(a_np)).numpy()
    b_np = normalize_per_image(torch.from_numpy(b_np)).numpy()
    return torch.tensor(
        [structural_similarity(u, v, data_range=1.0) for u, v in zip(a_np, b_np, strict=True)],
        dtype=torch.float64,
    )


def _paired_numpy(a: Tensor, b: Tensor, absolute: bool) -> tuple[np.ndarray, np.ndarray]:
    a_np = torch.as_tensor(a).detach().double().cpu().numpy()
    b_np = torch.as_tensor(b).detach().double().cpu().numpy()
    if a_np.ndim == 2:
        a_np, b_np = a_np[None], b_np[None]
    if a_np.shape != b_np.shape or a_np.ndim != 3:
        raise MetricError(f"maps must be paired (N, H, W), got {a_np.shape} and {b_np.shape}")
    if absolute:
        a_np, b_np = np.abs(a_np), np.abs(b_np)
    return a_np, b_np


@dataclass(frozen=True)
class SanityResult:
    """Similarity of explanations after each cascading randomisation step to the original ones.

    Attributes
    ----------
    steps:
        ``["original", layer_1, layer_2, ...]``: step ``j`` has layers ``1..j`` randomised.
    spearman, ssim:
        ``(len(steps), N)`` similarity of each image's map to its original map (row 0 is 1).
    maps:
        ``(len(steps), N, H, W)`` the maps themselves.
    """

    steps: list[str]
    spearman: Tensor
    ssim: Tensor
    maps: Tensor


def cascading_randomization(
    model: nn.Module,
    layers: Sequence[str],
    explain: Callable[[nn.Module, Tensor, Tensor], Tensor],
    x: Tensor,
    target: Tensor | int | Sequence[int],
    seed: int = 0,
    absolute: bool = False,
    progress: bool = False,
) -> SanityResult:
    r"""Cascading model-parameter randomisation test (Adebayo et al., "Sanity checks for
    saliency maps", NeurIPS 2018, Sec. 3.1).

    Randomise ``layers`` one after the other, from the logits down (pass them top first), and
    after each step explain the *same* ``target`` classes again. A method whose maps stay similar
    (high Spearman rank correlation and SSIM to the original maps) while the network's learned
    weights are gone is not explaining the network -- it fails the check.

    Parameters
    ----------
    model:
        The trained network; it is never modified (one deep copy is randomised step by step).
    layers:
        Submodule names, top (logits) first, e.g. ``["classifier", "bn2", "conv_head",
        "blocks.6", ...]``.
    explain:
        ``explain(model, x, target) -> (N, H, W)`` maps, e.g.
        ``lambda m, x, t: grad_cam(m, x, t, layer="bn2").upsampled``.
    """
    target = _as_target(target, x.shape[0], x.device)
    original = explain(model, x, target).detach()
    work = copy.deepcopy(model)
    all_maps, names = [original], ["original"]
    steps = list(layers)
    if progress:
        steps = progress_bar(steps, desc="randomising", leave=False)
    for name in steps:
        randomize_layers(work, [name], seed=seed, inplace=True)
        all_maps.append(explain(work, x, target).detach())
        names.append(name)
    maps = torch.stack([m.to(original) for m in all_maps])
    rho = torch.stack([spearman_rank(original, m, absolute) for m in maps])
    sim = torch.stack([ssim(original, m, absolute) for m in maps])
    return SanityResult(steps=names, spearman=rho, ssim=sim, maps=maps)


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------


#: Peak memory below this is within the noise of the RSS sampler on the CPU (MiB).
MEMORY_FLOOR_MIB = 10.0


@dataclass(frozen=True)
class Cost:
    """What a call cost: wall time, passes through the model, and memory.

    Attributes
    ----------
    seconds:
        Wall time of the call (the median over ``repeats`` calls).
    forward_passes, forward_images:
        Calls of the model's ``forward`` and the images they carried (a batch of 32 is one pass
        of 32 images), in one call; passes through a rebuilt copy of the model (LRP's
        canonized network) count too.
    backward_passes:
        Backward passes through the model's output, or relevance passes back through its copy
        (LRP), in one call.
    peak_memory_mib:
        Peak extra memory during the call (the median over ``repeats`` calls): CUDA's peak
        allocation on a GPU; on the CPU the peak of the process's resident set size (sampled
        every millisecond) above its size at the start.
    repeats:
        How many calls were measured.
    seconds_all, peak_memory_all_mib:
        Every call's wall time and peak memory.
    """

    seconds: float
    forward_passes: int
    forward_images: int
    backward_passes: int
    peak_memory_mib: float
    repeats: int = 1
    seconds_all: tuple[float, ...] = ()
    peak_memory_all_mib: tuple[float, ...] = ()

    @property
    def memory_spread_mib(self) -> float:
        """Largest minus smallest peak memory over the repeats (0 for one call)."""
        peaks = self.peak_memory_all_mib or (self.peak_memory_mib,)
        return max(peaks) - min(peaks)

    def memory_mib(self, floor_mib: float = MEMORY_FLOOR_MIB) -> float | None:
        """The peak memory when it means something, else ``None``.

        Meaningful: measured at least 3 times, a median of at least ``floor_mib`` (below it the
        CPU sampler sees allocator noise), and a spread of at most a quarter of the median.
        Print ``None`` as "not resolved", never as 0.
        """
        ok = (
            self.repeats >= 3
            and self.peak_memory_mib >= floor_mib
            and self.memory_spread_mib <= 0.25 * self.peak_memory_mib
        )
        return self.peak_memory_mib if ok else None


def measure_cost(
    fn: Callable[[], _R],
    model: nn.Module,
    device: torch.device | str | None = None,
    repeats: int = 1,
    memory: bool = True,
) -> tuple[_R, Cost]:
    """Call ``fn()`` ``repeats`` times and measure it; the passes are counted as they happen.

    Forward and backward passes through ``model`` are counted by hooks on it
    (:func:`xai_helpers.hooks.count_passes`), and passes through a rebuilt copy of it are
    reported by the code that runs them (LRP: one forward and one relevance pass per call), all
    from the first call. Time and memory are the medians over the calls; with ``repeats >= 3``
    :meth:`Cost.memory_mib` says whether the memory is more than noise.

    ``memory=False`` skips the memory sampler (the peak is then NaN): on the CPU it is a thread
    that wakes every millisecond, and next to two busy compute threads on two cores it slowed
    Score-CAM by about 13 % (6.5 s instead of 7.4 s on one photo). Count passes and time without
    it when the memory is not reported anyway.

    Returns ``(fn's result of the first call, Cost)``; the hooks are removed even when ``fn``
    raises.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise MetricError(f"repeats must be a positive int, not {repeats!r}")
    device = torch.device(device) if device is not None else _module_device(model)
    seconds, peaks, first = [], [], None
    for i in range(repeats):
        sampler = _PeakSampler(device) if memory else None
        with count_passes(model) as counted:
            try:
                if sampler is not None:
                    sampler.start()
                start = time.perf_counter()
                result = fn()
                seconds.append(time.perf_counter() - start)
            finally:
                peaks.append(sampler.stop() if sampler is not None else math.nan)
        if i == 0:
            first, passes = result, counted
    return first, Cost(
        seconds=statistics.median(seconds),
        forward_passes=passes.forward,
        forward_images=passes.images,
        backward_passes=passes.backward,
        peak_memory_mib=statistics.median(peaks),
        repeats=repeats,
        seconds_all=tuple(seconds),
        peak_memory_all_mib=tuple(peaks),
    )


def _module_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _PeakSampler:
    """Peak memory above the starting level: CUDA statistics, or a thread polling the RSS."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return (self.peak - self.base) / 2**20
