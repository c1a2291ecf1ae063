"""The robustness explorer's controls: :class:`RobustnessExplorer`, :func:`robustness_explorer`.

What it computes is in :mod:`xai_helpers.explorer_robustness`; the busy state, Cancel and the
still picture in :mod:`xai_helpers.widgets_base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np

from . import explorer_draw as draw
from .explorer_jobs import Job
from .explorer_robustness import Exploration, Perturbation, RobustnessState, draw_exploration
from .explorer_state import ExplainFn
from .models import LoadedModel
from .progress import TextProgress
from .registry import Method
from .widgets_base import LABEL, LiveWidget, fit, grow, guarded, message, row

__all__ = ["RobustnessExplorer", "robustness_explorer"]


class RobustnessExplorer(LiveWidget):
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
        slider = {"continuous_update": False, "style": LABEL}
        self.image = widgets.Dropdown(
            options=[(label, k) for k, label in s.labels.items()],
            description="image",
            style=LABEL,
            layout=fit(),
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
            style=LABEL,
            layout=fit(),
        )
        self.channels = widgets.ToggleButtons(
            options=["RGB", "BGR"],
            value="RGB",
            description="channels",
            style=LABEL,
            tooltips=["as loaded", "red and blue swapped (cv2.imread without cvtColor)"],
        )
        self.channels.style.button_width = "4.5em"
        self.angle = widgets.FloatSlider(
            value=0,
            min=-180,
            max=180,
            step=5,
            description="angle",
            layout=grow("16em", "14em"),
            **slider,
        )
        self.scale = widgets.FloatSlider(
            value=1,
            min=0.5,
            max=2,
            step=0.05,
            description="zoom",
            layout=grow("16em", "14em"),
            **slider,
        )
        self.mask_fraction = widgets.FloatSlider(
            value=0,
            min=0,
            max=0.8,
            step=0.05,
            description="mask top-k",
            readout_format=".0%",
            layout=grow("16em", "14em"),
            **slider,
        )
        self.text = widgets.Text(
            value="",
            description="text",
            placeholder="a word, Enter",
            layout=grow("14em", "12em"),
            **slider,
        )
        self.text_size = widgets.IntSlider(
            value=32,
            min=8,
            max=96,
            step=4,
            description="text size",
            layout=grow("16em", "14em"),
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
                widgets.HBox([self.image, self.upload, self.method, self.channels], layout=row()),
                widgets.HBox([self.angle, self.scale, self.mask_fraction], layout=row()),
                widgets.HBox([self.text, self.text_size], layout=row()),
                widgets.HBox([self.status, self.progress, self.cancel], layout=row()),
                widgets.HBox([self.picture], layout=row()),
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
    @guarded
    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._muted:
            self.refresh()

    @guarded
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
            self._set_status(f"{self._describe(request)} failed: {message(err)}", "error")

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
