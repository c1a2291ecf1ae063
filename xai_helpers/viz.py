"""Heatmaps on images: upsampling, normalisation, overlays, colorbars, grids, saving for slides.

Everything is RGB and float in [0, 1] throughout. The usual OpenCV recipe
(``cv2.applyColorMap`` then ``cv2.addWeighted``) returns *BGR* and silently swaps red and blue
when shown with matplotlib; here a matplotlib colormap is applied directly, so what you plot is
what you computed.

Two colour conventions are used in the course:

* CAM-family maps are non-negative: normalised to [0, 1] per image and shown with ``"jet"``
  (the papers' choice) or any sequential colormap;
* LRP relevance is signed: shown with a diverging colormap (``"bwr"``) centred at zero, with
  limits ``±max|R|`` so that white means "no relevance" (``symmetric=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "normalize_map",
    "overlay",
    "plot_grid",
    "save_figure",
    "show_map",
    "to_numpy_image",
    "upsample_map",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_numpy_image(image: Image.Image | ArrayLike) -> np.ndarray:
    """A PIL image, (H, W, 3) array or (3, H, W) tensor as an (H, W, 3) float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    a = _as_numpy(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def upsample_map(heatmap: ArrayLike, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a low-resolution map (h, w) or a batch (N, h, w) to ``size = (H, W)``.

    Bilinear with ``align_corners=False``, as ``F.interpolate`` and the CAM papers' code do, so
    each low-resolution cell is centred on the patch of pixels it summarises.
    """
    t = torch.as_tensor(_as_numpy(heatmap), dtype=torch.float32)
    squeeze = t.dim() == 2
    if squeeze:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected a map (h, w) or a batch (N, h, w), got shape {tuple(t.shape)}")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    up = F.interpolate(t[:, None], size=tuple(size), mode=mode, **kwargs)[:, 0]
    out = up.numpy()
    return out[0] if squeeze else out


def normalize_map(heatmap: ArrayLike, eps: float = 1e-12) -> np.ndarray:
    r"""Min-max normalise to [0, 1]: :math:`(M - \min M) / (\max M - \min M)`.

    A constant map (nothing to explain, e.g. a CAM that ReLU zeroed) becomes all zeros, never NaN.
    """
    a = _as_numpy(heatmap).astype(np.float64)
    lo, hi = a.min(), a.max()
    if hi - lo < eps:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def overlay(
    image: Image.Image | ArrayLike,
    heatmap: ArrayLike,
    cmap: str = "jet",
    alpha: float = 0.5,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heatmap onto an RGB image: ``(1 - alpha) * image + alpha * color``.

    The heatmap is upsampled to the image size if needed. With ``normalize=True`` it is min-max
    normalised first; otherwise ``vmin``/``vmax`` (default: the map's range) set the colour limits.
    Returns an (H, W, 3) float array in [0, 1].
    """
    img = to_numpy_image(image)
    h = _as_numpy(heatmap).astype(np.float32)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {h.shape}")
    if h.shape != img.shape[:2]:
        h = upsample_map(h, img.shape[:2])
    if normalize:
        h, vmin, vmax = normalize_map(h), 0.0, 1.0
    norm = Normalize(vmin=h.min() if vmin is None else vmin, vmax=h.max() if vmax is None else vmax)
    colored = colormaps[cmap](norm(h))[..., :3]
    return np.clip((1.0 - alpha) * img + alpha * colored, 0.0, 1.0)


def show_map(
    ax: Axes,
    heatmap: ArrayLike,
    image: Image.Image | ArrayLike | None = None,
    title: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    symmetric: bool = False,
    colorbar: bool = True,
) -> Axes:
    """Draw a heatmap (over ``image`` when given) on ``ax``, with a colorbar.

    ``symmetric=True`` is for signed maps such as LRP relevance: diverging ``"bwr"`` colormap,
    limits ``±max|map|``, no overlay normalisation (the sign matters). Otherwise the map is
    min-max normalised and drawn with ``"jet"``.
    """
    h = _as_numpy(heatmap).astype(np.float32)
    if symmetric:
        cmap = cmap or "bwr"
        bound = float(np.abs(h).max()) or 1.0
        vmin, vmax = -bound, bound
    else:
        cmap = cmap or "jet"
        h, vmin, vmax = normalize_map(h), 0.0, 1.0
    if image is not None:
        img = to_numpy_image(image)
        ax.imshow(overlay(img, h, cmap=cmap, alpha=alpha, normalize=False, vmin=vmin, vmax=vmax))
    else:
        ax.imshow(h, cmap=cmap, vmin=vmin, vmax=vmax)
    if colorbar:
        mappable = plt.cm.ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return ax


def plot_grid(
    images: Sequence[Image.Image | ArrayLike],
    maps: Mapping[str, Sequence[ArrayLike | None]],
    row_titles: Sequence[str] | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    symmetric: Mapping[str, bool] | None = None,
    cell_size: float = 2.2,
    colorbar: bool = False,
    show_image: bool = True,
) -> Figure:
    """Images down the rows, methods across the columns, each cell an overlay with a title.

    Parameters
    ----------
    images:
        One display image per row (what the network saw: use ``LoadedModel.view``).
    maps:
        ``{method name: [map for row 0, map for row 1, ...]}``; ``None`` leaves a cell empty
        (e.g. CAM on a model it does not apply to).
    row_titles:
        Shown at the left of each row (e.g. the class explained).
    symmetric:
        ``{method name: True}`` for signed maps (LRP), drawn with ``bwr`` around zero.
    show_image:
        Add a first column with the plain image.
    """
    symmetric = dict(symmetric or {})
    for method, column in maps.items():
        if len(column) != len(images):
            raise ValueError(f"method {method!r} has {len(column)} maps for {len(images)} images")
    ncols = len(maps) + int(show_image)
    nrows = len(images)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(cell_size * ncols, cell_size * nrows),
        squeeze=False,
        layout="constrained",
    )
    for r, image in enumerate(images):
        c0 = 0
        if show_image:
            axes[r, 0].imshow(to_numpy_image(image))
            axes[r, 0].set_axis_off()
            if r == 0:
                axes[r, 0].set_title("image", fontsize=10)
            c0 = 1
        for c, (method, column) in enumerate(maps.items(), start=c0):
            ax = axes[r, c]
            if column[r] is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                continue
            show_map(
                ax,
                column[r],
                image=image,
                cmap=cmap,
                alpha=alpha,
                symmetric=symmetric.get(method, False),
                colorbar=colorbar,
                title=method if r == 0 else None,
            )
        if row_titles is not None:
            axes[r, 0].set_axis_on()
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            for spine in axes[r, 0].spines.values():
                spine.set_visible(False)
            axes[r, 0].set_ylabel(row_titles[r], fontsize=10)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Save ``fig`` for slides; the format follows the suffix: ``.png``, ``.pdf`` or ``.svg``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"unsupported figure format {path.suffix!r}; use .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
