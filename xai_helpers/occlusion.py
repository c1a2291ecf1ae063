r"""Black-box perturbation methods: occlusion and RISE, on one batched scorer of masked inputs.

Both methods ask the network questions instead of reading its gradients: they hide parts of the
input, run the network on the altered copies and attribute the change of the class score to the
hidden pixels. Both are written with *keep masks* :math:`M \in [0, 1]^{H \times W}` (1: the
pixel is kept, 0: it is replaced by the baseline :math:`X_b`),

.. math:: X \circ_b M = X_b + M \circ (X - X_b),

and both score the masked copies with :func:`score_masked`: batches of ``batch_size`` copies
through the network under ``torch.no_grad()``, every class at once, so that the same image
explained for several classes shares every pass (as in :func:`xai_helpers.cams.score_cam`).

:func:`occlusion`
    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
    (Sec. 4.2): a square patch slides over the image; the attribution of a pixel is the mean
    drop of the class score over the patch positions that hide it. The cost is one forward
    pass per patch position.
:func:`rise`
    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", BMVC 2018 (Sec. 3): :math:`N` random smooth masks; the saliency of a pixel is the
    mean score of the masked copies in which it was kept. The cost is one forward pass per
    mask.

Scores are the softmax probability of the class (``score="probability"``, both papers) or its
logit (``score="logit"``). The baseline is named with the course's vocabulary
(:mod:`xai_helpers.baselines`); the default ``"dataset_mean"`` is the all-zero normalised
tensor, which is what the RISE authors' code (``masks * x`` on the normalised input) and
captum's ``Occlusion`` (``baselines=0``) replace a pixel with. Passes go through the model's
own ``forward``, so :func:`xai_helpers.hooks.count_passes` counts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .baselines import BaselineName, baseline_batch
from .errors import PerturbationError
from .hooks import restore_state
from .inputs import Target, check_batch, forward_channels_last, resolve_targets, unpack_model
from .maps import normalize_per_image
from .models import LoadedModel
from .progress import ProgressFn, Reporter

__all__ = [
    "PerturbationError",
    "PerturbationResult",
    "Score",
    "occlusion",
    "occlusion_positions",
    "rise",
    "rise_masks",
    "score_masked",
]

#: What a masked copy is scored by: the class probability (softmax over all classes, as both
#: papers) or the logit.
Score = Literal["probability", "logit"]

#: ``make_masks(start, stop)``: the keep masks ``start .. stop - 1`` as a (B, H, W) tensor.
MaskFn = Callable[[int, int], torch.Tensor]


@dataclass
class PerturbationResult:
    """The output of :func:`occlusion` and :func:`rise`, for a batch of N images.

    Attributes
    ----------
    saliency:
        (N, H, W) the map as the method defines it, in units of the score: occlusion's mean
        score drop (signed) or RISE's expected score given that a pixel is kept.
    normalized:
        (N, H, W) ``saliency`` min-max normalised per image to [0, 1] (a constant map becomes
        zeros).
    target:
        (N,) the explained class of each image.
    logits:
        (N, C) the logits of the unperturbed images.
    passes:
        Masked images scored (forward-pass images), shared between copies of one image.
    partial:
        RISE only: ``{n: (N, H, W) saliency from the first n masks}`` for each requested
        checkpoint.
    """

    saliency: torch.Tensor
    normalized: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    passes: int
    partial: dict[int, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# shared: checks, targets, the batched scorer
# ----------------------------------------------------------------------------------------------


def _unpack(model_or_loaded: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    return unpack_model(model_or_loaded, error=PerturbationError)


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PerturbationError(f"{name} must be a positive int, not {value!r}")
    return value


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise PerturbationError(f"{name} must be an int or a pair (height, width), not {value!r}")
    return (_positive_int(value[0], name), _positive_int(value[1], name))


def _check_score(score: str) -> None:
    if score not in ("probability", "logit"):
        raise PerturbationError(f"score must be 'probability' or 'logit', not {score!r}")


def _first_copies(x: torch.Tensor) -> list[int]:
    """For each image, the index of its first identical copy in the batch (itself if none)."""
    return [next(j for j in range(i + 1) if torch.equal(x[j], x[i])) for i in range(len(x))]


def _prepare(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target,
    baseline: BaselineName | torch.Tensor,
    score: Score,
    batch_size: int,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked model, input, baseline, clean logits and targets."""
    _check_score(score)
    _positive_int(batch_size, "batch_size")
    model, loaded = _unpack(model_or_loaded)
    x = check_batch(x, model, error=PerturbationError).detach()
    norm = (loaded.mean, loaded.std) if loaded is not None else (None, None)
    base = baseline_batch(x, baseline, *norm, error=PerturbationError)
    with restore_state(model), torch.no_grad():
        logits = model(x)
    class_index = loaded.class_index if loaded is not None else None
    targets = resolve_targets(target, logits, class_index, error=PerturbationError)
    return model, x, base, logits, targets


