r"""Perturbations of the input image, and how to tell whether an explanation survived them.

Four families, each a small function with its strength as a parameter:

* **affine** -- rotation, scaling, translation and their combination (:func:`affine`), with the
  exact inverse (:func:`unwarp`) that carries a heatmap of the transformed image back onto the
  original's pixel grid; pixels that have no counterpart are marked *invalid* (``NaN`` in a map,
  ``False`` in the returned mask), never silently counted as zero;
* **colour** -- the RGB -> BGR channel swap, the classic OpenCV trap (:func:`swap_rgb_bgr`), and a
  grey-scale version (:func:`grayscale`);
* **text** -- a word drawn on the image (:func:`draw_text`), e.g. the name of a different ImageNet
  class: the "typographic attack" of Goh et al., "Multimodal Neurons in Artificial Neural
  Networks", Distill 2021;
* **masking** -- occluding a box or the top-k % most relevant pixels of an explanation
  (:func:`box_mask`, :func:`top_k_mask`, :func:`occlude`), against the same amount masked at
  random (:func:`random_mask`), and the resulting probability drop (:func:`masking_curve`).
  What an occluded pixel becomes is named with the course's one baseline vocabulary
  (``"black"``, ``"dataset_mean"``, ``"image_mean"``, ``"blur"``; :mod:`xai_helpers.baselines`).

Everything works on **the picture the network sees**: the (S, S, 3) float array in [0, 1] that
:meth:`LoadedModel.view <xai_helpers.models.LoadedModel.view>` returns (already resized and
centre-cropped). Perturbing there, not on the full photo, keeps a heatmap and its perturbed twin on
the same pixel grid. :func:`to_input` turns such an array into the normalised network input
*without* resizing it again (``LoadedModel.preprocess`` would resize and crop a second time).

The agreement of two maps is measured on their common valid pixels only (:func:`compare_maps`):
Spearman's rank correlation (:func:`rank_correlation`) and the intersection over union of their
top-20 % regions (:func:`top_fraction_iou`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgb
from PIL import Image, ImageDraw, ImageFont
from scipy import stats

from .baselines import BaselineName, baseline_picture
from .boxes import box_mask
from .errors import PerturbationError
from .images import to_rgb_array
from .maps import Ties, rank_pixels

if TYPE_CHECKING:
    from .models import LoadedModel

__all__ = [
    "Fill",
    "MapAgreement",
    "MaskingCurve",
    "PerturbationError",
    "TextResult",
    "Warped",
    "affine",
    "affine_matrix",
    "box_mask",
    "class_probability",
    "compare_maps",
    "draw_text",
    "grayscale",
    "masking_curve",
    "occlude",
    "random_mask",
    "rank_correlation",
    "swap_rgb_bgr",
    "to_input",
    "top_fraction_iou",
    "top_k_mask",
    "unwarp",
    "warp",
]

#: How occluded pixels are filled: a baseline name (:mod:`xai_helpers.baselines`: ``"black"``,
#: ``"dataset_mean"``, ``"image_mean"``, ``"blur"``), a grey level in [0, 1], or an RGB triple.
Fill = BaselineName | float | tuple[float, float, float]


def _as_array(x: np.ndarray | torch.Tensor | Image.Image) -> np.ndarray:
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_image(image: np.ndarray | torch.Tensor | Image.Image) -> np.ndarray:
    """An (H, W, 3) float array in [0, 1] (:func:`xai_helpers.images.to_rgb_array`)."""
    return to_rgb_array(image, error=PerturbationError)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise PerturbationError(f"fraction must lie in [0, 1], got {fraction}")


# --------------------------------------------------------------------------------------------
# bridge to the network
# --------------------------------------------------------------------------------------------


def to_input(loaded: LoadedModel, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    r"""Normalise view-space pictures into a network batch, without resizing them again.

    :math:`x = (\text{pixel} - \mu) / \sigma` per channel. ``images`` is one (S, S, 3) array in
    [0, 1] (as returned by ``loaded.view`` and by every perturbation here), or a list of them.
    ``to_input(lm, lm.view(img))`` equals ``lm.preprocess(img)`` up to float rounding.
    """
    stack = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    batch = torch.from_numpy(np.stack([_as_image(a) for a in stack]).astype(np.float32))
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch.permute(0, 3, 1, 2) - mean) / std).contiguous().to(loaded.device)


@torch.no_grad()
def class_probability(
    loaded: LoadedModel, images: np.ndarray | Sequence[np.ndarray], target: int | str
) -> np.ndarray:
    """Softmax probability of class ``target`` for each view-space picture: shape (N,)."""
    index = loaded.class_index(target)
    probs = torch.softmax(loaded.model(to_input(loaded, images)), dim=1)
    return probs[:, index].double().cpu().numpy()


# --------------------------------------------------------------------------------------------
# affine transforms
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Warped:
    """The result of :func:`warp`, :func:`affine` or :func:`unwarp`.

    Attributes
    ----------
    array:
        The warped array, same shape as the input. Where ``valid`` is False it holds the
        ``fill`` value (images) or ``NaN`` (maps carried back by :func:`unwarp`).
    valid:
        (H, W) bool: True where the output pixel was sampled from inside the input (and, when the
        input had ``NaN`` pixels, from valid ones only).
    matrix:
        (3, 3) forward matrix in pixel coordinates: output point ``p`` shows input point
        ``matrix^-1 @ p`` (homogeneous, ``(x, y, 1)``, pixel centres at ``i + 0.5``).
    """

    array: np.ndarray
    valid: np.ndarray
    matrix: np.ndarray


def affine_matrix(
    size: tuple[int, int],
    angle: float = 0.0,
    scale: float = 1.0,
    translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    r"""The 3x3 pixel-coordinate matrix of a rotation and scaling about the centre, then a shift.

    .. math::
        M = T(c + t)\, R(\theta)\, S(s)\, T(-c),\qquad
        R(\theta) S(s) = s \begin{pmatrix}\cos\theta & \sin\theta\\ -\sin\theta & \cos\theta
        \end{pmatrix}

    with :math:`c = (W/2, H/2)` the image centre, :math:`t` the translation in pixels
    (``(dx, dy)``: right, down) and :math:`\theta` in degrees, counter-clockwise *on screen*
    (the y axis points down, hence the signs). A point ``p`` of the original lands at ``M p``.

    Parameters
    ----------
    size:
        ``(H, W)`` of the image.
    angle:
        Rotation in degrees, counter-clockwise as displayed.
    scale:
        Zoom factor, > 0 (``2`` magnifies, ``0.5`` shrinks).
    translate:
        Shift ``(dx, dy)`` in pixels, applied after rotation and scaling.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise PerturbationError(f"scale must be a positive number, got {scale}")
    h, w = size
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    dx, dy = translate

    def shift(tx: float, ty: float) -> np.ndarray:
        return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])

    linear = np.array(
        [[scale * cos, scale * sin, 0.0], [-scale * sin, scale * cos, 0.0], [0, 0, 1]]
    )
    return shift(cx + dx, cy + dy) @ linear @ shift(-cx, -cy)


