"""Long computations behind a widget: one at a time, on a worker thread, cancellable.

Why a thread: a widget's callbacks run on the kernel's main thread, which also receives every
click. A 15-second Score-CAM run inside a callback would hold the clicks (the Cancel button
included) until it ends. Here the callback only *submits* a :class:`Job`; a worker thread runs
it while the kernel stays free for clicks and for the student's next cell.

Why it can stop: a job is cancelled by setting a flag, and the computation notices it in its
progress callback (:meth:`Job.report` raises :class:`Cancelled`), so a Score-CAM run stops after
the current batch of masked images, and its context managers remove their hooks on the way out
(``finally``). A method that reports no progress runs to its end; its result is then dropped.

Rules the widgets follow (see :mod:`xai_helpers.widgets`): only one job runs at a time and a
new one cancels the one before ("the latest choice wins"); the worker touches only output
widgets, under the widget's lock, and only while its job is still the current one.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Cancelled", "Job", "Runner"]


class Cancelled(Exception):
    """Raised inside a computation, from its progress callback, when its job was cancelled."""


class Job:
    """One computation: ``work(job)`` with its progress and a cancel flag.

    Attributes
    ----------
    label:
        What it computes, for the busy state (``"Score-CAM of 'tabby' on chelsea"``).
    done, total:
        Progress reported so far (``total == 0``: the computation reports none).
    started, finished:
        ``time.perf_counter()`` when it started and ended (``None`` before).
    payload:
        What the job computes, for its owner (the explorer's choice).
    """

    def __init__(self, label: str, work: Callable[[Job], Any], payload: Any = None) -> None:
        self.label = label
        self.work = work
        self.payload = payload
        self.done = self.total = 0
        self.started: float | None = None
        self.finished: float | None = None
        self._cancel = threading.Event()
        self._ended = threading.Event()
        self.on_progress: Callable[[Job], None] | None = None

    def cancel(self) -> None:
        """Ask the computation to stop at its next progress report."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.started is not None and not self._ended.is_set()

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled (call it between steps)."""
        if self._cancel.is_set():
            raise Cancelled(self.label)

    def report(self, done: int, total: int) -> None:
        """A :data:`xai_helpers.progress.ProgressFn`: record progress, stop if cancelled."""
        self.check()
        self.done, self.total = int(done), int(total)
        if self.on_progress is not None:
            self.on_progress(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ended (done, failed or cancelled); ``False`` on timeout."""
        return self._ended.wait(timeout)

    def _start(self) -> None:
        self.started = time.perf_counter()

    def _end(self) -> None:
        self.finished = time.perf_counter()
        self._ended.set()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "running" if self.running else "idle"
        return f"Job({self.label!r}, {state}, {self.done}/{self.total})"


Callback = Callable[[Job, Any], None]


class Runner:
    """Run jobs one at a time, on a worker thread (``background=True``) or in the caller.

    :meth:`submit` cancels the job before (running or waiting) and queues the new one; the
    worker calls ``on_done(job, result)`` or ``on_error(job, exception)`` when it ends, but
    nothing for a cancelled job. While a job runs, ``on_tick(job)`` is called every
    ``tick`` seconds from a second thread (an elapsed-time display for methods that report no
    progress). Threads are daemons: an abandoned job never blocks the kernel from exiting.
    """

    def __init__(
        self,
        background: bool = True,
        on_tick: Callable[[Job], None] | None = None,
        tick: float = 1.0,
    ) -> None:
        self.background = background
        self.on_tick = on_tick
        self.tick = tick
        self._queue: queue.Queue[tuple[Job, Callback, Callback]] = queue.Queue()
        self._latest: Job | None = None
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0
        _RUNNERS.add(self)

    @property
    def current(self) -> Job | None:
        """The latest job submitted, while it has not ended."""
        job = self._latest
        return job if job is not None and not job._ended.is_set() else None

    @property
    def busy(self) -> bool:
        """A job (perhaps a cancelled one that has not noticed yet) is running or queued."""
        with self._idle:
            return self._pending > 0

    def submit(self, job: Job, on_done: Callback, on_error: Callback) -> Job:
        """Cancel the previous job and run ``job`` (now, if not in the background)."""
        previous, self._latest = self._latest, job
        if previous is not None:
            previous.cancel()
        with self._idle:
            self._pending += 1
        if not self.background:
            self._run(job, on_done, on_error)
            return job
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="xai-explorer", daemon=True)
            self._thread.start()
        self._queue.put((job, on_done, on_error))
        return job

    def cancel(self) -> Job | None:
        """Cancel the current job; return it (``None`` if there was none)."""
        job = self.current
        if job is not None:
            job.cancel()
        return job

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            self._run(*self._queue.get())

    def _run(self, job: Job, on_done: Callback, on_error: Callback) -> None:
        try:
            if job.cancelled:
                return
            job._start()
            if self.background and self.on_tick is not None:
                threading.Thread(target=self._ticks, args=(job,), daemon=True).start()
            try:
                result = job.work(job)
                job.check()  # cancelled during a step that reports no progress: drop it
            except Cancelled:
                return
            except Exception as err:  # reported to the widget, never raised into the kernel
                _safely(on_error, job, err)
                return
            _safely(on_done, job, result)
        finally:
            job._end()
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _ticks(self, job: Job) -> None:
        while not job._ended.wait(self.tick):
            if self.on_tick is not None:
                _safely(self.on_tick, job)


_RUNNERS: weakref.WeakSet[Runner] = weakref.WeakSet()


@atexit.register
def _stop_all(timeout: float = 5.0) -> None:
    """At exit (a kernel shutting down), cancel the running jobs and give them a moment to stop:
    a daemon thread killed inside a torch kernel aborts the process ("terminate called")."""
    runners = list(_RUNNERS)
    for runner in runners:
        runner.cancel()
    deadline = time.monotonic() + timeout
    for runner in runners:
        runner.wait(max(0.0, deadline - time.monotonic()))


def _safely(callback: Callable[..., None], *args: Any) -> None:
    """Call a widget callback from a worker thread; an error in it must not kill the thread."""
    try:
        callback(*args)
    except Exception as err:  # pragma: no cover - a bug in a callback; say so, keep running
        import sys
        import traceback

        print(f"explorer callback failed: {err!r}", file=sys.stderr)
        traceback.print_exc()
