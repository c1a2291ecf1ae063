r"""Evaluation at scale: every method on every image of a folder, as a job that survives a kill.

The comparison notebook measures the methods on a handful of photos; the papers report their
tables over thousands of ImageNet validation images. This module is the same measurement as a
command::

    python -m xai_helpers.evaluate IMAGES --methods grad_cam score_cam --out runs/mine
    python -m xai_helpers.evaluate samples --out runs/samples          # the course's photos
    torchrun --standalone --nproc-per-node 2 -m xai_helpers.evaluate IMAGES --out runs/mine

``IMAGES`` is a folder, searched recursively (:mod:`xai_helpers.evaluate_data`: class
sub-folders or ``--labels CSV`` give the labels; ``--boxes`` a course JSON file or a folder of
ImageNet validation XML files gives the boxes), or ``samples`` for the course's sample photos
with ``data/boxes.json``. Each image is explained for its label, or for its top-1 class when it
has none, by every method of ``--methods`` (names of :data:`xai_helpers.registry.METHODS`), and
every map is scored by every metric of ``--metrics`` (:data:`METRICS`, computed by
:mod:`xai_helpers.metrics`).

How the job is organised:

* Images are cut into batches of ``--batch-size`` in one fixed order; a *unit* is one batch
  explained by one method and scored by all metrics. Its rows (one per image, method and
  metric) are written with one ``write`` and ``fsync`` before the next unit starts
  (:class:`~xai_helpers.evaluate_results.ShardWriter`), so an interrupted run (Ctrl-C, a killed
  process, a full disk) loses at most the unit in progress and ``--resume`` recomputes only the
  units that are missing. A torn last row is cut off, never read.
* An image that cannot be read is recorded as ``skipped`` with its reason (one row per method
  and metric, so the table stays complete) and the run goes on.
* Under ``torchrun`` (``WORLD_SIZE`` processes), process ``r`` takes the batches
  :math:`b \equiv r \pmod{\text{WORLD\_SIZE}}` and writes its own shard; rank 0 waits for the
  others (a gloo barrier) and merges the shards. A batch is computed the same way whichever
  process computes it, so the merged table does not depend on the number of processes.
* Images are loaded by a ``DataLoader`` with ``--workers`` processes; the model runs on the GPU
  when there is one (``cuda:LOCAL_RANK`` under ``torchrun``); a progress bar
  (:mod:`xai_helpers.progress`) shows explanations per second and the time left.

Output in ``--out``: ``run.json`` (the run's settings, checked by ``--resume``),
``shards/rank-NNN.jsonl`` (the rows as computed, with the deletion and insertion curves;
``seconds`` and ``cpu_seconds`` are the wall and CPU time per image of the row's unit,
explanation and metrics),
``results.csv`` (all rows, merged), ``summary.md`` and ``summary.csv`` (mean and 95 % bootstrap
interval per method and metric) and the figures ``curves.png`` and ``distributions.png``
(:mod:`xai_helpers.evaluate_results`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics as M
from .boxes import box_to_input_frame, boxes_to_mask
from .evaluate_data import (
    SAMPLES,
    DataError,
    ImageDataset,
    ImageItem,
    Loaded,
    collate,
    find_images,
    folder_labels,
    match_key,
    read_boxes,
    read_labels_csv,
    sample_items,
)
from .evaluate_results import ShardWriter, read_shard, shard_path, write_outputs
from .explain import explain
from .models import MODEL_NAMES, LoadedModel, load_model
from .progress import progress as progress_bar
from .registry import METHODS, get_method

__all__ = [
    "METRICS",
    "EvaluateConfig",
    "MetricSpec",
    "RunStats",
    "evaluate_batch",
    "main",
    "output_layer",
    "run",
]


@dataclass(frozen=True)
class MetricSpec:
    """A per-image metric of the evaluation.

    Attributes
    ----------
    name:
        The identifier in ``--metrics`` and in the ``metric`` column.
    title:
        The column title of the summary table.
    better:
        ``"lower"`` or ``"higher"``.
    needs_boxes:
        It is computed only for images with a box of the explained class.
    unit:
        What one row's ``value`` is; the mean over rows is the paper's number.
    default:
        Computed when ``--metrics`` is not given. ``sanity`` is not: it explains every image a
        second time, with a randomised copy of the model.
    """

    name: str
    title: str
    better: str
    needs_boxes: bool
    unit: str
    default: bool = True


#: The metrics of :mod:`xai_helpers.metrics` that apply per image, in table order.
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("deletion", "deletion AUC", "lower", False, "area under the deletion curve"),
        MetricSpec("insertion", "insertion AUC", "higher", False, "area under the insertion curve"),
        MetricSpec(
            "average_drop", "Average Drop %", "lower", False, "100 max(0, Y - O) / Y, in percent"
        ),
        MetricSpec("increase", "Increase in Confidence %", "higher", False, "100 if O > Y else 0"),
        MetricSpec("pointing_game", "pointing game", "higher", True, "1 for a hit, 0 for a miss"),
        MetricSpec(
            "energy_pointing_game", "energy pointing game", "higher", True, "share of energy in box"
        ),
        MetricSpec(
            "sanity",
            "sanity: Spearman after randomising the output layer",
            "lower",
            False,
            "Spearman rank correlation of the map with the map of a copy whose output layer is "
            "randomised (Adebayo et al. 2018, the first step of the cascade)",
            default=False,
        ),
    )
}


def output_layer(model: torch.nn.Module) -> str:
    """The name of the model's last module with parameters of its own (``classifier`` for
    EfficientNet-Lite, ``fc`` for ResNet50, ``classifier.6`` for VGG16): the first layer that
    the cascading randomisation test randomises."""
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(False))]
    if not names:
        raise DataError(f"{type(model).__name__} has no layer with parameters to randomise")
    return names[-1]


@dataclass
class EvaluateConfig:
    """The settings of a run; those in :attr:`IDENTITY` must match for ``--resume``."""

    images: str
    out: str
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    metrics: list[str] | None = None
    labels: str = "auto"
    boxes: str | None = None
    steps: int = 50
    batch_size: int = 8
    metric_batch_size: int = 64
    seed: int = 0
    limit: int | None = None
    sample: int | None = None
    resume: bool = False
    workers: int = 0
    device: str | None = None
    progress: bool = True
    figures: bool = True

    IDENTITY = (
        "model",
        "weights",
        "methods",
        "metrics",
        "labels",
        "boxes",
        "steps",
        "batch_size",
        "metric_batch_size",
        "seed",
        "limit",
        "sample",
    )


@dataclass
class RunStats:
    """What one process did: units computed and skipped as already done, images, seconds."""

    rank: int
    world: int
    units_computed: int = 0
    units_done_before: int = 0
    explanations: int = 0
    seconds: float = 0.0
    out: str = ""


# --------------------------------------------------------------------------------------------
# one unit: a batch, one method, every metric
# --------------------------------------------------------------------------------------------


def method_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments for a method in a batch job: no progress bars of its own."""
    return {"progress": False} if get_method(name).reports_progress else {}


