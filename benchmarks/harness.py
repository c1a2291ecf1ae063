"""Measurement for ``bench_methods.py``: interleaved timing, peak memory, map agreement, machine.

Every contender of a group (our method, the references, the bare model) is called once first:
that call warms up and measures peak memory with :func:`xai_helpers.metrics.measure_cost` (on the
CPU the peak resident set size above its level at the start, sampled every millisecond, after
``gc.collect()`` and ``malloc_trim(0)`` have returned freed memory to the system, so the level
at the start is the live data; on CUDA the peak allocation). Then the timed calls run in rounds,
one call of every contender per round, the order rotated from round to round, so that a load
change on a shared machine hits all contenders alike; ratios are medians of the per-round
ratios (:func:`time_ratio`). Each contender gets about ``budget_s`` seconds of timed calls
(judged by its first call), at least one and at most ``repeats``. For a contender whose first
call took under ``memory_again_s``, a last untimed call measures the memory again and the smaller
peak is kept (on the CPU a call now and then touches twice the pages; the peak of a deterministic
computation is the smaller figure). A contender whose first call took longer than ``slow_s`` is
not called again: that call is its single timed run (with the memory sampler on, which costs
about 1 % of a core) and its one memory measurement.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from xai_helpers.metrics import measure_cost

__all__ = [
    "Contender",
    "Measurement",
    "agreement",
    "as_maps",
    "constant_maps",
    "machine_line",
    "run_group",
    "time_ratio",
]


@dataclass
class Contender:
    """One way of computing an explanation: ``fn()`` returns its (N, H, W) map, or ``None``."""

    library: str
    fn: Callable[[], object]
    model: nn.Module  # whose forward calls measure_cost counts


@dataclass
class Measurement:
    """Wall times by round (-1: the first call, when it is the only timed run), peak extra
    memory of the first call, the images its forward passes carried, and its output."""

    library: str
    times: dict[int, float] = field(default_factory=dict)
    peak_mib: float = float("nan")
    forward_images: int = 0
    output: object = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times.values())


def time_ratio(a: Measurement, b: Measurement) -> float:
    """``a`` / ``b``: the median of the per-round ratios where both ran in the same rounds
    (paired, so that a load change between rounds cancels), else the ratio of the medians."""
    common = sorted(set(a.times) & set(b.times) - {-1})
    if common:
        return statistics.median(a.times[r] / b.times[r] for r in common)
    return a.seconds / b.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS baselines are then less reliable
    _LIBC = None


def _settle(models: list[nn.Module]) -> None:
    """Drop garbage and stale ``.grad`` buffers; give freed heap pages back to the system."""
    for model in models:
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward writes them
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def run_group(
    contenders: list[Contender],
    device: torch.device,
    repeats: int,
    budget_s: float,
    slow_s: float,
    memory_again_s: float = 2.0,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Measurement]:
    """Measure every contender: first call (warm-up and memory), interleaved timed calls, a last
    call for memory.

    Timed calls per contender: ``budget_s`` / (its first call), between 1 and ``repeats``; none
    when the first call took over ``slow_s`` (it is then the one timed run).
    """
    models = list({id(c.model): c.model for c in contenders}.values())
    results: dict[str, Measurement] = {}
    runs: dict[str, int] = {}
    for c in contenders:
        _settle(models)
        _sync(device)
        start = time.perf_counter()
        out, cost = measure_cost(c.fn, c.model, device)
        _sync(device)
        first = time.perf_counter() - start
        m = Measurement(c.library, {}, cost.peak_memory_mib, cost.forward_images, out)
        if first > slow_s:
            m.times[-1] = first
            runs[c.library] = 0
        else:
            runs[c.library] = min(repeats, max(1, math.floor(budget_s / first)))
        results[c.library] = m
        more = f", then {runs[c.library]} timed" if runs[c.library] else " (the one timed run)"
        log(f"    {c.library:<34} first call {first:8.3f} s, {cost.peak_memory_mib:7.1f} MiB{more}")
    _settle(models)
    for r in range(max(runs.values(), default=0)):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            if r < runs[c.library]:
                seconds, _ = _timed(c.fn, device)
                results[c.library].times[r] = seconds
    for c in contenders:
        m = results[c.library]
        if runs[c.library] and m.times and statistics.median(m.times.values()) < memory_again_s:
            _settle(models)
            _, cost = measure_cost(c.fn, c.model, device)
            m.peak_mib = min(m.peak_mib, cost.peak_memory_mib)
    return results


# ----------------------------------------------------------------------------------------------
# agreement of two maps
# ----------------------------------------------------------------------------------------------


def as_maps(a: object) -> np.ndarray:
    """(N, H, W) float64 array from a tensor or array of shape (N, H, W) or (H, W)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.reshape((-1, *a.shape[-2:])).astype(np.float64)


def agreement(ours: object, theirs: object, relative: bool = False) -> tuple[float, float]:
    """Largest absolute difference (divided by max |theirs| when ``relative``) and the smallest
    per-image Pearson correlation of the two batches of maps (NaN for a constant map)."""
    a, b = as_maps(ours), as_maps(theirs)
    diff = float(np.abs(a - b).max())
    if relative:
        diff /= max(float(np.abs(b).max()), 1e-300)
    corr = [
        float(np.corrcoef(x, y)[0, 1])
        for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)
        if x.std() > 0 and y.std() > 0
    ]
    return diff, min(corr) if corr else float("nan")


def constant_maps(maps: object) -> int:
    """How many maps of the batch are constant (e.g. all zero after the ReLU)."""
    a = as_maps(maps)
    return int(sum(float(m.max() - m.min()) == 0.0 for m in a))


# ----------------------------------------------------------------------------------------------
# the machine
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device | None = None) -> str:
    """CPU model, cores, torch threads, torch version, GPU if any, date."""
    parts = [
        f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return ", ".join(parts)
