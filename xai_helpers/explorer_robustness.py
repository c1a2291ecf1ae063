"""The robustness explorer without its widgets: perturb a picture, classify, explain, compare.

:func:`explore` is the computation (swap the channels, mask the most relevant pixels, write a
word, rotate and zoom; then classify, explain and carry the map back onto the original grid);
:func:`plot_exploration` draws one result; :class:`RobustnessState` keeps the images and caches
maps so that the widget (:class:`xai_helpers.widgets.RobustnessExplorer`) never computes the
same thing twice and can precompute what the first clicks will need.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from . import perturb as P
from .explain import explain
from .explorer_state import format_probability
from .images import MAX_BYTES, MAX_PIXELS, SAMPLE_NAMES, decode_image, sample_path
from .models import LoadedModel, TopK
from .progress import ProgressFn
from .registry import METHODS, Method
from .viz import show_map

__all__ = [
    "Channels",
    "Exploration",
    "Perturbation",
    "RobustnessState",
    "draw_exploration",
    "explore",
    "plot_exploration",
]

Channels = Literal["RGB", "BGR"]
ExplainFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Exploration:
    """One perturbed picture, its prediction and explanation, next to the original's.

    Attributes
    ----------
    original, perturbed:
        (S, S, 3) pictures in [0, 1], before and after the perturbation.
    valid:
        (S, S) bool, the original pixels that are still visible after the affine transform.
    reference:
        The original picture's map, (S, S).
    heatmap:
        The perturbed picture's map, in the perturbed frame (S, S).
    aligned:
        ``heatmap`` carried back onto the original grid, ``NaN`` where invalid.
    before, after:
        Top-5 predictions.
    target:
        The explained class, the original's top-1 unless given.
    p_before, p_after:
        Probability of ``target``.
    agreement:
        Spearman's rho and top-20 % IoU of ``reference`` and ``aligned`` on the valid pixels.
    method:
        The explanation method.
    channels:
        ``"BGR"`` when the channels were swapped (what ``cv2.imread`` gives unconverted).
    """

    original: np.ndarray
    perturbed: np.ndarray
    valid: np.ndarray
    reference: np.ndarray
    heatmap: np.ndarray
    aligned: np.ndarray
    before: TopK
    after: TopK
    target: int
    p_before: float
    p_after: float
    agreement: P.MapAgreement
    method: str
    channels: Channels = "RGB"


def explore(
    loaded: LoadedModel,
    picture: np.ndarray,
    method: str = "grad_cam",
    angle: float = 0.0,
    scale: float = 1.0,
    text: str = "",
    text_size: int = 32,
    mask_fraction: float = 0.0,
    target: int | str | None = None,
    fill: P.Fill = "blur",
    reference: np.ndarray | None = None,
    explain_fn: ExplainFn | None = None,
    channels: Channels = "RGB",
    progress: ProgressFn | None = None,
) -> Exploration:
    """Perturb ``picture`` (channels, mask, text, then rotation and scaling), classify, explain.

    Parameters
    ----------
    loaded:
        The model.
    picture:
        The picture the network sees, ``loaded.view(image)``.
    method:
        A method name understood by ``explain_fn`` (``"grad_cam"``, ``"lrp"``, ...).
    angle, scale:
        Rotation (degrees, counter-clockwise) and zoom about the centre; the uncovered corners
        are black and left out of the comparison.
    text, text_size:
        A word drawn at the centre in white on a black label (nothing when empty).
    mask_fraction:
        Fraction of the pixels, the most relevant ones of ``reference``, occluded with ``fill``.
    target:
        The class explained before and after; default the original's top-1.
    reference:
        The original's map, when already computed (the explorer caches it per method).
    explain_fn:
        ``(loaded, x, method, target, **kwargs) -> (N, H, W)``; default
        :func:`xai_helpers.explain.explain`.
    channels:
        ``"BGR"`` swaps red and blue first (:func:`xai_helpers.perturb.swap_rgb_bgr`).
    progress:
        ``progress(done, total)``, passed to methods whose record reports progress (Score-CAM);
        it may raise to cancel.
    """
    if channels not in ("RGB", "BGR"):
        raise ValueError(f"channels must be 'RGB' or 'BGR', not {channels!r}")
    explain_fn = explain_fn or _default_explain
    record = METHODS.get(method)
    kwargs: dict[str, Any] = {}
    if record is not None and record.reports_progress:
        kwargs["progress"] = progress if progress is not None else False
    x0 = P.to_input(loaded, picture)
    probs_before = _probabilities(loaded, x0)
    before = _top5(loaded, probs_before)
    target_index = before.top1[0] if target is None else loaded.class_index(target)
    if reference is None:
        reference = _as_map(explain_fn(loaded, x0, method, target_index, **kwargs))

    perturbed = P.swap_rgb_bgr(picture) if channels == "BGR" else picture
    if mask_fraction > 0:
        perturbed = P.occlude(perturbed, P.top_k_mask(reference, mask_fraction), fill=fill)
    if text:
        perturbed = P.draw_text(perturbed, text, size=text_size, background="black").image
    warped = P.affine(perturbed, angle=angle, scale=scale)

    x = P.to_input(loaded, warped.array)
    heatmap = _as_map(explain_fn(loaded, x, method, target_index, **kwargs))
    aligned = P.unwarp(heatmap, warped.matrix, valid=warped.valid)
    # one forward pass per picture (the probabilities of a batch of both, as computed before,
    # differ in the 7th digit: float32 convolutions depend on the batch size)
    probs_after = _probabilities(loaded, x)
    return Exploration(
        original=picture,
        perturbed=warped.array,
        valid=aligned.valid,
        reference=reference,
        heatmap=heatmap,
        aligned=aligned.array,
        before=before,
        after=_top5(loaded, probs_after),
        target=target_index,
        p_before=float(probs_before[target_index]),
        p_after=float(probs_after[target_index]),
        agreement=P.compare_maps(reference, aligned.array, aligned.valid),
        method=method,
        channels=channels,
    )


@torch.no_grad()
def _probabilities(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    # float32 softmax, as LoadedModel.predict and perturb.class_probability compute it
    return torch.softmax(loaded.model(x), dim=1)[0].double().cpu()


def _top5(loaded: LoadedModel, probs: torch.Tensor) -> TopK:
    values, indices = probs.topk(5)
    names = loaded.class_names
    return TopK(
        tuple((int(i), names[int(i)], float(p)) for p, i in zip(values, indices, strict=True))
    )


def _as_map(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().cpu().double().numpy()[0]


def _default_explain(
    loaded: LoadedModel, x: torch.Tensor, method: str, target: int | str | None, **kwargs: Any
) -> torch.Tensor:
    return explain(loaded, x, method, target=target, **kwargs)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------


def draw_exploration(
    fig: Figure, result: Exploration, class_names: Sequence[str] | None = None, fontsize: float = 12
) -> Figure:
    """Draw ``result`` on ``fig`` in two rows of three panels.

    Top: the original, its map, and the numbers (class probability before and after,
    Spearman's rho and top-20 % IoU of the maps, share of pixels compared). Bottom: the
    perturbed picture, its map, and that map carried back onto the original's grid (grey where
    the perturbed picture does not cover the original). Signed maps (LRP) use the ``"signed"``
    scale, unsigned ones the values the method returns (normalised to [0, 1] by it).
    """
    record = METHODS.get(result.method)
    label = record.label if record is not None else result.method
    signed = record is not None and record.signed
    scale = "signed" if signed else "values"
    axes = fig.subplots(2, 3)
    name = class_names[result.target] if class_names is not None else result.before.top1[1]
    for ax, picture, top, when in (
        (axes[0, 0], result.original, result.before, "original"),
        (axes[1, 0], result.perturbed, result.after, "perturbed"),
    ):
        ax.imshow(picture)
        ax.set_title(f"{when}\n{top.top1[1]} {format_probability(top.top1[2])}", fontsize=fontsize)
        ax.set_axis_off()
    what = "relevance" if signed else "map"
    for ax, heatmap, picture, title in (
        (axes[0, 1], result.reference, result.original, f"{label} {what}, original"),
        (axes[1, 1], result.heatmap, result.perturbed, f"{label} {what}, perturbed"),
        (
            axes[1, 2],
            np.where(result.valid, result.aligned, np.nan),
            result.original,
            "perturbed map, aligned back",
        ),
    ):
        show_map(ax, np.nan_to_num(heatmap), picture, None, scale=scale, colorbar=False)
        ax.set_title(title, fontsize=fontsize)
        if not result.valid.all() and ax is axes[1, 2]:
            ax.imshow(np.where(result.valid, np.nan, 0.5), cmap="gray", vmin=0, vmax=1, alpha=0.8)
    a = result.agreement
    channel = "channels swapped to BGR\n" if result.channels == "BGR" else ""
    numbers = (
        f"explained: {name} ({result.target})\n"
        f"{channel}"
        f"p before  {format_probability(result.p_before)}\n"
        f"p after   {format_probability(result.p_after)}\n\n"
        f"maps compared on {a.valid_fraction:.0%} of the pixels\n"
        f"Spearman rho    {a.spearman:.2f}\n"
        f"top-20% IoU     {a.iou:.2f}"
    )
    axes[0, 2].set_axis_off()
    axes[0, 2].text(
        0.02,
        0.95,
        numbers,
        va="top",
        ha="left",
        family="monospace",
        fontsize=fontsize,
        transform=axes[0, 2].transAxes,
    )
    note = "colours clipped at the 99.5th pct of |R|, per map" if signed else "colours: 0 to 1"
    fig.suptitle(f"{label}: before and after the perturbation ({note})", fontsize=fontsize + 1)
    return fig


def plot_exploration(result: Exploration, cell_size: float = 3.0) -> Figure:
    """:func:`draw_exploration` on a new pyplot figure (shown by ``plt.show()`` in a notebook)."""
    fig = plt.figure(figsize=(3 * cell_size, 2 * cell_size + 0.9), layout="constrained")
    return draw_exploration(fig, result, fontsize=max(10.0, 4 * cell_size))


# ----------------------------------------------------------------------------------------------
# the state
# ----------------------------------------------------------------------------------------------


class Perturbation(NamedTuple):
    """Everything one picture of the robustness explorer depends on."""

    image: str
    method: str
    channels: Channels = "RGB"
    angle: float = 0.0
    scale: float = 1.0
    text: str = ""
    text_size: int = 32
    mask_fraction: float = 0.0


class RobustnessState:
    """Images, cached maps and results of the robustness explorer.

    The original's map is cached per (image, method, class) and each result per
    :class:`Perturbation`, so returning to a setting costs nothing; :meth:`precompute` fills
    the reference maps of the quick methods ahead of the first click.

    Parameters
    ----------
    loaded:
        The model; the explorer computes on its own copy (see
        :class:`xai_helpers.explorer_state.ExplorerState`).
    picture:
        An extra picture in view space ((S, S, 3) in [0, 1]), listed first as
        ``"notebook picture"``; the sample photos and uploads follow.
    methods:
        Method names or records; default every registered method.
    target:
        The class explained on every image; default each image's top-1.
    """

    PICTURE = "notebook picture"

    def __init__(
        self,
        loaded: LoadedModel,
        picture: np.ndarray | None = None,
        methods: Sequence[str | Method] | None = None,
        target: int | str | None = None,
        explain_fn: ExplainFn | None = None,
        cache_size: int = 32,
        copy_model: bool = True,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.loaded = (
            dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)) if copy_model else loaded
        )
        self.methods = _records(methods)
        self.target = None if target is None else loaded.class_index(target)
        self.explain_fn = explain_fn
        self.cache_size = cache_size
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.lock = threading.Lock()
        self.views: dict[str, np.ndarray] = {}
        self.labels: dict[str, str] = {}
        if picture is not None:
            self.views[self.PICTURE] = P._as_image(picture)
            self.labels[self.PICTURE] = "the notebook's picture"
        self._samples = {n: f"{n}: {d}" for n, d in SAMPLE_NAMES.items()}
        self.labels.update(self._samples)
        self.references: OrderedDict[tuple[str, str, int | None], np.ndarray] = OrderedDict()
        self.results: OrderedDict[Perturbation, Exploration] = OrderedDict()
        self.computed = 0

    def view(self, image: str) -> np.ndarray:
        if image not in self.views:
            self.views[image] = self.loaded.view(sample_path(image))
        return self.views[image]

    def add_upload(self, name: str, data: bytes) -> str:
        """Decode an uploaded file (one-line ``ImageLoadError`` if it is not a usable image)."""
        picture = decode_image(data, name, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        key = f"upload: {name}"
        self.views[key] = self.loaded.view(picture)
        self.labels[key] = f"{key} ({picture.width}x{picture.height})"
        for cache in (self.references, self.results):
            for k in [k for k in cache if k[0] == key]:
                del cache[k]
        return key

    def cached(self, request: Perturbation) -> Exploration | None:
        result = self.results.get(request)
        if result is not None:
            self.results.move_to_end(request)
        return result

    def run(self, request: Perturbation, progress: ProgressFn | None = None) -> Exploration:
        """Compute (blocking) and cache the result of ``request``."""
        reference_key = (request.image, request.method, self.target)
        with self.lock:
            result = explore(
                self.loaded,
                self.view(request.image),
                request.method,
                angle=request.angle,
                scale=request.scale,
                text=request.text,
                text_size=request.text_size,
                mask_fraction=request.mask_fraction,
                target=self.target,
                reference=self.references.get(reference_key),
                explain_fn=self.explain_fn,
                channels=request.channels,
                progress=progress,
            )
        self.computed += 1
        _put(self.references, reference_key, result.reference, self.cache_size)
        _put(self.results, request, result, self.cache_size)
        return result

    def precompute(self, image: str, check: Callable[[], None] | None = None) -> list[str]:
        """Compute the original's map for every method that reports no progress (the quick
        ones, LRP included) that is not cached yet; ``check()`` between methods may raise to
        stop. Returns the methods computed."""
        done = []
        for name, record in self.methods.items():
            key = (image, name, self.target)
            if record.reports_progress or key in self.references:
                continue
            if check is not None:
                check()
            with self.lock:
                x = P.to_input(self.loaded, self.view(image))
                target = self.target if self.target is not None else self.loaded.predict(x).top1[0]
                fn = self.explain_fn or _default_explain
                _put(
                    self.references, key, _as_map(fn(self.loaded, x, name, target)), self.cache_size
                )
            done.append(name)
        return done


def _records(methods: Sequence[str | Method] | None) -> dict[str, Method]:
    names = methods if methods is not None else list(METHODS)
    out = {}
    for m in names:
        record = METHODS.get(m) if isinstance(m, str) else m
        # a name outside the registry (a test's stand-in) is shown as it is
        out[m if isinstance(m, str) else m.name] = record or Method(m, m, _unregistered, "cam")
    return out


def _unregistered(*args: Any, **kwargs: Any) -> torch.Tensor:  # pragma: no cover
    raise ValueError("this method is not in the registry; pass explain_fn")


def _put(cache: OrderedDict, key: Any, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