def evaluate_batch(
    lm: LoadedModel,
    x: torch.Tensor,
    targets: Sequence[int],
    method: str,
    metrics: Sequence[str],
    masks: Sequence[torch.Tensor | None] | None = None,
    steps: int = 50,
    metric_batch_size: int = 64,
    seed: int = 0,
) -> dict[str, tuple[list[float | None], list[list[float]] | None]]:
    """Explain a batch with one method and score it with every metric.

    The methods are called through :func:`xai_helpers.explain.explain`; the metrics are those
    of :mod:`xai_helpers.metrics` with the baselines of their papers: deletion into the
    dataset-mean colour (RISE's zero tensor), insertion from a blur (:math:`\\sigma = 5`),
    Average Drop and Increase with the positive part of a signed map (the map is a mask there),
    the energy pointing game with the positive part too.

    Parameters
    ----------
    masks:
        Per image, the (H, W) bool mask of the object boxes of its target class, or ``None``
        (no box: localisation metrics give ``None``).

    Returns
    -------
    dict
        ``{metric: (values, curves)}``: one value per image (``None`` where it does not
        apply), and for deletion and insertion the curve of each image.
    """
    record = get_method(method)
    t = torch.as_tensor(list(targets), dtype=torch.long)
    maps = explain(lm, x, method, [int(v) for v in t], **method_kwargs(method)).to(x.device)
    positive = maps.clamp_min(0) if record.signed else maps
    model, n = lm.model, x.shape[0]
    out: dict[str, tuple[list[float | None], list[list[float]] | None]] = {}
    common = {"steps": steps, "batch_size": metric_batch_size, "seed": seed}
    if "deletion" in metrics:
        c = M.deletion(model, x, maps, t, baseline="dataset_mean", **common)
        out["deletion"] = (c.auc.tolist(), c.scores.tolist())
    if "insertion" in metrics:
        c = M.insertion(model, x, maps, t, baseline="blur", **common)
        out["insertion"] = (c.auc.tolist(), c.scores.tolist())
    if "average_drop" in metrics or "increase" in metrics:
        r = M.average_drop_increase(model, x, positive, t, batch_size=metric_batch_size)
        out["average_drop"] = ((100 * r.drop).tolist(), None)
        out["increase"] = ((100 * r.increase.double()).tolist(), None)
    if "sanity" in metrics:  # Adebayo et al.'s first step: the output layer randomised
        random_copy = M.randomize_layers(model, [output_layer(model)], seed=seed)
        loaded = dataclasses.replace(lm, model=random_copy)
        again = explain(loaded, x, method, [int(v) for v in t], **method_kwargs(method))
        out["sanity"] = (M.spearman_rank(maps.cpu(), again.cpu()).tolist(), None)
    if "pointing_game" in metrics or "energy_pointing_game" in metrics:
        masks = list(masks) if masks is not None else [None] * n
        have = [i for i in range(n) if masks[i] is not None]
        hits: list[float | None] = [None] * n
        energy: list[float | None] = [None] * n
        if have:
            stack = torch.stack([masks[i] for i in have])  # type: ignore[misc]
            h = M.pointing_game(maps[have].cpu(), stack)
            e = M.energy_pointing_game(positive[have].cpu(), stack)
            for j, i in enumerate(have):
                hits[i], energy[i] = float(h[j]), float(e[j])
        out["pointing_game"] = (hits, None)
        out["energy_pointing_game"] = (energy, None)
    return {m: out[m] for m in metrics}


