r"""Operations on explanation maps, defined once: min-max normalisation, upsampling, pixel ranks.

Every module that normalises, upsamples or ranks a map imports it from here (the CAM family,
the metrics, the perturbations, the figures and the benchmark), so that "normalised" and
"upsampled" mean the same thing everywhere:

* :func:`normalize_per_image`: :math:`(M - \min M)/(\max M - \min M)` per map; a constant map
  becomes all zeros, never NaN; NaN pixels (outside a warped image) stay NaN and are ignored
  by the minimum and maximum;
* :func:`upsample`: bilinear with ``align_corners=False`` (each low-resolution cell centred on
  the patch of pixels it summarises, as ``F.interpolate`` and the CAM papers' code do);
* :func:`rank_pixels`: the order in which deletion-style curves remove pixels, most important
  first, with the tie rule an explicit argument (``"random"``, seeded, or ``"raster"``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["Ties", "normalize_per_image", "rank_pixels", "upsample"]

#: How :func:`rank_pixels` orders pixels of equal value: uniformly at random (seeded) or in
#: raster order (row by row, left to right).
Ties = Literal["random", "raster"]


def normalize_per_image(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    r"""Min-max normalise each map of a batch ``(N, ...)``: :math:`(M - \min M)/(\max M - \min M)`.

    A map whose range is at most ``eps`` (a constant map, e.g. a CAM that ReLU zeroed) becomes
    zeros, never NaN. NaN pixels stay NaN and do not enter the minimum and maximum.
    """
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    nan = torch.isnan(flat)
    if bool(nan.any()):
        lo = torch.where(nan, torch.inf, flat).amin(dim=1).view(shape)
        hi = torch.where(nan, -torch.inf, flat).amax(dim=1).view(shape)
    else:
        lo = flat.min(dim=1).values.view(shape)
        hi = flat.max(dim=1).values.view(shape)
    span = hi - lo
    ok = span > eps
    safe = torch.where(ok, span, torch.ones_like(span))
    out = torch.where(ok, (maps - lo) / safe, torch.zeros_like(maps))
    return torch.where(torch.isnan(maps), maps, out) if bool(nan.any()) else out


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch of maps ``(N, h, w)`` to ``size = (H, W)``.

    Bilinear (and bicubic) interpolation with ``align_corners=False``; ``"nearest"`` repeats
    cells. The dtype and device are kept.
    """
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=tuple(size), mode=mode, **kwargs)[:, 0]


def rank_pixels(
    maps: torch.Tensor,
    ties: Ties = "random",
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank of every pixel of each map ``(N, ...)`` in decreasing value: 0 is the most important.

    Returns an ``(N, P)`` long tensor over the flattened pixels. Ties are broken

    * ``"random"``: uniformly at random, from ``generator`` (a constant map is then removed in
      random order, not from the top rows down); the deletion and insertion curves;
    * ``"raster"``: in raster order (a stable sort, the first pixel first); top-k masks.

    With ``valid`` (a bool mask like ``maps``), invalid pixels rank after all valid ones.
    """
    n = maps.shape[0]
    flat = maps.flatten(1)
    hw = flat.shape[1]
    if valid is not None:
        flat = torch.where(valid.reshape(n, hw).to(flat.device), flat, -torch.inf)
    if ties == "random":
        noise = torch.rand(n, hw, generator=generator)
        perm = torch.argsort(noise, dim=1).to(flat.device)
        shuffled = flat.gather(1, perm)
        order = perm.gather(1, torch.argsort(shuffled, dim=1, descending=True, stable=True))
    elif ties == "raster":
        order = torch.argsort(flat, dim=1, descending=True, stable=True)
    else:
        raise ValueError(f"ties must be 'random' or 'raster', not {ties!r}")
    ranks = torch.empty_like(order)
    positions = torch.arange(hw, device=flat.device).expand(n, hw).contiguous()
    ranks.scatter_(1, order, positions)
    return ranks
