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

import base64
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np

from . import explorer_draw as draw
from .explorer_jobs import Job, Runner
from .explorer_robustness import (
    Exploration,
    Perturbation,
    RobustnessState,
    draw_exploration,
    explore,
    plot_exploration,
)
from .explorer_state import Choice, ExplainFn, ExplorerState, format_probability
from .images import MAX_BYTES, MAX_PIXELS, SAMPLE_NAMES
from .models import LoadedModel
from .progress import TextProgress
from .registry import Method

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

#: Controls wrap onto the next line instead of scrolling sideways; labels are never cut.
_ROW = widgets.Layout(flex_flow="row wrap", align_items="center", overflow="visible", width="100%")
_LABEL = {"description_width": "initial"}


def _grow(basis: str, min_width: str = "0") -> widgets.Layout:
    return widgets.Layout(flex=f"1 1 {basis}", width="auto", min_width=min_width)


class _Live:
    """The busy state shared by both explorers: status line, progress bar, Cancel, picture.

    Threads: observers run on the kernel's main thread and hold ``_ui`` while they change
    widgets; the worker renders outside ``_ui`` and publishes under it, and only while its job
    is the latest; progress and timer updates are skipped when ``_ui`` is busy (never waited
    for). The network itself is guarded by the state's lock, which is never taken under ``_ui``.
    """

    picture_max_width = "960px"

    def _init_live(self, background: bool, picture_format: str) -> None:
        self._ui = threading.RLock()
        self._render_lock = threading.Lock()
        self._local = threading.local()
        self._runner = Runner(background, on_tick=self._on_tick)
        self._job: Job | None = None
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, layout=widgets.Layout(width="12em", visibility="hidden")
        )
        self.cancel = widgets.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            tooltip="stop this computation; the controls go back to the picture shown",
            layout=widgets.Layout(width="7.5em", visibility="hidden"),
        )
        self.cancel.on_click(lambda _: self.cancel_run())
        self.status = widgets.HTML(layout=_grow("20em"))
        self.picture = widgets.Image(
            format=picture_format,
            layout=widgets.Layout(
                flex=f"1 1 {self.picture_basis}",
                width="auto",
                height="auto",
                max_width=self.picture_max_width,
                min_width="0",
                align_self="flex-start",
            ),
        )
        self.picture.add_class("xai-picture")

    picture_basis = "440px"

    # -- quiet changes (thread-local: a worker's quiet change never mutes a click) --------------
    @contextmanager
    def _quiet(self) -> Iterator[None]:
        before = getattr(self._local, "quiet", False)
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = before

    @property
    def _muted(self) -> bool:
        return getattr(self._local, "quiet", False)

    # -- jobs ------------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the explorer computes nothing (for code that changes controls)."""
        return self._runner.wait(timeout)

    @property
    def busy(self) -> bool:
        return self._runner.current is not None

    def _start(self, job: Job, reports_progress: bool, on_done: Callable[[Job, Any], None]) -> None:
        """Mark the picture stale, show what runs, and hand ``job`` to the worker."""
        job.on_progress = self._on_progress
        self._job = job
        self.picture.add_class("xai-stale")
        self.progress.value, self.progress.max = 0, 1
        self.progress.layout.visibility = "visible" if reports_progress else "hidden"
        self.cancel.layout.visibility = "visible"
        self.cancel.disabled = False
        waiting = " (waiting for the previous run to stop)" if self._runner.busy else ""
        self._set_status(f"Computing {job.label}{waiting}...", "busy", self._shown_note())
        self._runner.submit(job, on_done, self._on_error)

    def _idle(self) -> None:
        self._job = None
        self.picture.remove_class("xai-stale")
        self.progress.layout.visibility = "hidden"
        self.cancel.layout.visibility = "hidden"

    def _current(self, job: Job) -> bool:
        return job is self._job and not job.cancelled

    def _on_progress(self, job: Job) -> None:
        if self._ui.acquire(blocking=False):  # never make the computation wait for the display
            try:
                if self._current(job):
                    self.progress.max = max(job.total, 1)
                    self.progress.value = job.done
                    self._busy_line(job)
            finally:
                self._ui.release()

    def _on_tick(self, job: Job) -> None:
        self._on_progress(job)

    def _busy_line(self, job: Job) -> None:
        passes = f": {job.done}/{job.total} passes" if job.total else ""
        text = f"{job.label}{passes}, {job.elapsed:.0f} s"
        self._set_status(f"Computing {text}", "busy", self._shown_note())

    def cancel_run(self) -> None:
        """Stop the running computation; the controls go back to what the picture shows."""
        with self._ui:
            job = self._job
            if job is None:
                return
            job.cancel()
            self._idle()
            self._revert()
            at = f" at {job.done}/{job.total} passes" if job.total else ""
            self._set_status(f"Cancelled {job.label}{at}. {self._shown_note()}", "note")

    def _on_error(self, job: Job, err: Exception) -> None:
        with self._ui:
            if not self._current(job):
                return
            self._idle()
            self._revert()
            self._set_status(f"{job.label} failed: {_message(err)}. {self._shown_note()}", "error")

    def _set_status(self, text: str, kind: str, note: str | None = None) -> None:
        self.status.value = draw.status_html(text, kind, note)

    # -- to be defined by each explorer -----------------------------------------------------------
    def _revert(self) -> None:
        raise NotImplementedError

    def _shown_note(self) -> str:
        raise NotImplementedError

    # -- display ---------------------------------------------------------------------------------
    def _bundle(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """The live widget, a still picture with its note, and a one-line text."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = f"{text}\n{draw.STILL_NOTE}"
        if self.picture.value:
            still = draw.still_picture(bytes(self.picture.value))
            bundle["image/jpeg"] = base64.b64encode(still).decode("ascii")
        return bundle


def _guarded(observer: Callable[..., None]) -> Callable[..., None]:
    """A widget callback must not raise into the kernel: show the error in the status line."""

    def run(self: _Live, *args: Any) -> None:
        try:
            observer(self, *args)
        except Exception as err:
            with self._ui:
                self._set_status(_message(err), "error")

    run.__name__, run.__doc__ = observer.__name__, observer.__doc__
    return run


def _message(err: Exception) -> str:
    # every error of the package is a ValueError whose message names the fix
    return str(err) if isinstance(err, ValueError) else f"unexpected {type(err).__name__}: {err}"


# ----------------------------------------------------------------------------------------------
# the explanation explorer
# ----------------------------------------------------------------------------------------------


class Explorer(_Live):
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
            style=_LABEL,
            layout=_grow("24em", "22em"),
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
            style=_LABEL,
            layout=_grow("11em", "11em"),
        )
        self.target = widgets.Dropdown(
            description="class", style=_LABEL, layout=_grow("16em", "15em")
        )
        self.search = widgets.Combobox(
            options=s.search.options,
            ensure_option=False,
            continuous_update=False,
            placeholder=f"search {len(s.search.names)} classes, Enter",
            description="search",
            style=_LABEL,
            layout=_grow("16em", "14em"),
        )
        self.layer = widgets.Dropdown(
            options=s.layers,
            value=layer,
            description="layer",
            style=_LABEL,
            layout=_grow("12em", "11em"),
        )
        self.opacity = widgets.FloatSlider(
            value=0.5,
            min=0.0,
            max=1.0,
            step=0.05,
            description="opacity",
            continuous_update=False,
            style=_LABEL,
            layout=_grow("14em", "13em"),
        )
        self.colormap = widgets.Dropdown(
            options=list(COLORMAPS),
            value="auto",
            description="colours",
            style=_LABEL,
            layout=_grow("9em", "9em"),
        )
        self.predictions = widgets.HTML(layout=widgets.Layout(flex="0 1 24em", min_width="16em"))
        css = widgets.HTML(draw.CSS, layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox(
            [
                css,
                widgets.HBox([self.image, self.upload], layout=_ROW),
                widgets.HBox([self.method, self.target, self.search], layout=_ROW),
                widgets.HBox([self.layer, self.opacity, self.colormap], layout=_ROW),
                widgets.HBox([self.progress, self.cancel, self.status], layout=_ROW),
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
    @_guarded
    def _on_choice(self, change: dict[str, Any]) -> None:
        if self._muted:
            return
        with self._ui:
            if change["owner"] is self.image:
                self._set_targets(self.image.value, None)
            self._sync_controls()
            self.refresh()

    @_guarded
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

    @_guarded
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

    @_guarded
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
            self._set_status(f"{self.state.describe(choice)} failed: {_message(err)}", "error")

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
            self.state.labels[choice.image],
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


# ----------------------------------------------------------------------------------------------
# the robustness explorer
# ----------------------------------------------------------------------------------------------


class RobustnessExplorer(_Live):
    """Perturb a picture with controls and compare prediction and explanation before and after.

    Controls: ``image`` and ``upload`` (the notebook's picture, the samples, your file),
    ``method`` (the registry's labels), ``channels`` (RGB, or BGR: red and blue swapped, what
    ``cv2.imread`` gives unconverted), ``angle``, ``scale``, ``mask_fraction`` (the most relevant
    pixels of the original's map, blurred out), ``text`` and ``text_size`` (a word written on
    the picture; Enter applies it). Each change runs :func:`explore` in the background with the
    same busy state and Cancel as :class:`Explorer`; results are cached per setting, and the
    original's maps of the quick methods are precomputed after the first picture so that the
    first switch of method is quick.
    """

    picture_max_width = "1400px"
    picture_basis = "600px"

    def __init__(
        self,
        loaded: LoadedModel,
        picture: np.ndarray | None = None,
        methods: Sequence[str | Method] | None = None,
        target: int | str | None = None,
        explain_fn: ExplainFn | None = None,
        method: str | None = None,
        background: bool = True,
        copy_model: bool = True,
        precompute: bool = True,
    ) -> None:
        self.loaded = loaded
        self.state = RobustnessState(
            loaded, picture, methods, target, explain_fn, copy_model=copy_model
        )
        method = method or next(iter(self.state.methods))
        if method not in self.state.methods:
            raise ValueError(
                f"unknown method {method!r}; choose one of {', '.join(self.state.methods)}"
            )
        self._shown: Perturbation | None = None
        self._shown_result: Exploration | None = None
        self._init_live(background, "jpeg")
        self._build(method)
        for control in self._controls:
            control.observe(self._on_change, names="value")
        self.upload.observe(self._on_upload, names="value")
        self._first_picture()
        if precompute and background:
            self._precompute()

    def _build(self, method: str) -> None:
        s = self.state
        slider = {"continuous_update": False, "style": _LABEL}
        self.image = widgets.Dropdown(
            options=[(label, k) for k, label in s.labels.items()],
            description="image",
            style=_LABEL,
            layout=_grow("24em", "22em"),
        )
        self.upload = widgets.FileUpload(
            accept="image/*",
            multiple=False,
            description="upload",
            layout=widgets.Layout(width="9em"),
        )
        self.method = widgets.Dropdown(
            options=[(m.label, name) for name, m in s.methods.items()],
            value=method,
            description="method",
            style=_LABEL,
            layout=_grow("11em", "11em"),
        )
        self.channels = widgets.ToggleButtons(
            options=["RGB", "BGR"],
            value="RGB",
            description="channels",
            style=_LABEL,
            tooltips=["as loaded", "red and blue swapped (cv2.imread without cvtColor)"],
        )
        self.channels.style.button_width = "4.5em"
        self.angle = widgets.FloatSlider(
            value=0,
            min=-180,
            max=180,
            step=5,
            description="angle",
            layout=_grow("16em", "14em"),
            **slider,
        )
        self.scale = widgets.FloatSlider(
            value=1,
            min=0.5,
            max=2,
            step=0.05,
            description="zoom",
            layout=_grow("16em", "14em"),
            **slider,
        )
        self.mask_fraction = widgets.FloatSlider(
            value=0,
            min=0,
            max=0.8,
            step=0.05,
            description="mask top-k",
            readout_format=".0%",
            layout=_grow("16em", "14em"),
            **slider,
        )
        self.text = widgets.Text(
            value="",
            description="text",
            placeholder="a word, Enter",
            layout=_grow("14em", "12em"),
            **slider,
        )
        self.text_size = widgets.IntSlider(
            value=32,
            min=8,
            max=96,
            step=4,
            description="text size",
            layout=_grow("16em", "14em"),
            **slider,
        )
        self._controls = (
            self.image,
            self.method,
            self.channels,
            self.angle,
            self.scale,
            self.mask_fraction,
            self.text,
            self.text_size,
        )
        css = widgets.HTML(draw.CSS, layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox(
            [
                css,
                widgets.HBox([self.image, self.upload, self.method, self.channels], layout=_ROW),
                widgets.HBox([self.angle, self.scale, self.mask_fraction], layout=_ROW),
                widgets.HBox([self.text, self.text_size], layout=_ROW),
                widgets.HBox([self.progress, self.cancel, self.status], layout=_ROW),
                widgets.HBox([self.picture], layout=_ROW),
            ],
            layout=widgets.Layout(width="100%", overflow="visible"),
        )
        self.widget.add_class("xai-explorer")

    @property
    def request(self) -> Perturbation:
        """What the controls ask for."""
        return Perturbation(
            self.image.value,
            self.method.value,
            self.channels.value,
            float(self.angle.value),
            float(self.scale.value),
            self.text.value.strip(),
            int(self.text_size.value),
            float(self.mask_fraction.value),
        )

    @property
    def result(self) -> Exploration | None:
        """The result on display."""
        return self._shown_result

    @property
    def computed(self) -> int:
        return self.state.computed

    def _describe(self, request: Perturbation) -> str:
        label = self.state.methods[request.method].label
        parts = [f"{label} on {request.image}"]
        if request.channels == "BGR":
            parts.append("BGR")
        if request.angle:
            parts.append(f"rotated {request.angle:g}°")
        if request.scale != 1:
            parts.append(f"zoom {request.scale:g}")
        if request.mask_fraction:
            parts.append(f"top {request.mask_fraction:.0%} masked")
        if request.text:
            parts.append(f"text {request.text!r}")
        return ", ".join(parts)

    # -- observers ---------------------------------------------------------------------------------
    @_guarded
    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._muted:
            self.refresh()

    @_guarded
    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if self._muted or not files:
            return
        with self._ui:
            try:
                key = self.state.add_upload(files[0]["name"], bytes(files[0]["content"]))
            except ValueError as err:
                self._set_status(str(err), "error")
                return
            with self._quiet():
                options = [o for o in self.image.options if o[1] != key]
                self.image.options = [*options, (self.state.labels[key], key)]
                self.image.value = key
            self.refresh()

    def refresh(self) -> None:
        """Show the current setting: from the cache at once, else computed in the background."""
        with self._ui:
            request = self.request
            cached = self.state.cached(request)
            if cached is not None:
                if self._job is not None:
                    self._job.cancel()
                    self._idle()
                self._show(request, cached, self._render(cached), "from the cache")
                return
            if self._job is not None and self._job.payload == request:
                return
            job = Job(self._describe(request), lambda job: self._work(job, request), request)
            self._start(job, self.state.methods[request.method].reports_progress, self._on_done)

    def _first_picture(self) -> None:
        request = self.request
        try:
            with TextProgress(self._describe(request), unit="pass") as bar:
                result = self.state.run(request, bar)
            self._show(request, result, self._render(result), "computed")
        except Exception as err:
            self._set_status(f"{self._describe(request)} failed: {_message(err)}", "error")

    def _precompute(self) -> None:
        """After the first picture: the original's maps of the quick methods, in the background
        (the first switch to LRP then costs one map, not two). A click cancels it."""
        image = self.image.value

        def work(job: Job) -> list[str]:
            return self.state.precompute(image, job.check)

        job = Job("maps of the original for the other methods", work)
        self._runner.submit(job, lambda job, done: None, lambda job, err: None)

    def _work(self, job: Job, request: Perturbation) -> tuple[Exploration, bytes]:
        result = self.state.run(request, job.report)
        job.check()
        return result, self._render(result)

    def _on_done(self, job: Job, out: tuple[Exploration, bytes]) -> None:
        result, picture = out
        with self._ui:
            if not self._current(job):
                return
            self._idle()
            self._show(job.payload, result, picture, f"computed in {job.elapsed:.2f} s")

    def _render(self, result: Exploration) -> bytes:
        with self._render_lock:
            fig = draw.new_figure((10.5, 7.4), dpi=130, layout="constrained")
            draw_exploration(fig, result, self.loaded.class_names, fontsize=13)
            return draw.figure_bytes(fig)

    def _show(self, request: Perturbation, result: Exploration, picture: bytes, how: str) -> None:
        self._shown, self._shown_result = request, result
        self.picture.value = picture
        self.picture.remove_class("xai-stale")
        self._set_status(f"{self._describe(request)}: {how}", "done")

    def _revert(self) -> None:
        shown = self._shown
        if shown is None:
            return
        with self._quiet():
            self.image.value = shown.image
            self.method.value = shown.method
            self.channels.value = shown.channels
            self.angle.value, self.scale.value = shown.angle, shown.scale
            self.mask_fraction.value = shown.mask_fraction
            self.text.value, self.text_size.value = shown.text, shown.text_size

    def _shown_note(self) -> str:
        if self._shown is None:
            return "No picture yet."
        return f"The picture shows {self._describe(self._shown)}."

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self._bundle(repr(self), **kwargs)

    def __repr__(self) -> str:
        shown = self._shown or self.request
        return f"RobustnessExplorer({self.loaded.name}, {self._describe(shown)})"


def robustness_explorer(
    loaded: LoadedModel,
    picture: np.ndarray | None = None,
    methods: Sequence[str | Method] | None = None,
    target: int | str | None = None,
    explain_fn: ExplainFn | None = None,
    **kwargs: Any,
) -> RobustnessExplorer:
    """A :class:`RobustnessExplorer`; display it as the last expression of a cell.

    ``picture`` (view space, ``loaded.view(image)``) is listed first; ``methods`` default to
    every registered method (Score-CAM included: it shows its passes and can be cancelled).
    """
    return RobustnessExplorer(loaded, picture, methods, target, explain_fn, **kwargs)