def warp(
    array: np.ndarray | torch.Tensor,
    matrix: np.ndarray,
    fill: float | Sequence[float] = 0.0,
    mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
) -> Warped:
    r"""Resample an image (H, W, C) or a map (H, W) under the affine ``matrix``.

    :math:`\text{out}(p) = \text{in}(M^{-1} p)`, sampled with ``grid_sample`` at the pixel
    centres (``align_corners=False``), in float64. An output pixel is *valid* when
    :math:`M^{-1} p` lies inside the input's extent :math:`[0, W] \times [0, H]` and, for inputs
    containing ``NaN``, when every input pixel the interpolation touches is finite. Invalid
    pixels get ``fill`` (a number, an RGB triple, or ``float("nan")``).
    """
    a = _as_array(array).astype(np.float64)
    if a.ndim not in (2, 3):
        raise PerturbationError(f"expected a map (H, W) or an image (H, W, C), got shape {a.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.allclose(m[2], [0.0, 0.0, 1.0]):
        raise PerturbationError("matrix must be a 3x3 affine matrix with last row (0, 0, 1)")
    h, w = a.shape[:2]
    channels = a[..., None] if a.ndim == 2 else a
    finite = np.isfinite(channels).all(axis=-1)

    # where each output pixel centre comes from, in input pixel coordinates
    inverse = np.linalg.inv(m)
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    eps = 1e-9  # a pixel centre mapped exactly onto the border still counts as inside
    inside = (src_x >= -eps) & (src_x <= w + eps) & (src_y >= -eps) & (src_y <= h + eps)
    grid = torch.from_numpy(np.stack([2.0 * src_x / w - 1.0, 2.0 * src_y / h - 1.0], axis=-1))

    def sample(values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))[None]
        # "border": points between the last pixel centre and the edge are inside the image,
        # they must not be darkened by an imaginary zero pixel beyond it
        out = F.grid_sample(t, grid[None], mode=mode, padding_mode="border", align_corners=False)
        return out[0].numpy().transpose(1, 2, 0)

    warped = sample(np.where(finite[..., None], channels, 0.0))
    valid = inside
    if not finite.all():
        reach = sample(finite[..., None].astype(np.float64))[..., 0]
        valid = valid & (reach >= 1.0 - 1e-6)
    fill_values = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels.shape[-1],))
    warped = np.where(valid[..., None], warped, fill_values)
    if a.ndim == 2:
        warped = warped[..., 0]
    source_dtype = _as_array(array).dtype
    out_dtype = source_dtype if np.issubdtype(source_dtype, np.floating) else np.float64
    return Warped(array=warped.astype(out_dtype), valid=valid, matrix=m)


