r"""The results of a batch evaluation: rows that survive a kill, the merged table, the summary.

**Rows.** Each process appends to its own shard, ``DIR/shards/rank-NNN.jsonl``: one JSON object
per line, one line per image, method and metric (pandas reads it with
``pandas.read_json(path, lines=True)``). The rows of one *unit* (one batch of images explained
by one method, all metrics) are written with one ``write`` and made durable with ``fsync``
before the next unit starts (:class:`ShardWriter`). Every row carries its unit's key and
``unit_rows``, the number of rows its unit has, so a reader knows whether a unit is complete.

**Surviving a kill.** A process killed at any moment (Ctrl-C, ``SIGKILL``, a full disk) leaves
a shard that is a sequence of complete units, possibly followed by part of one unit, possibly
ending in half a line. :func:`read_shard` returns the complete units and the byte offset where
they end; :class:`ShardWriter` cuts its shard back to that offset before it appends, so a torn
row is never part of the table, and ``--resume`` recomputes exactly the units that are missing.

**Merged table and summary.** :func:`write_outputs` merges the shards of all processes into
``results.csv`` (rows ordered by image, method and metric, independent of how many processes
computed them), and writes the paper-style summary: per method and metric the mean over images
with a 95 % percentile-bootstrap interval (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, Sec. 13.3), as ``summary.csv`` and ``summary.md``, and the figures
``curves.png`` (mean deletion and insertion curves) and ``distributions.png`` (per-image
values).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "ShardWriter",
    "SummaryRow",
    "bootstrap_interval",
    "read_results",
    "read_shard",
    "shard_path",
    "summarize",
    "write_outputs",
]

#: The columns of ``results.csv``, in order (the shards add ``curve`` to curve metrics).
COLUMNS = (
    "index",
    "image",
    "method",
    "metric",
    "value",
    "status",
    "reason",
    "target",
    "target_source",
    "label",
    "predicted",
    "batch",
    "unit_rows",
    "seconds",
    "cpu_seconds",
)

SHARDS = "shards"


def shard_path(out: str | Path, rank: int) -> Path:
    """The shard of process ``rank``: ``out/shards/rank-NNN.jsonl``."""
    return Path(out) / SHARDS / f"rank-{rank:03d}.jsonl"


def _unit_key(row: dict[str, Any]) -> tuple[int, str]:
    return int(row["batch"]), str(row["method"])


def read_shard(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of the complete units of a shard and the byte offset where they end.

    Reading stops at the first line that is torn (no newline, or not a JSON object) and drops
    the rows of a unit that has fewer than ``unit_rows`` rows: what follows the returned offset
    is the remains of an interrupted write.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    committed = offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            break  # half a line: the write was cut
        try:
            row = json.loads(data[offset:end])
            key, size = _unit_key(row), int(row["unit_rows"])
        except (ValueError, KeyError, TypeError):
            break
        if pending and _unit_key(pending[0]) != key:
            pending = []  # an incomplete unit followed by another one: never written so
        pending.append(row)
        offset = end + 1
        if len(pending) == size:
            rows.extend(pending)
            pending = []
            committed = offset
    return rows, committed


class ShardWriter:
    """Appends units of rows to one shard: each unit one ``write``, then ``fsync``.

    Opening cuts the shard back to its last complete unit (:func:`read_shard`). A write that
    fails (a full disk) is cut back too, and the error says how to continue.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, committed = read_shard(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, committed)
        os.fsync(self.fd)
        self.offset = committed

    def done_units(self) -> set[tuple[int, str]]:
        """``(batch, method)`` of the complete units in this shard."""
        return {_unit_key(r) for r in self.rows}

    def commit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append one unit; every row must carry ``batch``, ``method`` and ``unit_rows``."""
        if not rows or any(int(r["unit_rows"]) != len(rows) for r in rows):
            raise ValueError(f"a unit of {len(rows)} rows must say unit_rows={len(rows)}")
        data = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows).encode()
        view = memoryview(data)
        try:
            os.lseek(self.fd, self.offset, os.SEEK_SET)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fsync(self.fd)
        except OSError as err:
            try:
                os.ftruncate(self.fd, self.offset)
            except OSError:
                pass  # read_shard drops the torn unit on resume anyway
            raise OSError(
                err.errno,
                f"could not write results to {self.path} ({err.strerror}); free space and "
                "run the same command with --resume",
            ) from err
        self.offset += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and inf are not JSON: write them as null."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, list):
            v = [None if isinstance(u, float) and not math.isfinite(u) else u for u in v]
        out[k] = v
    return out


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The complete rows of every shard in ``out``, one per (image, method, metric), ordered
    by image index, then method and metric in the order of ``out/run.json``."""
    out = Path(out)
    config = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    method_order = {m: i for i, m in enumerate(config.get("methods", []))}
    metric_order = {m: i for i, m in enumerate(config.get("metrics", []))}
    seen: dict[tuple[int, str, str], dict[str, Any]] = {}
    for path in sorted((out / SHARDS).glob("rank-*.jsonl")):
        for row in read_shard(path)[0]:
            seen.setdefault((int(row["index"]), row["method"], row["metric"]), row)
    return sorted(
        seen.values(),
        key=lambda r: (
            int(r["index"]),
            method_order.get(r["method"], len(method_order)),
            r["method"],
            metric_order.get(r["metric"], len(metric_order)),
            r["metric"],
        ),
    )


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    r"""Percentile bootstrap interval of the mean.

    Draw ``resamples`` samples of size :math:`n` with replacement from the values, take each
    sample's mean :math:`\bar v^{*b}`, and return the :math:`(1-\text{level})/2` and
    :math:`(1+\text{level})/2` quantiles of the :math:`\bar v^{*b}` (Efron & Tibshirani 1993,
    Sec. 13.3). Seeded, so the same values give the same interval. One value gives a
    zero-width interval; no value gives NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class SummaryRow:
    """One method and metric over the images: count, mean and 95 % bootstrap interval."""

    method: str
    metric: str
    n: int
    mean: float
    low: float
    high: float
    skipped: int


def summarize(
    rows: Iterable[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]
) -> list[SummaryRow]:
    """Mean and bootstrap interval of every method and metric over the rows with status ``ok``;
    ``skipped`` counts the other rows (unreadable images, images without a box, errors)."""
    values: dict[tuple[str, str], list[float]] = {}
    other: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["method"], r["metric"])
        if r["status"] == "ok" and r["value"] is not None:
            values.setdefault(key, []).append(float(r["value"]))
        else:
            other[key] = other.get(key, 0) + 1
    out = []
    for method in methods:
        for metric in metrics:
            v = values.get((method, metric), [])
            lo, hi = bootstrap_interval(v)
            mean = float(np.mean(v)) if v else math.nan
            out.append(
                SummaryRow(method, metric, len(v), mean, lo, hi, other.get((method, metric), 0))
            )
    return out


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def summary_markdown(
    summary: Sequence[SummaryRow], labels: dict[str, str], metric_info: dict[str, tuple[str, str]]
) -> str:
    """The paper-style table: a row per method, a column per metric, ``mean [low, high]``
    (followed by the number of images where a metric had fewer, e.g. images with a box).

    ``metric_info[metric] = (column title, "lower" or "higher")`` (which is better).
    """
    methods = list(dict.fromkeys(s.method for s in summary))
    metrics = list(dict.fromkeys(s.metric for s in summary))
    arrow = {"lower": "↓", "higher": "↑"}
    head = ["method", "n"] + [f"{metric_info[m][0]} {arrow[metric_info[m][1]]}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(s.method, s.metric): s for s in summary}
    for method in methods:
        n = max(by[(method, m)].n for m in metrics)
        cells = [labels.get(method, method), str(n)]
        for m in metrics:
            s = by[(method, m)]
            cell = f"{_fmt(s.mean)} [{_fmt(s.low)}, {_fmt(s.high)}]" if s.n else "n/a"
            cells.append(cell + (f" (n = {s.n})" if 0 < s.n < n else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    out: str | Path,
    labels: dict[str, str] | None = None,
    metric_info: dict[str, tuple[str, str]] | None = None,
    figures: bool = True,
) -> list[SummaryRow]:
    """Merge the shards of ``out`` into ``results.csv`` and write ``summary.csv``,
    ``summary.md`` and (``figures=True``) ``curves.png`` and ``distributions.png``."""
    out = Path(out)
    config = json.loads((out / "run.json").read_text())
    rows = read_results(out)
    _write_csv(out / "results.csv", COLUMNS, ([r.get(c) for c in COLUMNS] for r in rows))
    methods, metrics = config["methods"], config["metrics"]
    summary = summarize(rows, methods, metrics)
    _write_csv(
        out / "summary.csv",
        ("method", "metric", "n", "mean", "ci_low", "ci_high", "not_ok"),
        ((s.method, s.metric, s.n, s.mean, s.low, s.high, s.skipped) for s in summary),
    )
    info = metric_info or {m: (m, "higher") for m in metrics}
    text = summary_markdown(summary, labels or {}, info)
    skipped = sorted({r["image"] for r in rows if r["status"] == "skipped"})
    note = (
        f"\n{len({r['index'] for r in rows})} images, {len(skipped)} skipped "
        f"(unreadable; reasons in results.csv). Mean over images with a 95 % percentile "
        f"bootstrap interval (2000 resamples). Model {config['model']}, "
        f"{config['steps']} deletion/insertion steps, batch size {config['batch_size']}.\n"
    )
    (out / "summary.md").write_text(text + note)
    if figures:
        _figures(out, rows, summary, methods, metrics, labels or {}, info)
    return summary


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    os.replace(tmp, path)  # a reader never sees half a table


def _figures(
    out: Path,
    rows: list[dict[str, Any]],
    summary: Sequence[SummaryRow],
    methods: Sequence[str],
    metrics: Sequence[str],
    labels: dict[str, str],
    info: dict[str, tuple[str, str]],
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = [m for m in ("deletion", "insertion") if m in metrics]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4.8 * len(curves), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], curves, strict=True):
            for method in methods:
                got = [
                    r["curve"]
                    for r in rows
                    if r["method"] == method
                    and r["metric"] == metric
                    and r["status"] == "ok"
                    and r.get("curve")
                ]
                if not got:
                    continue
                mean = np.mean(np.asarray(got, dtype=np.float64), axis=0)
                frac = np.linspace(0, 1, len(mean))
                auc = float(np.trapezoid(mean, frac))
                ax.plot(frac, mean, label=f"{labels.get(method, method)} ({auc:.3f})")
            better = info.get(metric, (metric, "higher"))[1]
            verb = "removed" if metric == "deletion" else "inserted"
            ax.set(
                title=f"{metric}: mean over images (AUC, {better} is better)",
                xlabel=f"fraction of pixels {verb}",
                ylabel="probability of the target class",
                ylim=(0, None),
            )
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=110)
        plt.close(fig)

    cols = min(3, len(metrics))
    nrows = (len(metrics) + cols - 1) // cols
    width = max(3.6, 0.55 * len(methods) + 1.2)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.6 * nrows), squeeze=False)
    by = {(s.method, s.metric): s for s in summary}
    for k, ax in enumerate(axes.flat):
        if k >= len(metrics):
            ax.set_visible(False)
            continue
        metric = metrics[k]
        for i, m in enumerate(methods):
            data = [
                float(r["value"])
                for r in rows
                if r["method"] == m
                and r["metric"] == metric
                and r["status"] == "ok"
                and r["value"] is not None
            ]
            if not data:
                continue
            spread = np.random.default_rng(i).uniform(-0.2, 0.2, len(data))  # jitter, seeded
            ax.plot(i + spread, data, "o", color="tab:blue", alpha=0.45, ms=4, mew=0)
            s = by[(m, metric)]
            ax.errorbar(
                i + 0.32, s.mean, yerr=[[s.mean - s.low], [s.high - s.mean]], fmt="D",
                color="black", ms=5, capsize=3,
            )  # fmt: skip
        ax.set_xticks(
            range(len(methods)),
            [labels.get(m, m) for m in methods],
            rotation=45,
            ha="right",
            fontsize=9,
        )
        ax.set_xlim(-0.6, len(methods) - 0.4)
        title, better = info.get(metric, (metric, "higher"))
        ax.set_title(f"{title} ({better} is better)", fontsize=10)
    fig.suptitle("per image (blue dots) and mean with 95 % bootstrap interval (black)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "distributions.png", dpi=110)
    plt.close(fig)
