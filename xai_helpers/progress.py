"""Progress for long loops: one text bar that reads the same live, in a terminal and stored.

A notebook stores what a progress bar *printed*, not what it showed at the end. tqdm's widget
bar (``tqdm.auto`` in Jupyter) is stored as the text it had when it appeared (``0%| 0/454``) plus
widget state that GitHub cannot render; a bar that disappears (``leave=False``) leaves an output
that JupyterLab reports as a missing widget. So the course draws every bar as *text* on stdout:

* live in JupyterLab, VS Code or a terminal, the line updates in place (carriage returns);
* stored by ``python scripts/course.py execute``, carriage returns are resolved (nbclient's
  ``coalesce_streams``), so the notebook keeps the bar's last state, e.g.
  ``Score-CAM: 100%|##########| 454/454 [00:12<00:00, 37.1 passes/s]``; a bar with
  ``leave=False`` leaves nothing;
* stdout, not stderr, so it is not painted as an error.

Two entry points:

:func:`progress`
    A tqdm bar, for a loop in a notebook or in the package:
    ``for image in progress(images, desc="deletion curves"): ...``.
:class:`Reporter`
    For functions that take ``progress: bool | ProgressFn``: ``True`` draws a :func:`progress`
    bar, ``False`` nothing, a callable ``progress(done, total)`` is called after every step
    (a widget's busy state; :class:`xai_helpers.widgets.Explorer` passes one that can also
    cancel the run by raising).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm.std import tqdm

__all__ = ["ProgressFn", "Reporter", "TextProgress", "progress"]

T = TypeVar("T")

#: ``progress(done, total)``: called after every step of a long computation. It may raise to
#: stop the computation (the explorer's Cancel button does), so callers clean up in ``finally``.
ProgressFn = Callable[[int, int], None]

#: Characters of the bar: ASCII, so that it looks the same in every font and on GitHub.
BAR_CHARS = " #"


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A text progress bar on stdout (see the module docstring for why text).

    Parameters
    ----------
    iterable, total, desc, unit, leave:
        As for ``tqdm``: wrap an iterable, or give ``total`` and call ``.update(n)``.
        ``leave=False`` erases the bar when it closes (and nothing is stored in the notebook).
    **kwargs:
        Passed to ``tqdm`` (e.g. ``disable=True``).
    """
    options: dict[str, Any] = {
        "file": sys.stdout,  # looked up at call time: Jupyter replaces sys.stdout per kernel
        "ncols": 88,  # a notebook is not a terminal: tqdm cannot measure it
        "ascii": BAR_CHARS,
        "mininterval": 0.5,  # fewer messages to the front end on a busy CPU
        "dynamic_ncols": False,
    }
    options.update(kwargs)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, **options)


_text_bar = progress  # Reporter's argument ``progress`` shadows the function


class Reporter:
    """Progress of a computation of ``total`` steps, for ``progress: bool | ProgressFn``.

    ``progress=True``: a :func:`progress` bar (closed and erased at the end);
    ``False``: nothing; a callable: ``progress(done, total)`` after every :meth:`update` and
    once with ``done=0`` at the start. Use it as a context manager so that the bar closes when
    the computation stops early (an error, or a callback that raised to cancel it)::

        with Reporter(total, progress, desc="Score-CAM", unit="pass") as report:
            for batch in batches:
                ...
                report.update(len(batch))
    """

    def __init__(
        self,
        total: int,
        progress: bool | ProgressFn = True,
        desc: str | None = None,
        unit: str = "it",
    ) -> None:
        if not (isinstance(progress, bool) or callable(progress)):
            raise TypeError(
                f"progress must be True, False or a callable progress(done, total), "
                f"not {type(progress).__name__}"
            )
        self.total, self.done = int(total), 0
        self.callback = None if isinstance(progress, bool) else progress
        self.bar = (
            _text_bar(total=self.total, desc=desc, unit=unit, leave=False)
            if progress is True
            else None
        )
        if self.callback is not None:
            self.callback(0, self.total)

    def update(self, n: int = 1) -> None:
        """``n`` more steps are done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextProgress:
    """A :data:`ProgressFn` that draws a :func:`progress` bar: ``progress=TextProgress(...)``.

    For code that hands a callback to a computation but wants the text bar, e.g. the explorer
    while a notebook cell builds it (the widget is not on screen yet)::

        with TextProgress("Score-CAM", unit="pass") as report:
            score_cam(lm, x, progress=report)
    """

    def __init__(self, desc: str | None = None, unit: str = "it", leave: bool = False) -> None:
        self.desc, self.unit, self.leave = desc, unit, leave
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = _text_bar(total=total, desc=self.desc, unit=self.unit, leave=self.leave)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> TextProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
