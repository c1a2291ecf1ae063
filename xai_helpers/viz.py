r"""Heatmaps on images: upsampling, normalisation, overlays, colorbars, grids, saving for slides.

Everything is RGB and float in [0, 1] throughout. The usual OpenCV recipe
(``cv2.applyColorMap`` then ``cv2.addWeighted``) returns *BGR* and silently swaps red and blue
when shown with matplotlib; here a matplotlib colormap is applied directly, so what you plot is
what you computed.

A colorbar shows the values that were computed. How a map is scaled is always an explicit
argument, ``scale``, and the colorbar's label says what it shows:

* ``"values"`` (default): the numbers as computed, colour limits from the map's range (or
  ``vmin``/``vmax``);
* ``"minmax"``: the map min-max normalised to [0, 1] first; the colorbar says "min-max
  normalised";
* ``"signed"``: for signed maps (LRP relevance, gradients): a diverging colour map (``"bwr"``)
  centred at zero with symmetric limits :math:`\pm q`, :math:`q` a high percentile of
  :math:`|M|` (``clip``, 99.5 by default; Montavon et al.'s tutorial and zennit's heatmaps
  clip the same way), values beyond it saturated (the colorbar's arrows). Over a photo the
  relevance is drawn on a *grey* copy of it, opaque where :math:`|M|` is large and transparent
  where it is zero, so that a row of LRP maps stays readable on a projector.

:func:`use_course_style` sets figure sizes and fonts readable at slide size (at least 10 pt at
the stored resolution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .images import to_rgb_array
from .maps import normalize_per_image, upsample

__all__ = [
    "Scale",
    "color_limits",
    "draw_boxes",
    "grey_image",
    "mark_invalid",
    "normalize_map",
    "overlay",
    "plot_grid",
    "save_figure",
    "show_map",
    "signed_overlay",
    "to_numpy_image",
    "upsample_map",
    "use_course_style",
]

ArrayLike = np.ndarray | torch.Tensor
#: How :func:`show_map` scales a map; see the module docstring.
Scale = Literal["values", "minmax", "signed"]


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_numpy_image(image: Image.Image | ArrayLike) -> np.ndarray:
    """A PIL image, (H, W, 3) array or (3, H, W) tensor as an (H, W, 3) float32 array in [0, 1].

    The conversion is :func:`xai_helpers.images.to_rgb_array`: a float picture outside [0, 1]
    is an error (e.g. a normalised tensor passed as a picture: use ``LoadedModel.unnormalize``),
    never silently clipped.
    """
    return to_rgb_array(image, error=ValueError).astype(np.float32, copy=False)


def upsample_map(heatmap: ArrayLike, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a low-resolution map (h, w) or a batch (N, h, w) to ``size = (H, W)``, in float32.

    :func:`xai_helpers.maps.upsample`: bilinear with ``align_corners=False``, as
    ``F.interpolate`` and the CAM papers' code do, so each low-resolution cell is centred on the
    patch of pixels it summarises.
    """
    t = torch.as_tensor(_as_numpy(heatmap), dtype=torch.float32)
    squeeze = t.dim() == 2
    if squeeze:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected a map (h, w) or a batch (N, h, w), got shape {tuple(t.shape)}")
    out = upsample(t, tuple(size), mode=mode).numpy()
    return out[0] if squeeze else out


def normalize_map(heatmap: ArrayLike, eps: float = 1e-12) -> np.ndarray:
    r"""Min-max normalise one map to [0, 1]: :math:`(M - \min M) / (\max M - \min M)`, float64.

    :func:`xai_helpers.maps.normalize_per_image` on a batch of one: a map whose range is at most
    ``eps`` (nothing to explain, e.g. a CAM that ReLU zeroed) becomes all zeros, never NaN;
    NaN pixels stay NaN.
    """
    a = torch.from_numpy(np.array(_as_numpy(heatmap), dtype=np.float64))
    return normalize_per_image(a[None], eps=eps)[0].numpy()


def use_course_style() -> None:
    """Matplotlib settings for figures that are read on a projector and on GitHub.

    Inline figures at 110 dpi, text of at least 10 pt, ticks of 10 pt, titles of 11 pt, and
    ``bbox_inches="tight"`` so nothing is cut. Called once at the top of every notebook.
    """
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "font.size": 11,
            "axes.titlesize": 11,
            "axes.labelsize": 11,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "legend.fontsize": 10,
            "figure.titlesize": 12,
        }
    )