def _scores(logits: torch.Tensor, score: Score) -> torch.Tensor:
    return torch.softmax(logits, dim=1) if score == "probability" else logits


def score_masked(
    model: nn.Module,
    image: torch.Tensor,
    base: torch.Tensor,
    make_masks: MaskFn,
    total: int,
    batch_size: int = 4,
    score: Score = "probability",
    report: Reporter | None = None,
) -> torch.Tensor:
    r"""Scores of every class for ``total`` masked copies of one image, (total, C).

    Copy :math:`i` is :math:`X_b + M_i \circ (X - X_b)` with :math:`M_i` the (H, W) keep mask
    ``make_masks(i, i + 1)[0]`` (the same mask on the three colour channels); the copies go
    through ``model`` ``batch_size`` at a time, in ``channels_last`` memory format (faster on
    the CPU for Lite0; the default batch of 4 too, as measured for
    :func:`~xai_helpers.cams.score_cam`), under ``torch.no_grad()``
    and in eval mode. ``make_masks(start, stop)`` builds only the masks of one batch, so the
    memory does not grow with ``total``.

    Parameters
    ----------
    model:
        The network.
    image, base:
        (1, 3, H, W) the normalised image and its baseline.
    make_masks:
        ``make_masks(start, stop)``: the keep masks of copies ``start .. stop - 1``, (B, H, W).
    total:
        Number of masked copies.
    batch_size:
        Copies per forward pass; the scores do not depend on it.
    score:
        ``"probability"`` (softmax over the classes) or ``"logit"``.
    report:
        A :class:`~xai_helpers.progress.Reporter` advanced by the images of every pass.
    """
    _positive_int(batch_size, "batch_size")
    out: torch.Tensor | None = None
    delta = image - base
    with restore_state(model), torch.no_grad():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            masks = make_masks(start, stop).to(device=image.device, dtype=image.dtype)
            batch = base + masks[:, None] * delta
            rows = _scores(forward_channels_last(model, batch), score)
            if out is None:
                out = torch.empty(total, rows.shape[1], dtype=image.dtype, device=image.device)
            out[start:stop] = rows.to(image.dtype)
            if report is not None:
                report.update(stop - start)
    if out is None:
        raise PerturbationError("nothing to score: total must be at least 1")
    return out


# ----------------------------------------------------------------------------------------------
# occlusion
# ----------------------------------------------------------------------------------------------


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    r"""Start offsets of the patch along one axis of ``size`` pixels.

    :math:`0, s, 2s, \dots` for :math:`\lceil (S - p)/s \rceil + 1` positions (captum's
    ``Occlusion``): when the stride does not divide :math:`S - p`, the last patch sticks out of
    the image and is cut at its border, so every pixel is hidden at least once.
    """
    if patch > size:
        raise PerturbationError(f"the patch ({patch} px) is larger than the image ({size} px)")
    if stride > patch and patch < size:
        raise PerturbationError(
            f"stride {stride} > patch {patch} leaves pixels that no patch hides (they would "
            "get no attribution); use a stride of at most the patch size"
        )
    return [k * stride for k in range(math.ceil((size - patch) / stride) + 1)]


