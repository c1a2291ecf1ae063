"""Interactive widgets: explore an explanation live, and perturb a picture with sliders.

* :class:`Explorer` -- the image (a sample or your upload), the method (every record of
  :data:`xai_helpers.registry.METHODS`), the class (the top-k, or any of the 1000 by a
  forgiving search), the layer, the opacity and the colour map; the picture and the prediction
  table follow. Every method notebook ends with one, preset to its method.
* :class:`RobustnessExplorer` (:func:`robustness_explorer`) -- swap the channels, mask, write
  on, rotate and zoom the picture, then compare prediction and explanation before and after.

Only the controls and their wiring live here; what is computed is in
:mod:`xai_helpers.explorer_state` and :mod:`xai_helpers.explorer_robustness`, how it is drawn
in :mod:`xai_helpers.explorer_draw`, how long computations run in
:mod:`xai_helpers.explorer_jobs`.

**Busy state.** A control change that needs a new map starts a job on a worker thread and
returns at once, so the kernel keeps answering clicks: the status line says what is computed
("Score-CAM of 'tabby' on chelsea: 310/454 passes"), the old picture is dimmed (it is stale),
and **Cancel** stops the run at its next progress report and puts the controls back to what
the picture shows. The controls never disagree with the picture for longer than a run: a run
that fails puts them back too and says why. Code can wait for the picture with :meth:`wait`.

**Without a live kernel** (GitHub, nbviewer, an untrusted notebook) a stored explorer shows a
still picture with the note "run the cells to use the controls", never a widget's raw repr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np

from . import explorer_draw as draw
from .explorer_jobs import Job
from .explorer_robustness import Exploration, explore, plot_exploration
from .explorer_state import Choice, ExplainFn, ExplorerState, format_probability
from .images import MAX_BYTES, MAX_PIXELS, SAMPLE_NAMES
from .models import LoadedModel
from .progress import TextProgress
from .registry import Method
from .widgets_base import LABEL, LiveWidget, fit, grow, guarded, message, row
from .widgets_robustness import RobustnessExplorer, robustness_explorer

__all__ = [
    "COLORMAPS",
    "ExplainFn",
    "Exploration",
    "Explorer",
    "RobustnessExplorer",
    "explore",
    "plot_exploration",
    "robustness_explorer",
]

#: Colour maps the explorer offers; ``"auto"`` is ``jet`` for unsigned maps and the diverging
#: ``bwr`` (centred at zero) for signed ones.
COLORMAPS = ("auto", "jet", "turbo", "viridis", "inferno", "gray", "bwr", "coolwarm")


class Explorer(LiveWidget):
    """A live explorer of one model's explanations; display it as the last expression of a cell.

    Controls (plain attributes, all in :attr:`widget`): ``image`` and ``upload`` (a sample or
    your own file, checked by :func:`xai_helpers.images.decode_image`), ``method`` (the
    registry's labels), ``target`` and ``search`` (the top-``top_k`` classes, or any class found
    by :class:`xai_helpers.explorer_state.ClassSearch`: a plain name, part of one, a synonym,
    ``281``; Enter picks the best match), ``layer`` (for methods whose record says
    ``layer="any"``; fixed for ``"fixed"``, off for ``"none"``), ``opacity`` (unsigned maps;
    signed maps are opaque where large) and ``colormap``. Outputs: ``picture``, ``predictions``,
    ``status`` (with ``progress`` and ``cancel`` while a computation runs).

    The first picture is computed while the cell runs, so a notebook can check it at once
    (:attr:`heatmap`, :attr:`key`); later changes compute in the background unless
    ``background=False``: call :meth:`wait` before reading :attr:`heatmap` in code.

    Parameters
    ----------
    loaded:
        The model, from :func:`xai_helpers.models.load_model`.
    method, image, target, layer:
        Initial choices: a method name, a sample name (:data:`xai_helpers.images.SAMPLE_NAMES`),
        a class (index or name; default the top-1), a layer (default ``loaded.cam_layer``).
    methods:
        The methods offered (names or records); default every registered method.
    explain_fn:
        ``(loaded, x, method, target, **kwargs) -> (N, H, W)``; tests pass a cheap stand-in.
    background:
        Compute changes on a worker thread (default) or in the observer itself.
    copy_model:
        Compute on a copy of the network (default), so that cells run meanwhile never meet the
        explorer's hooks. ``False`` saves the memory of a copy (VGG16: 528 MB).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        method: str = "grad_cam",
        image: str = "chelsea",
        target: int | str | None = None,
        layer: str | None = None,
        methods: Sequence[str | Method] | None = None,
        top_k: int = 5,
        explain_fn: ExplainFn | None = None,
        cache_size: int = 32,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
        background: bool = True,
        copy_model: bool = True,
    ) -> None:
        self.state = state = ExplorerState(
            loaded, methods, explain_fn, top_k, cache_size, max_bytes, max_pixels, copy_model
        )
        if method not in state.methods:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(state.methods)}")
        if image not in SAMPLE_NAMES:
            raise ValueError(
                f"unknown sample image {image!r}; choose one of {', '.join(SAMPLE_NAMES)} "
                "(upload your own in the widget)"
            )
        if layer is not None and layer not in state.layers:
            raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(state.layers)}")
        chosen = None if target is None else loaded.class_index(target)
        self.loaded = loaded
        self._shown: Choice | None = None
        self._shown_map: np.ndarray | None = None
        self._note: str | None = None  # what the last search found, shown with the next picture
        self._init_live(background, "jpeg")
        self._build(method, image, layer or loaded.cam_layer)
        self._set_targets(image, chosen)
        self._sync_controls()
        for control in (self.image, self.method, self.target, self.layer):
            control.observe(self._on_choice, names="value")
        self.search.observe(self._on_search, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.opacity.observe(self._on_style, names="value")
        self.colormap.observe(self._on_style, names="value")
        self._first_picture()

    def _build(self, method: str, image: str, layer: str) -> None:
        s = self.state
        self.image = widgets.Dropdown(
            options=[(s.labels[k], k) for k in s.sources],
            value=image,
            description="image",
            style=LABEL,
            layout=fit(),
        )
        self.upload = widgets.FileUpload(
            accept="image/*",
            multiple=False,
            description="upload",
            tooltip="your own photo: PNG, JPEG, TIFF, ...",
            layout=widgets.Layout(width="9em"),
        )
        self.method = widgets.Dropdown(
            options=[(m.label, m.name) for m in s.methods.values()],
            value=method,
            description="method",
            style=LABEL,
            layout=fit(),
        )
        self.target = widgets.Dropdown(description="class", style=LABEL, layout=fit())
        self.search = widgets.Combobox(
            options=s.search.options,
            ensure_option=False,
            continuous_update=False,
            placeholder=f"search {len(s.search.names)} classes, Enter",
            description="search",
            style=LABEL,
            layout=grow("16em", "14em"),
        )
        self.layer = widgets.Dropdown(
            options=s.layers,
            value=layer,
            description="layer",
            style=LABEL,
            layout=grow("12em", "11em"),
        )
        self.opacity = widgets.FloatSlider(
            value=0.5,
            min=0.0,
            max=1.0,
            step=0.05,
            description="opacity",
            continuous_update=False,
            style=LABEL,
            layout=grow("14em", "13em"),
        )
        self.colormap = widgets.Dropdown(
            options=list(COLORMAPS),
            value="auto",
            description="colours",
            style=LABEL,
            layout=grow("9em", "9em"),
        )
        self.predictions = widgets.HTML(layout=widgets.Layout(flex="0 1 auto", min_width="16em"))
        css = widgets.HTML(draw.CSS, layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox(
            [
                css,
                widgets.HBox([self.image, self.upload], layout=row()),
                widgets.HBox([self.method, self.target, self.search], layout=row()),
                widgets.HBox([self.layer, self.opacity, self.colormap], layout=row()),
                widgets.HBox([self.status, self.progress, self.cancel], layout=row()),
                widgets.HBox(
                    [self.picture, self.predictions],
                    layout=widgets.Layout(
                        flex_flow="row wrap",
                        overflow="visible",
                        width="100%",
                        align_items="flex-start",
                    ),
                ),
            ],
            layout=widgets.Layout(width="100%", overflow="visible"),
        )
        self.widget.add_class("xai-explorer")

    # -- the current choice ----------------------------------------------------------------------
    @property
    def key(self) -> Choice:
        """What the controls ask for: (image, method, class index, layer)."""
        return self.state.choice(
            self.image.value, self.method.value, self.target.value, self.layer.value
        )

    @property
    def shown(self) -> Choice | None:
        """What the picture shows (``key`` once no computation runs)."""
        return self._shown

    @property
    def heatmap(self) -> np.ndarray | None:
        """The map on display, (S, S), or ``None`` before the first one."""
        return self._shown_map

    @property
    def maps(self):
        return self.state.maps

    @property
    def computed(self) -> int:
        """Explanations actually run (cache hits do not count)."""
        return self.state.computed

    # -- observers (kernel main thread) --------------------------------------------------------
    @guarded
    def _on_choice(self, change: dict[str, Any]) -> None:
        if self._muted:
            return
        with self._ui:
            if change["owner"] is self.image:
                self._set_targets(self.image.value, None)
            self._sync_controls()
            self.refresh()

    @guarded
    def _on_search(self, change: dict[str, Any]) -> None:
        if self._muted or not str(change["new"]).strip():
            return
        with self._ui:
            probs = self.state.probabilities(self.image.value).tolist()
            found = self.state.search.find(change["new"], probs)
            if found.best is None:
                self._set_status(found.message, "error")
                return
            with self._quiet():
                self.search.value = self.state.search.options[found.best]
            self._note = "search " + found.message
            self._set_targets(self.image.value, found.best)
            self.refresh()

    @guarded
    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if self._muted or not files:
            return
        name, data = files[0]["name"], bytes(files[0]["content"])
        try:
            picture = self.state.decode_upload(name, data)
        except ValueError as err:  # a bad file: say why, change nothing
            with self._ui:
                self._set_status(str(err), "error")
            return
        with self._ui:
            if self._job is not None:  # the upload supersedes the run
                self._job.cancel()
            self._set_status(f"Classifying upload: {name}...", "busy")
        key = self.state.add_picture(name, picture)  # waits for the network, not under _ui
        with self._ui:
            with self._quiet():
                options = [o for o in self.image.options if o[1] != key]
                self.image.options = [*options, (self.state.labels[key], key)]
                self.image.value = key
            self._set_targets(key, None)
            self._sync_controls()
            self.refresh()

    @guarded
    def _on_style(self, change: dict[str, Any]) -> None:
        if self._muted or self._shown is None:
            return
        with self._ui:
            self.picture.value = self._render(self._shown, self._shown_map)
            if self._job is None:
                self._show_status(self._shown, "redrawn")

    # -- controls --------------------------------------------------------------------------------
    def _set_targets(self, image: str, target: int | None) -> None:
        """The image's top-k classes (and ``target`` if not among them) in ``target``."""
        probs = self.state.probabilities(image)
        top = self.state.top_classes(image)
        chosen = top[0] if target is None else target
        names = self.loaded.class_names
        with self._quiet():
            self.target.options = [
                (f"{names[i]}  {format_probability(float(probs[i]))}", i)
                for i in (top if chosen in top else [*top, chosen])
            ]
            self.target.value = chosen
            if target is None:  # a new image starts from its top class: the old search is stale
                self.search.value = ""

    def _sync_controls(self) -> None:
        record = self.state.method(self.method.value)
        with self._quiet():
            if record.layer == "fixed":
                self.layer.value = self.loaded.cam_layer
        self.layer.disabled = record.layer != "any"
        self.layer.tooltip = {
            "any": "the feature maps the method explains",
            "fixed": f"{record.label} reads {self.loaded.cam_layer} only (its weights are the "
            "classifier's)",
            "none": f"{record.label} explains the input pixels: no layer",
        }[record.layer]
        self.opacity.disabled = record.signed
        self.opacity.tooltip = (
            "signed maps are opaque where |value| is large" if record.signed else "map opacity"
        )

    def _revert(self) -> None:
        """Put the controls back to what the picture shows (after a cancel or a failure)."""
        shown = self._shown
        if shown is None:
            return
        with self._quiet():
            self.image.value = shown.image
            self._set_targets(shown.image, shown.target)
            self.method.value = shown.method
            if shown.layer:
                self.layer.value = shown.layer
        self._sync_controls()

    # -- computing and showing -------------------------------------------------------------------
    def refresh(self) -> None:
        """Show the current choice: from the cache at once, else computed (see :meth:`wait`)."""
        with self._ui:
            choice = self.key
            heatmap = self.state.cached(choice)
            if heatmap is not None:
                if self._job is not None:
                    self._job.cancel()
                    self._idle()
                self._show(choice, heatmap, self._render(choice, heatmap), "from the cache")
                return
            if self._job is not None and self._job.payload == choice:
                return  # already on its way
            record = self.state.method(choice.method)
            job = Job(self.state.describe(choice), lambda job: self._work(job, choice), choice)
            self._start(job, record.reports_progress, self._on_done)

    def _first_picture(self) -> None:
        """The first picture, computed while the cell runs (a text bar for long methods)."""
        choice = self.key
        try:
            with TextProgress(self.state.describe(choice), unit="pass") as bar:
                heatmap = self.state.compute(choice, bar)
            self._show(choice, heatmap, self._render(choice, heatmap), "computed")
        except Exception as err:  # shown in the widget like any later failure
            self._set_status(f"{self.state.describe(choice)} failed: {message(err)}", "error")

    def _work(self, job: Job, choice: Choice) -> tuple[np.ndarray, bytes, tuple[Any, ...]]:
        heatmap = self.state.compute(choice, job.report)
        job.check()
        style = self._style()
        return heatmap, self._render(choice, heatmap), style

    def _on_done(self, job: Job, result: tuple[np.ndarray, bytes, tuple[Any, ...]]) -> None:
        heatmap, picture, style = result
        with self._ui:
            if not self._current(job):
                return
            self._idle()
            choice = job.payload
            if style != self._style():  # the opacity or colours changed meanwhile
                picture = self._render(choice, heatmap)
            self._show(choice, heatmap, picture, "computed")

    def _style(self) -> tuple[Any, ...]:
        return (float(self.opacity.value), self.colormap.value)

    def _render(self, choice: Choice, heatmap: np.ndarray) -> bytes:
        record = self.state.method(choice.method)
        name = self.loaded.class_names[choice.target]
        where = f"layer {choice.layer}" if choice.layer else "input pixels (no layer)"
        alpha, cmap = self._style()
        with self._render_lock:
            return draw.map_picture(
                heatmap,
                self.state.view(choice.image),
                record,
                f"{record.label} of '{name}' ({choice.target})",
                f"{choice.image}  |  {where}",
                cmap=None if cmap == "auto" else cmap,
                alpha=alpha,
            )

    def _show(self, choice: Choice, heatmap: np.ndarray, picture: bytes, how: str) -> None:
        self._shown, self._shown_map = choice, heatmap
        self.picture.value = picture
        self.picture.remove_class("xai-stale")
        probs = self.state.probabilities(choice.image)
        self.predictions.value = draw.prediction_table(
            self.loaded.name,
            f"{choice.image}: {self.state.descriptions[choice.image]}",
            probs,
            self.loaded.class_names,
            self.state.top_classes(choice.image),
            choice.target,
        )
        self._show_status(choice, how)

    def _show_status(self, choice: Choice, how: str) -> None:
        seconds = self.state.seconds.get(choice)
        if how == "computed" and seconds is not None:
            how = f"computed in {seconds:.2f} s"
        notes = [n for n in (self._note, self.state.same_picture_note(choice)) if n]
        self._note = None
        self._set_status(f"{self.state.describe(choice)}: {how}", "done", " · ".join(notes))

    def _shown_note(self) -> str:
        if self._shown is None:
            return "No picture yet."
        return f"The picture shows {self.state.describe(self._shown)}."

    # -- display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self._bundle(repr(self), **kwargs)

    def __repr__(self) -> str:
        shown = self._shown or self.key
        label = self.state.method(shown.method).label
        layer = f", layer {shown.layer!r}" if shown.layer else ""
        return (
            f"Explorer({self.loaded.name}, {label}, image {shown.image!r}, "
            f"class {shown.target} {self.loaded.class_names[shown.target]!r}{layer})"
        )