def affine(
    image: np.ndarray | Image.Image,
    angle: float = 0.0,
    scale: float = 1.0,
    translate: tuple[float, float] = (0.0, 0.0),
    fill: float | Sequence[float] = 0.0,
) -> Warped:
    """Rotate, scale and shift a picture about its centre (see :func:`affine_matrix`).

    Returns a :class:`Warped` whose ``array`` is the transformed picture (the area that came from
    outside the original filled with ``fill``, black by default), ``valid`` the mask of pixels
    that show the original, and ``matrix`` the forward matrix to give to :func:`unwarp`.

    Examples
    --------
    >>> w = affine(picture, angle=30, scale=1.2)            # doctest: +SKIP
    >>> back = unwarp(heatmap_of(w.array), w.matrix, w.valid)  # doctest: +SKIP
    """
    img = _as_image(image)
    m = affine_matrix(img.shape[:2], angle=angle, scale=scale, translate=translate)
    return warp(img, m, fill=fill)


def unwarp(
    heatmap: np.ndarray | torch.Tensor,
    matrix: np.ndarray,
    valid: np.ndarray | None = None,
    mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
) -> Warped:
    r"""Carry a map of the *transformed* image back onto the original's pixel grid.

    :math:`\text{back}(p) = \text{map}(M p)`: the exact inverse of :func:`warp` with ``matrix``
    (up to interpolation). ``valid`` is the transformed image's valid mask (``Warped.valid``):
    the map is meaningless over the filled border, so those pixels are set to ``NaN`` first.
    The result is ``NaN`` wherever the original pixel has no valid counterpart.
    """
    h = _as_array(heatmap).astype(np.float64)
    if h.ndim != 2:
        raise PerturbationError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != h.shape:
            raise PerturbationError(f"valid mask {valid.shape} does not match map {h.shape}")
        h = np.where(valid, h, np.nan)
    m = np.asarray(matrix, dtype=np.float64)
    back = warp(h, np.linalg.inv(m), fill=np.nan, mode=mode)
    return Warped(array=back.array, valid=back.valid, matrix=m)


# --------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------


def swap_rgb_bgr(image: np.ndarray | Image.Image) -> np.ndarray:
    """Reverse the channel order, RGB -> BGR: what a network gets from ``cv2.imread`` unconverted.

    Its own inverse: ``swap_rgb_bgr(swap_rgb_bgr(x)) == x`` exactly.
    """
    return np.ascontiguousarray(_as_image(image)[..., ::-1])


