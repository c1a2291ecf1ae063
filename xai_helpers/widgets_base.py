"""What both explorers share: the busy state (status line, progress bar, Cancel), the picture,
the thread rules, and how they are shown without a live kernel.

:class:`LiveWidget` is the base of :class:`xai_helpers.widgets.Explorer` and
:class:`xai_helpers.widgets_robustness.RobustnessExplorer`. A control change that needs a
new picture starts a :class:`xai_helpers.explorer_jobs.Job` on a worker thread and returns at
once, so the kernel keeps answering clicks; the status line says what runs, the old picture is
dimmed (stale) and Cancel stops the run and puts the controls back to what the picture shows.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets

from . import explorer_draw as draw
from .explorer_jobs import Job, Runner

__all__ = ["LABEL", "LiveWidget", "fit", "grow", "guarded", "message", "row"]

#: Descriptions as wide as their text: never cut off.
LABEL = {"description_width": "initial"}


def row() -> widgets.Layout:
    """A row of controls that wraps onto the next line instead of scrolling sideways."""
    return widgets.Layout(
        flex_flow="row wrap", align_items="center", overflow="visible", width="100%"
    )


def grow(basis: str, min_width: str = "0") -> widgets.Layout:
    return widgets.Layout(flex=f"1 1 {basis}", width="auto", min_width=min_width)


def fit() -> widgets.Layout:
    """As wide as the longest entry (never cut off), narrower only when the row is."""
    return widgets.Layout(flex="0 1 auto", width="auto", min_width="12em")


class LiveWidget:
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
        self.status = widgets.HTML(layout=grow("20em"))
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
            self._set_status(f"{job.label} failed: {message(err)}. {self._shown_note()}", "error")

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


def guarded(observer: Callable[..., None]) -> Callable[..., None]:
    """A widget callback must not raise into the kernel: show the error in the status line."""

    def run(self: LiveWidget, *args: Any) -> None:
        try:
            observer(self, *args)
        except Exception as err:
            with self._ui:
                self._set_status(message(err), "error")

    run.__name__, run.__doc__ = observer.__name__, observer.__doc__
    return run


def message(err: Exception) -> str:
    # every error of the package is a ValueError whose message names the fix
    return str(err) if isinstance(err, ValueError) else f"unexpected {type(err).__name__}: {err}"