def _object_mask(
    item: ImageItem, target: int, size: tuple[int, int], lm: LoadedModel
) -> torch.Tensor | None:
    if not item.boxes:
        return None
    chosen = [o.box for o in item.boxes if not o.classes or target in o.classes]
    if not chosen:
        return None
    resize, crop = int(lm.resize or lm.input_size), int(lm.input_size)
    mapped = [box_to_input_frame(b, size, resize, crop) for b in chosen]
    mask = boxes_to_mask([mapped], (crop, crop))[0]
    return mask if bool(mask.any()) else None


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _items(config: EvaluateConfig, lm: LoadedModel) -> tuple[list[ImageItem], str | None]:
    boxes_source = config.boxes
    if config.images == SAMPLES:
        root, default_boxes = sample_items()
        boxes_source = boxes_source or str(default_boxes)
    else:
        root = Path(config.images)
    paths = find_images(root)
    if config.sample is not None and config.sample < len(paths):
        chosen = random.Random(config.seed).sample(range(len(paths)), config.sample)
        paths = [paths[i] for i in sorted(chosen)]
    if config.limit is not None:
        paths = paths[: config.limit]
    names = lm.class_names
    boxes = read_boxes(boxes_source, names) if boxes_source else {}
    if config.labels in ("none", "boxes"):
        labels: dict[str, int] = {}
    elif config.labels == "auto":
        labels = folder_labels(root, paths, names) or {}
    else:
        table = read_labels_csv(config.labels, names)
        labels = {}
        for p in paths:
            key = p.relative_to(root).as_posix()
            found = match_key(key, table)
            if found is not None:
                labels[key] = found
    items = []
    for i, p in enumerate(paths):
        key = p.relative_to(root).as_posix()
        objects = match_key(key, boxes)
        label = labels.get(key)
        if config.labels == "boxes" and objects:
            named = {c for o in objects for c in o.classes}
            label = named.pop() if len(named) == 1 else None  # ImageNet: one class per image
        items.append(ImageItem(i, p, key, label, objects))
    return items, boxes_source