def grayscale(
    image: np.ndarray | Image.Image, weights: tuple[float, float, float] = (0.299, 0.587, 0.114)
) -> np.ndarray:
    r"""Luma :math:`Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601, as Pillow's ``"L"``),
    copied into all three channels so the network still gets an (H, W, 3) picture."""
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6) or min(weights) < 0:
        raise PerturbationError(f"grey weights must be non-negative and sum to 1, got {weights}")
    img = _as_image(image)
    luma = img @ np.asarray(weights, dtype=img.dtype)
    return np.repeat(np.clip(luma, 0.0, 1.0)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextResult:
    """The picture with the text on it, and ``box = (left, top, right, bottom)`` (right and
    bottom exclusive, clipped to the image): the only pixels :func:`draw_text` changed."""

    image: np.ndarray
    box: tuple[int, int, int, int]


def _font_path(font: str) -> Path:
    path = Path(font)
    if path.is_file():
        return path
    shipped = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    if (shipped / font).is_file():
        return shipped / font
    names = sorted(p.name for p in shipped.glob("DejaVu*.ttf"))
    raise PerturbationError(
        f"font {font!r} not found; pass a .ttf path or one of matplotlib's fonts: "
        + ", ".join(names)
    )


def draw_text(
    image: np.ndarray | Image.Image,
    text: str,
    size: int = 32,
    position: tuple[float, float] | None = None,
    color: str | tuple[float, float, float] = "white",
    font: str = "DejaVuSans-Bold.ttf",
    anchor: str = "mm",
    background: str | tuple[float, float, float] | None = None,
    padding: int = 4,
) -> TextResult:
    """Write ``text`` on the picture, anti-aliased, with a font that ships with matplotlib.

    Parameters
    ----------
    text:
        The word, e.g. the name of another ImageNet class ("typographic" distraction).
    size:
        Font size in pixels.
    position:
        ``(x, y)`` in pixels of the ``anchor`` point; default the image centre.
    color:
        Text colour: a matplotlib colour name or an RGB triple in [0, 1].
    font:
        A ``.ttf`` path, or a file name in matplotlib's font folder (``DejaVuSans.ttf``,
        ``DejaVuSerif-Bold.ttf``, ...).
    anchor:
        Pillow text anchor: ``"mm"`` centres the text on ``position``, ``"lt"`` puts its
        left-top corner there.
    background:
        Colour of a label box behind the text (``padding`` pixels around it), or ``None``.

    The text is rendered into an alpha mask and composited in float, so pixels outside the
    returned ``box`` keep their exact values.
    """
    img = _as_image(image)
    if not text:
        raise PerturbationError("text is empty; pass the word to draw")
    if size < 1:
        raise PerturbationError(f"font size must be a positive number of pixels, got {size}")
    h, w = img.shape[:2]
    position = (w / 2.0, h / 2.0) if position is None else position
    typeface = ImageFont.truetype(str(_font_path(font)), size=int(size))

    glyphs = Image.new("L", (w, h), 0)
    ImageDraw.Draw(glyphs).text(position, text, fill=255, font=typeface, anchor=anchor)
    alpha = np.asarray(glyphs, dtype=np.float32) / 255.0
    out = img.copy()
    # the ink's bounding box; Pillow returns None when the text falls entirely off the image
    box = glyphs.getbbox() or (0, 0, 0, 0)
    if background is not None:
        left, top, right, bottom = ImageDraw.Draw(glyphs).textbbox(
            position, text, font=typeface, anchor=anchor
        )
        label = (
            max(int(left) - padding, 0),
            max(int(top) - padding, 0),
            min(int(right) + padding, w),
            min(int(bottom) + padding, h),
        )
        if label[0] < label[2] and label[1] < label[3]:
            out[label[1] : label[3], label[0] : label[2]] = np.asarray(to_rgb(background))
            box = label if box == (0, 0, 0, 0) else _union(box, label)
    ink = np.asarray(to_rgb(color), dtype=out.dtype)
    # alpha is exactly 0 outside the glyphs: those pixels come out bit-identical
    out = out * (1.0 - alpha[..., None]) + ink * alpha[..., None]
    return TextResult(
        image=np.clip(out, 0.0, 1.0).astype(img.dtype), box=tuple(int(v) for v in box)
    )


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


# --------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------


def _count(fraction: float, n: int) -> int:
    # round half up, so that 20 % of 5 pixels is 1, and 50 % of 5 is 3 (not banker's 2)
    return min(n, int(math.floor(fraction * n + 0.5)))


def top_k_mask(
    heatmap: np.ndarray | torch.Tensor,
    fraction: float,
    valid: np.ndarray | None = None,
    ties: Ties = "raster",
    seed: int = 0,
) -> np.ndarray:
    r"""The ``fraction`` most relevant pixels of ``heatmap`` as an (H, W) bool mask.

    Exactly :math:`k = \lfloor f \cdot n + \tfrac12 \rfloor` pixels are selected, :math:`n` the
    number of (valid) pixels, in the order of :func:`xai_helpers.maps.rank_pixels`. Ties are
    broken deterministically in raster order by default (row by row, left to right: a stable
    sort of the values, largest first); ``ties="random"`` breaks them at random (``seed``), as
    the deletion curves of :mod:`xai_helpers.metrics` do. With ``valid``, only valid pixels
    compete and ``n`` counts only them; ``NaN`` pixels are never selected.
    """
    _check_fraction(fraction)
    h = _as_array(heatmap).astype(np.float64)
    if h.ndim != 2:
        raise PerturbationError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    ok = np.isfinite(h) if valid is None else np.asarray(valid, dtype=bool) & np.isfinite(h)
    if valid is None and not ok.all():
        raise PerturbationError("heatmap contains NaN; pass valid= to rank the valid pixels only")
    k = _count(fraction, int(ok.sum()))
    generator = torch.Generator().manual_seed(seed) if ties == "random" else None
    ranks = rank_pixels(
        torch.from_numpy(h)[None], ties, generator, valid=torch.from_numpy(ok)[None]
    )[0]
    return (ranks < k).numpy().reshape(h.shape)


def random_mask(
    shape: tuple[int, int], fraction: float, seed: int = 0, block: int = 1
) -> np.ndarray:
    """Exactly the same number of pixels as :func:`top_k_mask`, chosen at random (seeded).

    ``block > 1`` draws whole ``block x block`` squares (the last one partly, to hit the count
    exactly), so that random occlusion has a blob structure comparable to a heatmap's top
    region instead of salt-and-pepper noise, which networks shrug off.
    """
    _check_fraction(fraction)
    if block < 1:
        raise PerturbationError(f"block must be a positive number of pixels, got {block}")
    h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.random((math.ceil(h / block), math.ceil(w / block)))
    scores = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:h, :w]
    return top_k_mask(scores, fraction)


