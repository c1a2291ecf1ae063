"""Interactive widgets: explore an explanation live, and perturb a picture with sliders.

Two widgets, each with a plain-Python core so that it runs (and is tested) without a browser:

* :class:`Explorer` -- pick the image (a sample, or your own upload), the method, the class (the
  top-k predictions, or any of the 1000 by search), the CAM layer, the overlay opacity and the
  colour map; the prediction table and the overlay update live. Maps are cached per (image,
  method, class, layer), so opacity and colour map redraw without recomputing; Score-CAM shows a
  progress bar while it runs; bad uploads and impossible requests give a one-line message in
  the widget, never a traceback. Every method notebook ends with one, preset to its method.
* :func:`robustness_explorer` -- sliders that rotate, scale, write on and mask the picture, then
  show prediction and explanation before and after (:func:`explore`, :func:`plot_exploration`);
  used by the robustness notebook.

Without a front end (nbval, nbconvert) the widgets are built and their first state computed;
each :class:`Explorer` also carries a JPEG of its current overlay, which is what GitHub shows.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure
from PIL import Image

from . import perturb as P
from .explain import LABELS, METHODS, explain
from .hooks import feature_map_layers
from .images import MAX_BYTES, MAX_PIXELS, SAMPLE_NAMES, decode_image, sample_path
from .models import LoadedModel, TopK
from .viz import show_map

__all__ = [
    "COLORMAPS",
    "ExplainFn",
    "Exploration",
    "Explorer",
    "explore",
    "plot_exploration",
    "robustness_explorer",
]

#: ``explain_fn(loaded, x, method, target, **kwargs) -> (N, H, W)`` map at input resolution; by
#: default :func:`xai_helpers.explain.explain` (``kwargs``: ``layer``, Score-CAM's ``progress``).
ExplainFn = Callable[..., torch.Tensor]

#: Colour maps the explorer offers; ``"auto"`` is ``jet`` for the CAM family and the diverging
#: ``bwr`` (centred at zero) for LRP's signed relevance.
COLORMAPS = ("auto", "jet", "turbo", "viridis", "inferno", "gray", "bwr", "coolwarm")


def _default_explain(
    loaded: LoadedModel, x: torch.Tensor, method: str, target: int | str | None, **kwargs: Any
) -> torch.Tensor:
    return explain(loaded, x, method, target=target, **kwargs)


# --------------------------------------------------------------------------------------------
# the explanation explorer
# --------------------------------------------------------------------------------------------


class Explorer:
    """A live explorer of one model's explanations; display it as the last expression of a cell.

    Controls (all in :attr:`widget`, an ``ipywidgets.VBox``):

    ``image``
        The sample photos of ``data/``, plus every picture uploaded with ``upload``.
    ``upload``
        A file-upload button. The file is decoded with :func:`xai_helpers.images.decode_image`
        (size checked before decoding: at most ``max_bytes`` and ``max_pixels``); a bad file
        shows its one-line error in ``status`` and changes nothing else.
    ``method``
        CAM, Grad-CAM, Grad-CAM++, Score-CAM, LRP (:data:`xai_helpers.explain.METHODS`).
    ``target`` and ``search``
        The class explained: the top-``top_k`` predictions, or any of the 1000 ImageNet classes
        found by typing in ``search`` (``"281: tabby"``), which adds it to ``target``.
    ``layer``
        The CAM layer, from :func:`xai_helpers.hooks.feature_map_layers` (the deepest first);
        fixed to the model's last feature maps for CAM (its weights are the classifier's, so it
        has no other choice) and unused by LRP.
    ``opacity`` and ``colormap``
        Overlay opacity and colour map (:data:`COLORMAPS`); they only redraw.

    Outputs: ``picture`` (an ``ipywidgets.Image``, JPEG of the overlay with a colour bar),
    ``predictions`` (top-k table, the explained class in bold), ``progress`` (Score-CAM's passes,
    shown while it runs) and ``status`` (what was computed and how long it took, or what went
    wrong). Maps are kept in an LRU cache of ``cache_size`` entries keyed by (image, method,
    class, layer); :attr:`computed` counts the explanations actually run.

    Parameters
    ----------
    loaded:
        The model, from :func:`xai_helpers.models.load_model`.
    method, image, target, layer:
        Initial choices: a method name, a sample name (:data:`xai_helpers.images.SAMPLE_NAMES`),
        a class (index or name; default the top-1), a layer name (default ``loaded.cam_layer``).
    explain_fn:
        ``(loaded, x, method, target, **kwargs) -> (N, H, W)``, default
        :func:`xai_helpers.explain.explain`; tests pass a cheap stand-in.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        method: str = "grad_cam",
        image: str = "chelsea",
        target: int | str | None = None,
        layer: str | None = None,
        methods: Sequence[str] = tuple(METHODS),
        top_k: int = 5,
        explain_fn: ExplainFn | None = None,
        cache_size: int = 32,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if method not in methods:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods)}")
        if image not in SAMPLE_NAMES:
            raise ValueError(
                f"unknown sample image {image!r}; choose one of {', '.join(SAMPLE_NAMES)} "
                "(upload your own in the widget)"
            )
        self.loaded = loaded
        self.top_k = top_k
        self.explain_fn = explain_fn or _default_explain
        self.cache_size = cache_size
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.computed = 0
        self.maps: OrderedDict[tuple[str, str, int, str], np.ndarray] = OrderedDict()
        self._sources: dict[str, Path | Image.Image] = {n: sample_path(n) for n in SAMPLE_NAMES}
        self._views: dict[str, np.ndarray] = {}
        self._inputs: dict[str, torch.Tensor] = {}
        self._probs: dict[str, torch.Tensor] = {}
        self._suspended = False
        self._current: tuple[str, str, int, str] | None = None

        x0 = self._input(image)
        layers = [name for name, _ in feature_map_layers(loaded.model, x0)]
        if loaded.cam_layer in layers:
            layers.remove(loaded.cam_layer)
        layers.insert(0, loaded.cam_layer)
        if layer is not None and layer not in layers:
            raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(layers)}")
        names = loaded.class_names

        wide = widgets.Layout(width="auto")
        self.image = widgets.Dropdown(
            options=[(f"{n}: {d}", n) for n, d in SAMPLE_NAMES.items()],
            value=image,
            description="image",
            layout=widgets.Layout(width="28em"),
        )
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.method = widgets.Dropdown(
            options=[(LABELS.get(m, m), m) for m in methods],
            value=method,
            description="method",
        )
        self.target = widgets.Dropdown(description="class", layout=widgets.Layout(width="24em"))
        self.search = widgets.Combobox(
            options=[f"{i}: {n}" for i, n in enumerate(names)],
            ensure_option=True,
            placeholder=f"search all {len(names)} classes",
            description="search",
        )
        self.layer = widgets.Dropdown(
            options=layers, value=layer or loaded.cam_layer, description="layer"
        )
        self.opacity = widgets.FloatSlider(
            value=0.5, min=0.0, max=1.0, step=0.05, description="opacity", continuous_update=False
        )
        self.colormap = widgets.Dropdown(
            options=list(COLORMAPS), value="auto", description="colours"
        )
        self.progress = widgets.IntProgress(
            value=0,
            min=0,
            max=1,
            description="Score-CAM",
            layout=widgets.Layout(visibility="hidden"),
        )
        self.status = widgets.HTML(layout=wide)
        self.picture = widgets.Image(format="jpeg", layout=widgets.Layout(width="420px"))
        self.predictions = widgets.HTML(layout=widgets.Layout(min_width="20em"))
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.image, self.upload]),
                widgets.HBox([self.method, self.target, self.search]),
                widgets.HBox([self.layer, self.opacity, self.colormap]),
                widgets.HBox([self.progress, self.status]),
                widgets.HBox([self.picture, self.predictions]),
            ]
        )

        self._set_targets(image, target)
        self._sync_layer()
        self.image.observe(self._on_image, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.method.observe(self._on_method, names="value")
        self.target.observe(self._on_choice, names="value")
        self.layer.observe(self._on_choice, names="value")
        self.search.observe(self._on_search, names="value")
        self.opacity.observe(self._on_style, names="value")
        self.colormap.observe(self._on_style, names="value")
        self.refresh()

    # -- state ---------------------------------------------------------------------------------
    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Change several controls without each change triggering a recomputation."""
        before, self._suspended = self._suspended, True
        try:
            yield
        finally:
            self._suspended = before

    def _input(self, key: str) -> torch.Tensor:
        if key not in self._inputs:
            source = self._sources[key]
            self._inputs[key] = self.loaded.preprocess(source)
            self._views[key] = self.loaded.view(source)
            with torch.no_grad():
                logits = self.loaded.model(self._inputs[key])
            self._probs[key] = torch.softmax(logits.float(), dim=1)[0].cpu()
        return self._inputs[key]

    def _set_targets(self, key: str, target: int | str | None = None) -> None:
        """Fill ``target`` with the image's top-k classes (plus ``target`` if not among them)."""
        self._input(key)
        probs = self._probs[key]
        names = self.loaded.class_names
        top = probs.topk(self.top_k).indices.tolist()
        chosen = top[0] if target is None else self.loaded.class_index(target)
        if chosen not in top:
            top.append(chosen)
        with self._quiet():
            self.target.options = [(f"{names[i]} ({float(probs[i]):.3f})", i) for i in top]
            self.target.value = chosen
            if target is None:  # a new image starts from its top class: the old search is stale
                self.search.value = ""

    def _sync_layer(self) -> None:
        method = self.method.value
        if method == "cam":  # CAM's weights are the classifier's: only its input layer works
            with self._quiet():
                self.layer.value = self.loaded.cam_layer
        self.layer.disabled = method in ("cam", "lrp")

    @property
    def key(self) -> tuple[str, str, int, str]:
        """The current choice: (image, method, class index, layer)."""
        layer = "" if self.method.value == "lrp" else self.layer.value
        return (self.image.value, self.method.value, int(self.target.value), layer)

    @property
    def heatmap(self) -> np.ndarray | None:
        """The map on display, (S, S), or ``None`` when the last request failed."""
        return self.maps.get(self._current) if self._current else None

    # -- observers -----------------------------------------------------------------------------
    def _on_image(self, change: dict[str, Any]) -> None:
        if self._suspended:
            return
        self._guard(lambda: (self._set_targets(change["new"]), self.refresh()))

    def _on_method(self, change: dict[str, Any]) -> None:
        if self._suspended:
            return
        self._sync_layer()
        self.refresh()

    def _on_choice(self, change: dict[str, Any]) -> None:
        if not self._suspended:
            self.refresh()

    def _on_search(self, change: dict[str, Any]) -> None:
        value = change["new"]
        if self._suspended or value not in self.search.options:
            return
        self._guard(lambda: self._set_targets(self.image.value, int(value.split(":", 1)[0])))
        self.refresh()

    def _on_style(self, change: dict[str, Any]) -> None:
        if not self._suspended:
            self._guard(self._draw)

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if self._suspended or not files:
            return
        self._guard(lambda: self.add_upload(files[0]["name"], bytes(files[0]["content"])))

    def add_upload(self, name: str, data: bytes) -> None:
        """Decode an uploaded file, add it to the image menu and explain it.

        Raises :class:`xai_helpers.images.ImageLoadError` for a file that is too large or not an
        image (the widget shows the message; nothing else changes).
        """
        picture = decode_image(data, name, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        key = f"upload: {name}"
        if key in self._sources:  # a new file with the same name replaces the old one
            for cache in (self._inputs, self._views, self._probs):
                cache.pop(key, None)
            for k in [k for k in self.maps if k[0] == key]:
                del self.maps[k]
        self._sources[key] = picture
        with self._quiet():
            options = [o for o in self.image.options if o[1] != key]
            self.image.options = [*options, (f"{key} ({picture.width}x{picture.height})", key)]
            self.image.value = key
        self._set_targets(key)
        self.refresh()

    # -- computing and drawing -----------------------------------------------------------------
    def _guard(self, action: Callable[[], object]) -> bool:
        """Run ``action``; show its error in ``status`` instead of raising (a UI boundary)."""
        try:
            action()
        except ValueError as err:  # every error of the package is a ValueError with a fix
            self._show_error(str(err))
            return False
        except Exception as err:  # a widget callback must not raise into the kernel
            self._show_error(f"unexpected {type(err).__name__}: {err}")
            return False
        return True

    def _show_error(self, message: str) -> None:
        self.progress.layout.visibility = "hidden"
        self.status.value = f"<span style='color:#b00020'>⚠ {html.escape(message)}</span>"

    def refresh(self) -> None:
        """Explain the current choice (from the cache when possible) and redraw."""
        if self._guard(self._compute):
            self._guard(self._draw)

    def _compute(self) -> None:
        self._current = None  # until the map for the new choice exists
        key = self.key
        if key in self.maps:
            self.maps.move_to_end(key)
            self._current = key
            self.status.value = f"{self._describe(key)}: from the cache"
            return
        image, method, target, layer = key
        kwargs: dict[str, Any] = {} if method == "lrp" else {"layer": layer}
        if method == "score_cam":
            kwargs["progress"] = self._progress
            self.progress.layout.visibility = "visible"
        start = time.perf_counter()
        try:
            maps = self.explain_fn(self.loaded, self._input(image), method, target, **kwargs)
        finally:
            self.progress.layout.visibility = "hidden"
        seconds = time.perf_counter() - start
        self.computed += 1
        self.maps[key] = maps.detach().cpu().double().numpy()[0]
        while len(self.maps) > self.cache_size:
            self.maps.popitem(last=False)
        self._current = key
        self.status.value = f"{self._describe(key)}: computed in {seconds:.2f} s"

    def _progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done

    def _describe(self, key: tuple[str, str, int, str]) -> str:
        image, method, target, layer = key
        where = f", layer {layer}" if layer else ""
        name = self.loaded.class_names[target]
        label = LABELS.get(method, method)
        return html.escape(f"{label} of '{name}' ({target}) on {image}{where}")

    def _draw(self) -> None:
        key, heatmap = self._current, self.heatmap
        if key is None or heatmap is None:
            return
        image, method, target, layer = key
        signed = method == "lrp"
        cmap = None if self.colormap.value == "auto" else self.colormap.value
        fig, ax = plt.subplots(figsize=(4.2, 3.7), layout="constrained")
        title = f"{LABELS.get(method, method)}: {self.loaded.class_names[target]}"
        show_map(
            ax,
            heatmap,
            self._views[image],
            title + (f"\nlayer {layer}" if layer else ""),
            cmap=cmap,
            alpha=float(self.opacity.value),
            scale="signed" if signed else "values",
        )
        buffer = io.BytesIO()
        # JPEG: a quarter of the PNG's size for a photo overlay, and it is stored in the notebook
        fig.savefig(buffer, format="jpeg", dpi=100, pil_kwargs={"quality": 90})
        plt.close(fig)
        self.picture.value = buffer.getvalue()
        self.predictions.value = self._prediction_table(image, target)

    def _prediction_table(self, image: str, target: int) -> str:
        probs = self._probs[image]
        top = probs.topk(self.top_k).indices.tolist()
        rows = []
        for rank, i in enumerate(top, 1):
            cells = f"<td>{rank}</td><td>{i}</td><td>{html.escape(self.loaded.class_names[i])}</td>"
            cells += f"<td>{float(probs[i]):.4f}</td>"
            style = " style='font-weight:bold'" if i == target else ""
            rows.append(f"<tr{style}>{cells}</tr>")
        if target not in top:
            rank = int((probs > probs[target]).sum()) + 1
            name = html.escape(self.loaded.class_names[target])
            rows.append(
                f"<tr style='font-weight:bold'><td>{rank}</td><td>{target}</td><td>{name}</td>"
                f"<td>{float(probs[target]):.2e}</td></tr>"
            )
        return (
            f"<b>{html.escape(self.loaded.name)}</b> on {html.escape(image)}"
            "<table><thead><tr><th>rank</th><th>class</th><th>name</th><th>p</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    # -- display -------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, plus a JPEG of the current overlay for viewers without widgets."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        if self.picture.value:
            bundle["image/jpeg"] = base64.b64encode(self.picture.value).decode("ascii")
        return bundle

    def __repr__(self) -> str:
        image, method, target, layer = self.key
        return (
            f"Explorer({self.loaded.name}, {LABELS.get(method, method)}, image {image!r}, "
            f"class {target} {self.loaded.class_names[target]!r}"
            + (f", layer {layer!r})" if layer else ")")
        )


# --------------------------------------------------------------------------------------------
# the robustness explorer
# --------------------------------------------------------------------------------------------


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
) -> Exploration:
    """Perturb ``picture`` (mask, then text, then rotation and scaling), classify and explain.

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
        ``(loaded, x, method, target) -> (N, H, W)``; default :func:`xai_helpers.explain.explain`.
    """
    explain_fn = explain_fn or _default_explain
    before = loaded.predict(P.to_input(loaded, picture))
    target_index = before.top1[0] if target is None else loaded.class_index(target)
    if reference is None:
        reference = _as_map(explain_fn(loaded, P.to_input(loaded, picture), method, target_index))

    perturbed = picture
    if mask_fraction > 0:
        perturbed = P.occlude(perturbed, P.top_k_mask(reference, mask_fraction), fill=fill)
    if text:
        perturbed = P.draw_text(perturbed, text, size=text_size, background="black").image
    warped = P.affine(perturbed, angle=angle, scale=scale)

    x = P.to_input(loaded, warped.array)
    heatmap = _as_map(explain_fn(loaded, x, method, target_index))
    aligned = P.unwarp(heatmap, warped.matrix, valid=warped.valid)
    probs = P.class_probability(loaded, [picture, warped.array], target_index)
    return Exploration(
        original=picture,
        perturbed=warped.array,
        valid=aligned.valid,
        reference=reference,
        heatmap=heatmap,
        aligned=aligned.array,
        before=before,
        after=loaded.predict(x),
        target=target_index,
        p_before=float(probs[0]),
        p_after=float(probs[1]),
        agreement=P.compare_maps(reference, aligned.array, aligned.valid),
        method=method,
    )


def _as_map(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().cpu().double().numpy()[0]


def plot_exploration(result: Exploration, cell_size: float = 2.0) -> Figure:
    """Original and perturbed picture with their maps, the map aligned back, and the numbers."""
    signed = result.method == "lrp"
    fig, axes = plt.subplots(1, 5, figsize=(5 * cell_size, cell_size + 0.8), layout="constrained")
    axes[0].imshow(result.original)
    axes[0].set_title(f"original\n{result.before.top1[1]} {result.before.top1[2]:.2f}", fontsize=9)
    axes[0].set_axis_off()
    scale = "signed" if signed else "values"
    show_map(axes[1], result.reference, result.original, "map before", scale=scale, colorbar=False)
    axes[2].imshow(result.perturbed)
    axes[2].set_title(f"perturbed\n{result.after.top1[1]} {result.after.top1[2]:.2f}", fontsize=9)
    axes[2].set_axis_off()
    show_map(axes[3], result.heatmap, result.perturbed, "map after", scale=scale, colorbar=False)
    aligned = np.where(result.valid, result.aligned, 0.0)
    show_map(
        axes[4], aligned, result.original, "after, aligned back", scale=scale, colorbar=False
    )
    a = result.agreement
    fig.suptitle(
        f"{result.method}: class {result.target}, p {result.p_before:.3f} -> {result.p_after:.3f}"
        f" | Spearman {a.spearman:.2f}, top-20% IoU {a.iou:.2f}, valid {a.valid_fraction:.0%}",
        fontsize=10,
    )
    return fig


def robustness_explorer(
    loaded: LoadedModel,
    picture: np.ndarray,
    methods: Sequence[str] = ("grad_cam", "grad_cam_pp", "lrp"),
    target: int | str | None = None,
    explain_fn: ExplainFn | None = None,
) -> widgets.VBox:
    """Sliders for angle, scale, text size, mask fraction, a text box and a method menu.

    Every change (on release of a slider, on Enter in the text box) re-runs :func:`explore`
    and redraws :func:`plot_exploration`. The original's map is computed once per method and
    cached. Returns the ``ipywidgets.VBox``; display it as the
    last expression of a cell.
    """
    controls = {
        "method": widgets.Dropdown(options=list(methods), value=methods[0], description="method"),
        "angle": widgets.FloatSlider(
            value=0, min=-180, max=180, step=5, description="angle", continuous_update=False
        ),
        "scale": widgets.FloatSlider(
            value=1, min=0.5, max=2, step=0.05, description="scale", continuous_update=False
        ),
        "text": widgets.Text(value="", description="text", continuous_update=False),
        "text_size": widgets.IntSlider(
            value=32, min=8, max=96, step=4, description="text size", continuous_update=False
        ),
        "mask_fraction": widgets.FloatSlider(
            value=0, min=0, max=0.8, step=0.05, description="mask top-k", continuous_update=False
        ),
    }
    references: dict[str, np.ndarray] = {}

    def update(
        method: str, angle: float, scale: float, text: str, text_size: int, mask_fraction: float
    ) -> None:
        result = explore(
            loaded,
            picture,
            method,
            angle=angle,
            scale=scale,
            text=text,
            text_size=text_size,
            mask_fraction=mask_fraction,
            target=target,
            reference=references.get(method),
            explain_fn=explain_fn,
        )
        references[method] = result.reference
        fig = plot_exploration(result)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(update, controls)
    return widgets.VBox(
        [widgets.HBox(list(controls.values())[:3]), widgets.HBox(list(controls.values())[3:]), out]
    )