def _fingerprint(items: Sequence[ImageItem]) -> str:
    digest = hashlib.sha256()
    for it in items:
        digest.update(f"{it.key}\t{it.label}\t{it.boxes}\n".encode())
    return digest.hexdigest()


def _settings(config: EvaluateConfig, items: Sequence[ImageItem]) -> dict[str, Any]:
    settings = {k: getattr(config, k) for k in EvaluateConfig.IDENTITY}
    settings["images"] = (
        config.images if config.images == SAMPLES else str(Path(config.images).resolve())
    )
    settings["n_images"] = len(items)
    settings["fingerprint"] = _fingerprint(items)
    return settings


def _prepare_out(config: EvaluateConfig, settings: dict[str, Any], rank: int, world: int) -> None:
    out = Path(config.out)
    run_json = out / "run.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if run_json.is_file():
            old = json.loads(run_json.read_text())
            if not config.resume:
                raise DataError(
                    f"{out} already holds a run; pass --resume to continue it, or choose "
                    "another --out"
                )
            differ = [k for k in settings if old.get(k) != settings[k]]
            if differ:
                raise DataError(
                    f"--resume with other settings than the run in {out}: "
                    + ", ".join(f"{k} was {old.get(k)!r}, now {settings[k]!r}" for k in differ)
                )
        else:
            tmp = run_json.with_suffix(".tmp")
            tmp.write_text(json.dumps(settings, indent=1) + "\n")
            os.replace(tmp, run_json)
    _barrier(world)
    if rank != 0 and json.loads(run_json.read_text()) != settings:
        raise DataError(f"process {rank} sees other images or settings than process 0")


def _targets(
    lm: LoadedModel, x: torch.Tensor, labels: Sequence[int | None]
) -> tuple[list[int], list[int]]:
    with torch.no_grad():
        predicted = lm.model(x).argmax(1).tolist()
    return [
        p if lab is None else int(lab) for lab, p in zip(labels, predicted, strict=True)
    ], predicted


def run(config: EvaluateConfig, lm: LoadedModel | None = None) -> RunStats:
    """Run (or resume) the evaluation described by ``config`` in this process.

    Under ``torchrun`` the process group is set up here (gloo) and torn down at the end. Returns
    what this process did; rank 0 has written the merged table and the summary. ``lm``: a model
    already loaded (it must be ``config.model`` with ``config.weights``), else it is loaded here.
    """
    rank, world, local = _distributed()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    try:
        return _run(config, rank, world, local, lm)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(
    config: EvaluateConfig, rank: int, world: int, local: int, lm: LoadedModel | None
) -> RunStats:
    for name in config.methods:
        get_method(name)  # an unknown name fails before any work
    unknown = [m for m in config.metrics or [] if m not in METRICS]
    if unknown:
        raise DataError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    if config.steps < 1 or config.batch_size < 1:
        raise DataError("--steps and --batch-size must be at least 1")
    if config.images != SAMPLES and not Path(config.images).is_dir():
        raise DataError(f"image folder {config.images} does not exist or is not a folder")
    if rank == 0 and (Path(config.out) / "run.json").is_file() and not config.resume:
        raise DataError(
            f"{config.out} already holds a run; pass --resume to continue it, or choose "
            "another --out"
        )
    if lm is None:
        device = config.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        weights = None if config.weights == "random" else "imagenet"
        lm = load_model(config.model, device=device, weights=weights)
    items, boxes_source = _items(config, lm)
    if config.metrics is None:
        with_boxes = any(it.boxes for it in items)
        config.metrics = [
            m for m, s in METRICS.items() if s.default and (with_boxes or not s.needs_boxes)
        ]
    config.boxes = boxes_source
    settings = _settings(config, items)
    _prepare_out(config, settings, rank, world)

    stats = RunStats(rank, world, out=config.out)
    writer = ShardWriter(shard_path(config.out, rank))
    done = writer.done_units()
    for path in sorted(shard_path(config.out, 0).parent.glob("rank-*.jsonl")):
        if path != writer.path:
            done |= {(int(r["batch"]), r["method"]) for r in read_shard(path)[0]}
    bs = config.batch_size
    n_batches = (len(items) + bs - 1) // bs
    mine = [b for b in range(n_batches) if b % world == rank]
    todo = {b: [m for m in config.methods if (b, m) not in done] for b in mine}
    stats.units_done_before = sum(len(config.methods) - len(v) for v in todo.values())
    pending = [b for b in mine if todo[b]]
    total = sum(len(todo[b]) * len(items[b * bs : (b + 1) * bs]) for b in pending)

    loader = torch.utils.data.DataLoader(
        ImageDataset(items, lm.transform),
        batch_sampler=[list(range(b * bs, min((b + 1) * bs, len(items)))) for b in pending],
        collate_fn=collate,
        num_workers=config.workers,
    )
    bar = progress_bar(
        total=total,
        desc=f"evaluate (rank {rank}/{world})" if world > 1 else "evaluate",
        unit="expl",
        disable=not config.progress or rank != 0,
    )
    start = time.perf_counter()
    try:
        for b, batch in zip(pending, loader, strict=True):
            for method in todo[b]:
                writer.commit(_unit(config, lm, items, b, batch, method))
                stats.units_computed += 1
                stats.explanations += sum(it.x is not None for it in batch)
                bar.update(len(batch))
    finally:
        bar.close()
        writer.close()
    stats.seconds = time.perf_counter() - start
    _barrier(world)
    if rank == 0:
        labels = {m: get_method(m).label for m in config.methods}
        info = {m: (METRICS[m].title, METRICS[m].better) for m in config.metrics}
        write_outputs(config.out, labels, info, figures=config.figures)
    return stats