def occlude(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    fill: Fill = "blur",
    blur_sigma: float = 8.0,
    dataset_mean: Sequence[float] | None = None,
) -> np.ndarray:
    """Replace the pixels under ``mask`` by ``fill``; the others keep their exact values.

    ``fill`` is a baseline name (:mod:`xai_helpers.baselines`): ``"black"`` (far from the data,
    the network may react to the black shape itself), ``"dataset_mean"`` (the training set's
    mean colour: pass ``dataset_mean=loaded.mean``), ``"image_mean"`` (the image's own mean
    colour), ``"blur"`` (a Gaussian blur of ``blur_sigma`` pixels that removes detail but keeps
    colour and low frequencies); or a grey level, or an RGB triple, in [0, 1].
    """
    img = _as_image(image)
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape[:2]:
        raise PerturbationError(f"mask {m.shape} does not match image {img.shape[:2]}")
    if isinstance(fill, str):
        filler = baseline_picture(
            img, fill, dataset_mean, blur_sigma, error=PerturbationError, what="fill"
        )
    else:
        value = np.asarray(fill, dtype=img.dtype)
        if value.size not in (1, 3) or value.min() < 0 or value.max() > 1:
            raise PerturbationError(f"fill {fill!r} must be a grey level or RGB triple in [0, 1]")
        filler = np.broadcast_to(value.reshape(-1)[None, None, :], img.shape)
    return np.where(m[..., None], filler, img).astype(img.dtype)


@dataclass(frozen=True)
class MaskingCurve:
    """Class probability after masking growing fractions of the image.

    ``top_k`` (F,) masks the most relevant pixels of the explanation, ``random`` (seeds, F) the
    same number at random; ``base`` is the unmasked probability.
    """

    fractions: np.ndarray
    base: float
    top_k: np.ndarray
    random: np.ndarray
    target: int

    @property
    def drop_top_k(self) -> np.ndarray:
        """Probability drop ``base - p`` when the top-k pixels are masked, (F,)."""
        return self.base - self.top_k

    @property
    def drop_random(self) -> np.ndarray:
        """Mean probability drop over the random masks, (F,)."""
        return self.base - self.random.mean(axis=0)