def color_limits(
    heatmap: ArrayLike,
    scale: Scale = "values",
    clip: float = 99.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[np.ndarray, float, float, str]:
    r"""The map as it will be drawn, its colour limits and the colorbar label, for ``scale``.

    Returns ``(map, vmin, vmax, label)``: for ``"minmax"`` the map is normalised to [0, 1];
    for ``"signed"`` the limits are :math:`\pm` the ``clip``-th percentile of :math:`|M|`
    (``clip=100``: its maximum); for ``"values"`` the map's own range unless ``vmin``/``vmax``
    are given.
    """
    h = _as_numpy(heatmap).astype(np.float64)
    if scale == "values":
        lo = float(np.nanmin(h)) if vmin is None else vmin
        hi = float(np.nanmax(h)) if vmax is None else vmax
        return h, lo, hi if hi > lo else lo + 1.0, "value"
    if scale == "minmax":
        lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
        return normalize_map(h), 0.0, 1.0, f"min-max normalised (raw {lo:.3g} to {hi:.3g})"
    if scale == "signed":
        if not 0 < clip <= 100:
            raise ValueError(f"clip is a percentile in (0, 100], got {clip}")
        finite = np.abs(h[np.isfinite(h)])
        bound = float(np.percentile(finite, clip)) if finite.size else 0.0
        bound = bound if bound > 0 else (float(finite.max()) if finite.size else 0.0) or 1.0
        where = "" if clip == 100 else f", clipped at the {clip:g}th pct of |value|"
        return h, -bound, bound, f"value{where}"
    raise ValueError(f"scale must be 'values', 'minmax' or 'signed', not {scale!r}")


def overlay(
    image: Image.Image | ArrayLike,
    heatmap: ArrayLike,
    cmap: str = "jet",
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heatmap onto an RGB image: ``(1 - alpha) * image + alpha * color``.

    The heatmap is upsampled to the image size if needed; the colours span ``[vmin, vmax]``
    (default: the map's own range; values outside are clipped to the end colours). Returns an
    (H, W, 3) float array in [0, 1]. For signed maps use :func:`signed_overlay`.
    """
    img = to_numpy_image(image)
    h = _fit(heatmap, img.shape[:2])
    lo = float(h.min()) if vmin is None else vmin
    hi = float(h.max()) if vmax is None else vmax
    colored = colormaps[cmap](Normalize(vmin=lo, vmax=hi, clip=True)(h))[..., :3]
    return np.clip((1.0 - alpha) * img + alpha * colored, 0.0, 1.0)


def grey_image(image: Image.Image | ArrayLike, low: float = 0.2, high: float = 0.8) -> np.ndarray:
    """The image's luma (ITU-R BT.601), squeezed into ``[low, high]``, as an RGB array.

    Squeezing keeps both ends of a diverging colour map visible on top of it.
    """
    img = to_numpy_image(image)
    luma = img @ np.array([0.299, 0.587, 0.114], dtype=img.dtype)
    return np.repeat((low + (high - low) * luma)[..., None], 3, axis=-1)


def signed_overlay(
    image: Image.Image | ArrayLike,
    heatmap: ArrayLike,
    bound: float,
    cmap: str = "bwr",
) -> np.ndarray:
    r"""A signed map over a grey copy of the image, opaque where it is large.

    Each pixel shows :math:`(1 - a)\,\text{grey} + a\,\text{cmap}(M)` with opacity
    :math:`a = \min(1, |M| / \text{bound})`: zero relevance leaves the photo visible, relevance
    at or beyond ``bound`` is drawn in full colour (red positive, blue negative with ``"bwr"``).
    """
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound}")
    grey = grey_image(image)
    h = _fit(heatmap, grey.shape[:2])
    colored = colormaps[cmap](Normalize(vmin=-bound, vmax=bound, clip=True)(h))[..., :3]
    a = np.clip(np.abs(np.nan_to_num(h)) / bound, 0.0, 1.0)[..., None]
    return np.clip((1.0 - a) * grey + a * colored, 0.0, 1.0)


def _fit(heatmap: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    h = _as_numpy(heatmap).astype(np.float32)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {h.shape}")
    return h if h.shape == tuple(size) else upsample_map(h, size)


def show_map(
    ax: Axes,
    heatmap: ArrayLike,
    image: Image.Image | ArrayLike | None = None,
    title: str | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    scale: Scale = "values",
    clip: float = 99.5,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    label: str | None = None,
) -> Axes:
    """Draw a heatmap (over ``image`` when given) on ``ax``, with a colorbar of its true scale.

    Parameters
    ----------
    scale:
        ``"values"`` (the numbers as computed), ``"minmax"`` (normalised to [0, 1] first) or
        ``"signed"`` (diverging colours centred at zero, clipped at the ``clip``-th percentile of
        :math:`|M|`, drawn over a grey copy of ``image``); see :func:`color_limits`.
    cmap:
        Default ``"jet"`` (the CAM papers' choice), ``"bwr"`` for ``"signed"``.
    alpha:
        Opacity of an unsigned map over ``image``.
    colorbar, label:
        Draw a colorbar (default), labelled ``label`` or by what ``scale`` shows. Without a
        colorbar, a normalised or clipped scale is named in the title instead.
    """
    h, lo, hi, what = color_limits(heatmap, scale, clip, vmin, vmax)
    cmap = cmap or ("bwr" if scale == "signed" else "jet")
    if image is not None and scale == "signed":
        ax.imshow(signed_overlay(image, h, hi, cmap=cmap))
    elif image is not None:
        ax.imshow(overlay(image, h, cmap=cmap, alpha=alpha, vmin=lo, vmax=hi))
    else:
        ax.imshow(h, cmap=cmap, vmin=lo, vmax=hi)
    clipped = scale == "signed" and bool(np.nanmax(np.abs(h)) > hi)
    if colorbar:
        mappable = plt.cm.ScalarMappable(norm=Normalize(lo, hi), cmap=cmap)
        bar = ax.figure.colorbar(
            mappable, ax=ax, fraction=0.046, pad=0.02, extend="both" if clipped else "neither"
        )
        bar.set_label(label or what, fontsize=9)
        bar.ax.tick_params(labelsize=9)
    elif scale != "values" and title is not None:
        title += " [0-1]" if scale == "minmax" else f" [±{hi:.2g}]"
    if title:
        ax.set_title(title)
    ax.set_axis_off()
    return ax


def mark_invalid(
    ax: Axes,
    valid: np.ndarray | torch.Tensor,
    color: str | tuple[float, float, float] = "0.6",
    hatch: str = "///",
    hatch_color: str | tuple[float, float, float] = "0.25",
    label: str = "no data",
) -> Patch:
    """Cover the pixels where ``valid`` is False with an opaque, hatched grey "no data" layer.

    A map carried back onto the original grid by an inverse warp
    (:func:`xai_helpers.perturb.unwarp`) has no value where the original pixel left the frame
    (``NaN``). Drawn as it is, such a pixel looks like zero relevance, which is a claim the
    method never made. Call this after :func:`show_map` on the same axes: the invalid pixels
    are painted ``color`` with ``hatch`` lines on top, so they cannot be mistaken for any value
    of a colour map.

    Parameters
    ----------
    valid:
        (H, W) bool, True where the map has a value (``Warped.valid``); the same shape as the
        image already drawn on ``ax``.
    label:
        The legend entry of the returned handle (``ax.legend(handles=[handle])``).

    Returns
    -------
    matplotlib.patches.Patch
        A legend handle that looks like the layer.
    """
    v = _as_numpy(valid)
    if v.dtype != np.bool_ or v.ndim != 2:
        raise ValueError(f"valid must be a 2-D bool mask (H, W), got {v.dtype} {v.shape}")
    for image in ax.get_images():
        if image.get_array().shape[:2] != v.shape:
            raise ValueError(
                f"valid mask {v.shape} does not match the image on the axes "
                f"{image.get_array().shape[:2]}"
            )
    layer = np.zeros(v.shape + (4,))
    layer[..., :3] = to_rgb(color)
    layer[..., 3] = ~v
    ax.imshow(layer, interpolation="nearest")
    if not v.all():
        with plt.rc_context({"hatch.color": hatch_color, "hatch.linewidth": 0.8}):
            ax.contourf((~v).astype(float), levels=[0.5, 1.5], colors="none", hatches=[hatch])
    return Patch(facecolor=color, edgecolor=hatch_color, hatch=hatch, label=label)


def draw_boxes(
    ax: Axes,
    boxes: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    color: str = "white",
    linewidth: float = 1.5,
    fontsize: float = 10,
) -> Axes:
    """Outline boxes ``(left, top, right, bottom)`` on an image drawn with ``imshow``, labelled.

    ``boxes`` is ``{label: box}`` (e.g. ``xai_helpers.boxes.sample_boxes(name, loaded)``, boxes in
    the picture the model sees) or a list of boxes (no labels). Box edges are pixel edges
    (right and bottom exclusive) and ``imshow`` centres pixel ``i`` at ``i``, so the outline
    starts half a pixel before ``left`` and ``top``: it encloses exactly the pixels
    :func:`xai_helpers.boxes.boxes_to_mask` counts as inside.
    """
    items = boxes.items() if isinstance(boxes, Mapping) else [(None, b) for b in boxes]
    for label, (left, top, right, bottom) in items:
        ax.add_patch(
            plt.Rectangle(
                (left - 0.5, top - 0.5),
                right - left,
                bottom - top,
                fill=False,
                edgecolor=color,
                linewidth=linewidth,
            )
        )
        if label is not None:
            ax.text(left + 2, top + 2, label, color=color, fontsize=fontsize, va="top")
    return ax


def plot_grid(
    images: Sequence[Image.Image | ArrayLike],
    maps: Mapping[str, Sequence[ArrayLike | None]],
    row_titles: Sequence[str] | None = None,
    scales: Mapping[str, Scale] | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    clip: float = 99.5,
    cell_size: float = 2.4,
    colorbar: bool = True,
    show_image: bool = True,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Images down the rows, methods across the columns, each cell a map with its colorbar.

    Parameters
    ----------
    images:
        One display image per row (what the network saw: use ``LoadedModel.view``).
    maps:
        ``{method name: [map for row 0, map for row 1, ...]}``; ``None`` leaves a cell empty
        with a note (e.g. CAM on a model it does not apply to).
    row_titles:
        Shown at the left of each row (e.g. the class explained).
    scales:
        ``{method name: scale}`` (see :func:`show_map`); default ``"values"``. Use
        ``"signed"`` for LRP and gradients.
    show_image:
        Add a first column with the plain image.
    labels:
        ``{method name: colorbar label}``, e.g. ``"min-max normalised by the method"`` for maps
        that arrive normalised; default what ``scale`` shows.
    """
    scales, labels = dict(scales or {}), dict(labels or {})
    for method, column in maps.items():
        if len(column) != len(images):
            raise ValueError(f"method {method!r} has {len(column)} maps for {len(images)} images")
    ncols = len(maps) + int(show_image)
    nrows = len(images)
    width = cell_size * (1.25 if colorbar else 1.0)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, cell_size * nrows),
        squeeze=False,
        layout="constrained",
    )
    for r, image in enumerate(images):
        c0 = 0
        if show_image:
            axes[r, 0].imshow(to_numpy_image(image))
            axes[r, 0].set_axis_off()
            if r == 0:
                axes[r, 0].set_title("image")
            c0 = 1
        for c, (method, column) in enumerate(maps.items(), start=c0):
            ax = axes[r, c]
            if column[r] is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                if r == 0:
                    ax.set_title(method)
                continue
            show_map(
                ax,
                column[r],
                image=image,
                cmap=cmap,
                alpha=alpha,
                scale=scales.get(method, "values"),
                clip=clip,
                colorbar=colorbar,
                title=method if r == 0 else None,
                label=labels.get(method),
            )
        if row_titles is not None:
            axes[r, 0].set_axis_on()
            axes[r, 0].set_xticks([])
            axes[r, 0].set_yticks([])
            for spine in axes[r, 0].spines.values():
                spine.set_visible(False)
            axes[r, 0].set_ylabel(row_titles[r])
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Save ``fig`` for slides; the format follows the suffix: ``.png``, ``.pdf`` or ``.svg``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"unsupported figure format {path.suffix!r}; use .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