def _unit(
    config: EvaluateConfig,
    lm: LoadedModel,
    items: Sequence[ImageItem],
    b: int,
    batch: Sequence[Loaded],
    method: str,
) -> list[dict[str, Any]]:
    metrics = list(config.metrics or [])
    ok = [it for it in batch if it.x is not None]
    base = {"batch": b, "method": method, "unit_rows": len(batch) * len(metrics)}
    results: dict[str, tuple[list[Any], Any]] = {}
    per_image: dict[int, dict[str, Any]] = {}
    error = ""
    seconds = cpu_seconds = None
    if ok:
        x = torch.stack([it.x for it in ok]).to(lm.device)  # type: ignore[misc]
        labels = [items[it.index].label for it in ok]
        targets, predicted = _targets(lm, x, labels)
        masks = [
            _object_mask(items[it.index], t, it.size, lm)  # type: ignore[arg-type]
            for it, t in zip(ok, targets, strict=True)
        ]
        start, cpu = time.perf_counter(), time.process_time()
        try:
            results = evaluate_batch(
                lm,
                x,
                targets,
                method,
                metrics,
                masks,
                config.steps,
                config.metric_batch_size,
                config.seed,
            )
        except (ValueError, RuntimeError) as err:  # a method or metric that fails on this batch
            error = f"{type(err).__name__}: {' '.join(str(err).split())}"
        seconds = (time.perf_counter() - start) / len(ok)
        cpu_seconds = (time.process_time() - cpu) / len(ok)
        for j, it in enumerate(ok):
            per_image[it.index] = {
                "j": j,
                "target": targets[j],
                "target_source": "top1" if labels[j] is None else "label",
                "predicted": predicted[j],
            }
    rows = []
    for it in batch:
        item = items[it.index]
        info = per_image.get(it.index)
        for metric in metrics:
            row = {
                "index": it.index,
                "image": item.key,
                "metric": metric,
                "value": None,
                "status": "ok",
                "reason": "",
                "target": None,
                "target_source": None,
                "label": item.label,
                "predicted": None,
                **base,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
            }
            if info is None:
                row.update(status="skipped", reason=it.reason, seconds=None, cpu_seconds=None)
            else:
                row.update(
                    target=info["target"],
                    target_source=info["target_source"],
                    predicted=info["predicted"],
                )
                if error:
                    row.update(status="error", reason=error)
                else:
                    values, curves = results[metric]
                    value = values[info["j"]]
                    if value is None:
                        row.update(status="no_box", reason="no box of the target class")
                    else:
                        row["value"] = float(value)
                    if curves is not None:
                        row["curve"] = [round(float(v), 7) for v in curves[info["j"]]]
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _names(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for value in values for v in value.replace(",", " ").split() if v]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m xai_helpers.evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m xai_helpers.evaluate",
        description=(
            "Explain every image of a folder with the course's methods and score the maps; "
            "resumable, and sharded across processes under torchrun."
        ),
    )
    p.add_argument(
        "images", help=f"folder of images (recursive), or '{SAMPLES}' for the course's photos"
    )
    p.add_argument("--out", required=True, help="output folder (results.csv, summary.md, ...)")
    p.add_argument("--model", default="efficientnet_lite0", choices=MODEL_NAMES)
    p.add_argument(
        "--weights",
        default="imagenet",
        choices=("imagenet", "random"),
        help="random: untrained weights, for trying the pipeline only",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"method names, space or comma separated (default: all: {', '.join(METHODS)})",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help=(
            f"metric names (default: all that apply except sanity, which explains every image "
            f"twice; {', '.join(METRICS)})"
        ),
    )
    p.add_argument(
        "--labels",
        default="auto",
        help=(
            "auto (class sub-folders), none (explain the top-1 class), boxes (the class the "
            "image's boxes name, as in ImageNet's validation XML files), or a CSV file "
            "image,label"
        ),
    )
    p.add_argument(
        "--boxes", default=None, help="course JSON boxes file, or a folder of ImageNet XML files"
    )
    p.add_argument("--steps", type=int, default=50, help="deletion/insertion steps K (default 50)")
    p.add_argument("--batch-size", type=int, default=8, help="images per unit of work (default 8)")
    p.add_argument(
        "--metric-batch-size", type=int, default=64, help="images per forward pass in the metrics"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the tie-breaking in the curves and of --sample"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images (to try a run)")
    p.add_argument(
        "--sample", type=int, default=None, help="a random subset of N images (drawn with --seed)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU if any)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figures", action="store_true", help="no PNG figures")
    p.add_argument(
        "--summary-only", action="store_true", help="only merge the shards in --out and summarise"
    )
    return p


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The :class:`EvaluateConfig` of parsed command-line arguments."""
    workers = args.workers
    if workers is None:
        workers = min(
            4, max(0, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)
        )
    return EvaluateConfig(
        images=args.images,
        out=args.out,
        model=args.model,
        weights=args.weights,
        methods=_names(args.methods) or list(METHODS),
        metrics=_names(args.metrics),
        labels=args.labels,
        boxes=args.boxes,
        steps=args.steps,
        batch_size=args.batch_size,
        metric_batch_size=args.metric_batch_size,
        seed=args.seed,
        limit=args.limit,
        sample=args.sample,
        resume=args.resume,
        workers=workers,
        device=args.device,
        progress=not args.no_progress,
        figures=not args.no_figures,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; errors in the input are one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        if args.summary_only:
            settings = json.loads((Path(config.out) / "run.json").read_text())
            labels = {m: get_method(m).label for m in settings["methods"] if m in METHODS}
            info = {m: (METRICS[m].title, METRICS[m].better) for m in settings["metrics"]}
            write_outputs(config.out, labels, info, figures=config.figures)
            print((Path(config.out) / "summary.md").read_text())
            return 0
        stats = run(config)
    except (ValueError, FileNotFoundError) as err:  # DataError, ModelError, UnknownMethodError
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    rate = stats.explanations / stats.seconds if stats.seconds > 0 else float("nan")
    print(
        f"rank {stats.rank} of {stats.world}: {stats.units_computed} units computed "
        f"({stats.units_done_before} done before), {stats.explanations} explanations in "
        f"{stats.seconds:.1f} s ({rate:.2f} explanations/s)",
        flush=True,
    )
    if stats.rank == 0:
        print((Path(config.out) / "summary.md").read_text())
        print(f"results: {Path(config.out) / 'results.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