def occlusion(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    patch: int | Sequence[int] = 32,
    stride: int | Sequence[int] = 16,
    baseline: BaselineName | torch.Tensor = "dataset_mean",
    score: Score = "probability",
    batch_size: int = 4,
    progress: bool | ProgressFn = True,
) -> PerturbationResult:
    r"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014, Sec. 4.2): slide a patch of the baseline over the image and record the drop of
    the class score.

    With :math:`P_r` the r-th patch (a :math:`p_h \times p_w` square at the stride grid's r-th
    position, cut at the image border), :math:`M_r = 1 - \mathbb{1}_{P_r}` its keep mask and
    :math:`s_c` the score of class c,

    .. math::
        \Delta_r = s_c(X) - s_c(X_b + M_r \circ (X - X_b)), \qquad
        S_{ij} = \frac{\sum_r \Delta_r \mathbb{1}[(i, j) \in P_r]}
                      {\sum_r \mathbb{1}[(i, j) \in P_r]},

    the mean drop over the patches that hide pixel :math:`(i, j)` (overlapping patches are
    averaged, as captum's ``Occlusion`` does). Zeiler & Fergus plot :math:`s_c` of the occluded
    image itself, a grey square over a probability; the drop :math:`\Delta` is the same map,
    mirrored and shifted, and is the attribution convention of captum. The map is **signed**:
    a negative value means that hiding the pixels *raised* the score.

    Cost: one forward pass per patch position, :math:`(\lceil (H - p_h)/s_h\rceil + 1)
    (\lceil (W - p_w)/s_w\rceil + 1)` (169 for the defaults on 224 x 224), per distinct image:
    the same image explained for several classes shares all of them.

    Parameters
    ----------
    model_or_loaded:
        A :class:`~xai_helpers.models.LoadedModel` (then ``target`` may be a class name and
        ``baseline="black"`` knows the normalisation) or a plain ``nn.Module``.
    x:
        (N, 3, H, W) normalised batch.
    target:
        ``None`` (each image's top-1 class), one class for all, or N classes.
    patch, stride:
        Patch size and stride in pixels, an int or (height, width). The stride must not exceed
        the patch (every pixel must be hidden at least once).
    baseline:
        What a hidden pixel becomes: a name of :data:`xai_helpers.baselines.BASELINES` or a
        tensor of normalised values (default ``"dataset_mean"``, the all-zero tensor).
    score:
        ``"probability"`` (default) or ``"logit"``.
    batch_size:
        Occluded copies per forward pass; results do not depend on it.
    progress:
        ``True``: a text bar (:mod:`xai_helpers.progress`); ``False``: none; a callable
        ``progress(done, total)``.
    """
    model, x, base, logits, targets = _prepare(
        model_or_loaded, x, target, baseline, score, batch_size
    )
    (ph, pw), (sh, sw) = _pair(patch, "patch"), _pair(stride, "stride")
    h, w = x.shape[-2:]
    rows, cols = occlusion_positions(h, ph, sh), occlusion_positions(w, pw, sw)
    boxes = [
        (top, left) for top in rows for left in cols
    ]  # row-major, as captum orders its windows

    def make_masks(start: int, stop: int) -> torch.Tensor:
        masks = torch.ones(stop - start, h, w, dtype=x.dtype, device=x.device)
        for m, (top, left) in zip(masks, boxes[start:stop], strict=True):
            m[top : top + ph, left : left + pw] = 0.0
        return masks

    count = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    for top, left in boxes:
        count[top : top + ph, left : left + pw] += 1
    first = _first_copies(x)
    unique = sorted(set(first))
    clean = _scores(logits, score)
    saliency = torch.empty(len(x), h, w, dtype=x.dtype, device=x.device)
    with Reporter(len(unique) * len(boxes), progress, desc="occlusion", unit="pass") as bar:
        for i in unique:
            occluded = score_masked(
                model,
                x[i : i + 1],
                base[i : i + 1],
                make_masks,
                len(boxes),
                batch_size,
                score,
                bar,
            )
            for j in (j for j in range(len(x)) if first[j] == i):
                drops = clean[j, targets[j]] - occluded[:, targets[j]]
                total = torch.zeros(h, w, dtype=x.dtype, device=x.device)
                for d, (top, left) in zip(drops.tolist(), boxes, strict=True):
                    total[top : top + ph, left : left + pw] += d
                saliency[j] = total / count
    return PerturbationResult(
        saliency=saliency,
        normalized=normalize_per_image(saliency),
        target=targets,
        logits=logits,
        passes=len(unique) * len(boxes),
    )


# ----------------------------------------------------------------------------------------------
# RISE
# ----------------------------------------------------------------------------------------------


@dataclass
class _RiseMasks:
    """The random draws of RISE's masks; :meth:`build` makes any slice of them on demand."""

    grids: torch.Tensor  # (N, s_h, s_w) bool
    shifts: torch.Tensor  # (N, 2) long: (dy, dx) in [0, C_h) x [0, C_w)
    cell: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def draw(
        cls, n: int, size: tuple[int, int], cells: tuple[int, int], p: float, seed: int
    ) -> _RiseMasks:
        gen = torch.Generator().manual_seed(seed)
        grids = torch.rand(n, *cells, generator=gen) < p
        cell = (math.ceil(size[0] / cells[0]), math.ceil(size[1] / cells[1]))
        dy = torch.randint(0, cell[0], (n,), generator=gen)
        dx = torch.randint(0, cell[1], (n,), generator=gen)
        return cls(grids, torch.stack([dy, dx], dim=1), cell, size)

    def build(self, start: int, stop: int) -> torch.Tensor:
        grids = self.grids[start:stop, None].float()
        s_h, s_w = self.grids.shape[1:]
        up = (s_h + 1) * self.cell[0], (s_w + 1) * self.cell[1]
        big = F.interpolate(grids, size=up, mode="bilinear", align_corners=False)[:, 0]
        h, w = self.size
        return torch.stack(
            [
                b[dy : dy + h, dx : dx + w]
                for b, (dy, dx) in zip(big, self.shifts[start:stop].tolist(), strict=True)
            ]
        )


def _rise_draws(
    n_masks: int, size: tuple[int, int], cells: int | Sequence[int], p: float, seed: int
) -> _RiseMasks:
    _positive_int(n_masks, "n_masks")
    cells = _pair(cells, "cells")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise PerturbationError(
            f"p (the probability of keeping a cell) must be in (0, 1], not {p!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PerturbationError(f"seed must be an int, not {seed!r}")
    if cells[0] > size[0] or cells[1] > size[1]:
        raise PerturbationError(f"{cells} cells do not fit an image of {size} pixels")
    return _RiseMasks.draw(n_masks, size, cells, float(p), seed)


def rise_masks(
    n_masks: int,
    size: tuple[int, int],
    cells: int | Sequence[int] = 7,
    p: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    r"""RISE's random masks (Petsiuk et al. 2018, Sec. 3.2), (N, H, W) in [0, 1].

    Each mask: a binary :math:`s \times s` grid whose cells are 1 (kept) with probability
    :math:`p`; upsampled bilinearly (``align_corners=False``) to
    :math:`(s + 1) C \times (s + 1) C` with :math:`C = \lceil H / s \rceil` the cell size; then
    an :math:`H \times W` window cut at a random shift :math:`(\delta_y, \delta_x)` in
    :math:`[0, C)^2`, so the cell borders fall anywhere, not on a fixed grid. Everything is
    drawn from a ``torch.Generator`` seeded with ``seed``: the grids first, then the shifts;
    the same arguments give the same masks, which :func:`rise` uses.

    The authors' code resizes with scikit-image (``order=1``, ``mode="reflect"``); bilinear
    interpolation with ``align_corners=False`` is the same up to the treatment of the border
    cells.
    """
    size = (int(size[0]), int(size[1]))
    draws = _rise_draws(n_masks, size, cells, p, seed)
    return draws.build(0, n_masks)


def rise(
    model_or_loaded: nn.Module | LoadedModel,
    x: torch.Tensor,
    target: Target = None,
    n_masks: int = 1000,
    cells: int | Sequence[int] = 7,
    p: float = 0.5,
    seed: int = 0,
    baseline: BaselineName | torch.Tensor = "dataset_mean",
    score: Score = "probability",
    batch_size: int = 4,
    progress: bool | ProgressFn = True,
    checkpoints: Sequence[int] = (),
) -> PerturbationResult:
    r"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018, Sec. 3, eqs. 1-6): the mean score of randomly masked copies,
    each weighted by its mask.

    With :math:`N` random masks :math:`M_i` (:func:`rise_masks`: cells kept with probability
    :math:`p`, upsampled, randomly shifted) and :math:`s_c` the score of class c,

    .. math:: S_c(\lambda) = \frac{1}{N\, p} \sum_{i=1}^{N}
              s_c\big(X_b + M_i \circ (X - X_b)\big)\, M_i(\lambda),

    the Monte Carlo estimate of :math:`\mathbb{E}[s_c(X \circ M) \mid M(\lambda) = 1]`, the
    expected score when pixel :math:`\lambda` is kept (eq. 6). The masks are the same for every
    image of the batch (the same ``seed``), built one batch at a time and shared by all images;
    the same image explained for several classes shares every pass. Unsigned (non-negative for
    ``score="probability"``).

    Cost: :math:`N` forward passes per distinct image. Petsiuk et al. use thousands of masks;
    the default :math:`N = 1000` keeps a call under a minute on two CPU cores (notebook 07
    measures how the map settles as N grows).

    Parameters
    ----------
    model_or_loaded, x, target, baseline, score, batch_size, progress:
        As for :func:`occlusion`; the default baseline, ``"dataset_mean"``, is what the authors'
        code does (the mask multiplies the normalised input).
    n_masks:
        :math:`N`.
    cells:
        :math:`s`, grid cells per side (or (rows, columns)).
    p:
        Probability of keeping a cell.
    seed:
        Seed of the masks' generator.
    checkpoints:
        Mask counts :math:`n \le N` at which to keep the estimate from the first :math:`n`
        masks (``PerturbationResult.partial``), to watch it converge at no extra cost.
    """
    model, x, base, logits, targets = _prepare(
        model_or_loaded, x, target, baseline, score, batch_size
    )
    h, w = x.shape[-2:]
    draws = _rise_draws(n_masks, (h, w), cells, p, seed)
    marks = sorted({_positive_int(c, "checkpoints") for c in checkpoints})
    if marks and marks[-1] > n_masks:
        raise PerturbationError(f"checkpoints must be at most n_masks={n_masks}, got {marks[-1]}")
    first = _first_copies(x)
    unique = sorted(set(first))
    sums = torch.zeros(len(x), h * w, dtype=x.dtype, device=x.device)
    partial: dict[int, torch.Tensor] = {}
    # Batches end at every checkpoint, so a partial sum is exact.
    edges = sorted({*range(0, n_masks, batch_size), *marks, n_masks})
    with Reporter(len(unique) * n_masks, progress, desc="RISE", unit="pass") as bar:
        for start, stop in zip(edges[:-1], edges[1:], strict=True):
            masks = draws.build(start, stop).to(device=x.device, dtype=x.dtype)
            for i in unique:
                scored = score_masked(
                    model,
                    x[i : i + 1],
                    base[i : i + 1],
                    lambda a, b, masks=masks: masks[a:b],
                    stop - start,
                    stop - start,
                    score,
                    bar,
                )
                for j in (j for j in range(len(x)) if first[j] == i):
                    sums[j] += scored[:, targets[j]] @ masks.flatten(1)
            if stop in marks:
                partial[stop] = (sums / (stop * p)).view(len(x), h, w).clone()
    saliency = (sums / (n_masks * p)).view(len(x), h, w)
    return PerturbationResult(
        saliency=saliency,
        normalized=normalize_per_image(saliency),
        target=targets,
        logits=logits,
        passes=len(unique) * n_masks,
        partial=partial,
    )