def masking_curve(
    loaded: LoadedModel,
    image: np.ndarray,
    heatmap: np.ndarray | torch.Tensor,
    target: int | str,
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
    fill: Fill = "blur",
    seeds: Sequence[int] = (0, 1, 2),
    block: int = 16,
    ties: Ties = "raster",
) -> MaskingCurve:
    """Mask the top-k % of ``heatmap`` and, for comparison, k % at random; re-classify.

    A faithful explanation points at pixels the model needs: masking them should lower the
    class probability more than masking the same amount at random (the idea behind the
    deletion metric of Petsiuk et al., "RISE", BMVC 2018). One batched forward pass. ``fill``
    as in :func:`occlude` (``"dataset_mean"`` is the loaded model's mean colour); ``ties`` as
    in :func:`top_k_mask` (raster order by default, as always; :func:`xai_helpers.metrics.
    deletion` breaks ties at random).
    """
    img = _as_image(image)
    fr = np.asarray(fractions, dtype=np.float64)
    shape = img.shape[:2]

    def masked(mask: np.ndarray) -> np.ndarray:
        return occlude(img, mask, fill, dataset_mean=loaded.mean)

    pictures = [img]
    pictures += [masked(top_k_mask(heatmap, f, ties=ties)) for f in fr]
    pictures += [masked(random_mask(shape, f, seed=s, block=block)) for s in seeds for f in fr]
    probs = class_probability(loaded, pictures, target)
    return MaskingCurve(
        fractions=fr,
        base=float(probs[0]),
        top_k=probs[1 : 1 + fr.size],
        random=probs[1 + fr.size :].reshape(len(seeds), fr.size),
        target=loaded.class_index(target),
    )


# --------------------------------------------------------------------------------------------
# agreement of two maps
# --------------------------------------------------------------------------------------------


def _common(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = _as_array(a).astype(np.float64), _as_array(b).astype(np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise PerturbationError(f"maps must be 2-D and of the same shape, got {x.shape}, {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    return x, y, ok


def rank_correlation(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, valid: np.ndarray | None = None
) -> float:
    r"""Spearman's :math:`\rho` of two maps over their common valid (finite) pixels.

    :math:`\rho = \operatorname{corr}(\operatorname{rank} a, \operatorname{rank} b)`, the Pearson
    correlation of the ranks, ties given their average rank. Invariant to any monotone rescaling
    of either map, so CAM normalisation and LRP's units do not matter. ``NaN`` if a map is
    constant on the common pixels or fewer than two remain.
    """
    x, y, ok = _common(a, b, valid)
    if ok.sum() < 2:
        return float("nan")
    rx, ry = stats.rankdata(x[ok]), stats.rankdata(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


def top_fraction_iou(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    fraction: float = 0.2,
    valid: np.ndarray | None = None,
) -> float:
    r"""Intersection over union of the top-``fraction`` regions of two maps.

    :math:`|A \cap B| / |A \cup B|`, with :math:`A, B` the :func:`top_k_mask` of each map over
    their common valid pixels (so both regions have the same size).
    """
    x, y, ok = _common(a, b, valid)
    top_a, top_b = top_k_mask(x, fraction, valid=ok), top_k_mask(y, fraction, valid=ok)
    union = np.logical_or(top_a, top_b).sum()
    return float(np.logical_and(top_a, top_b).sum() / union) if union else float("nan")


@dataclass(frozen=True)
class MapAgreement:
    """How well a map of the perturbed image (aligned back) agrees with the original's."""

    spearman: float
    iou: float
    valid_fraction: float


def compare_maps(
    reference: np.ndarray | torch.Tensor,
    aligned: np.ndarray | torch.Tensor,
    valid: np.ndarray | None = None,
    fraction: float = 0.2,
) -> MapAgreement:
    """Spearman's rho and top-``fraction`` IoU on the common valid pixels, and how many they are.

    ``aligned`` is the perturbed image's map already on the original's grid (``unwarp(...).array``
    for affine transforms, the map itself otherwise); ``NaN`` pixels are left out.
    """
    x, y, ok = _common(reference, aligned, valid)
    return MapAgreement(
        spearman=rank_correlation(x, y, ok),
        iou=top_fraction_iou(x, y, fraction, ok),
        valid_fraction=float(ok.mean()),
    )
