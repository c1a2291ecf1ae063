"""Throughput of the batch evaluation: images per second per method, 1 and 2 processes.

    python benchmarks/bench_evaluate.py                      # CPU: 1 process, then torchrun x 2
    python benchmarks/bench_evaluate.py --methods cam grad_cam score_cam --images 16
    python benchmarks/bench_evaluate.py --device cuda --procs 1   # on a GPU

Makes a folder of ``--images`` distinct images from the sample photos (mirrored and shifted
crops), runs ``python -m xai_helpers.evaluate`` on it once per process count (1: one process
with ``--threads`` torch threads, default 1; 2: ``torchrun --nproc-per-node 2``, one thread
each, as torchrun sets ``OMP_NUM_THREADS=1``), and reports per method the images per second of
the whole evaluation (explanation and every metric, from the per-unit times in the results) and
the scaling efficiency :math:`E = r_2 / (2 r_1)` of the rates :math:`r_p` with :math:`p`
processes. The rate of a sharded run is the images divided by the slowest process's time for
that method. The merged tables of the runs are compared: with the same number of threads per
process they are identical; with another number, float sums split differently may change the
last bits of a map, which can reorder nearly tied pixels in a deletion curve.

Writes ``benchmarks/results/evaluate.md`` (with the machine and its load average) and prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from xai_helpers.images import SAMPLE_NAMES, sample_path  # noqa: E402
from xai_helpers.registry import get_method  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_images(folder: Path, n: int) -> None:
    """``n`` distinct images: the photos, mirrored, then crops shifted by 16 px steps."""
    photos = [Image.open(sample_path(name)).convert("RGB") for name in SAMPLE_NAMES]
    for i in range(n):
        image = photos[i % len(photos)]
        variant = i // len(photos)
        if variant % 2:
            image = ImageOps.mirror(image)
        shift = 16 * (variant // 2)
        if shift:
            w, h = image.size
            image = image.crop((shift, shift, w, h))
        image.save(folder / f"img_{i:03d}.png")


def run_once(folder: Path, out: Path, procs: int, args: argparse.Namespace) -> tuple[float, str]:
    common = [
        str(folder), "--out", str(out), "--methods", *args.methods, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--no-progress",
        "--no-figures", "--labels", "none",
    ]  # fmt: skip
    if args.device:
        common += ["--device", args.device]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if procs == 1:
        env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, "-m", "xai_helpers.evaluate", *common]
    else:
        env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(procs), "-m", "xai_helpers.evaluate", *common,
        ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def loop_seconds(stdout: str) -> float:
    """The slowest process's time in its evaluation loop (the ``rank r of w`` lines)."""
    times = [float(t) for t in re.findall(r"explanations in ([\d.]+) s", stdout)]
    return max(times)


def method_rates(out: Path) -> dict[str, tuple[int, float, float]]:
    """Per method: images evaluated, the slowest process's wall seconds for them, and the CPU
    seconds of all processes for them."""
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    shard_of = {}
    for rank_file in sorted((out / "shards").glob("rank-*.jsonl")):
        rank = int(rank_file.stem.split("-")[1])
        for line in rank_file.read_text().splitlines():
            r = json.loads(line)
            shard_of[(int(r["batch"]), r["method"])] = rank
    seconds: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    cpu: dict[str, float] = defaultdict(float)
    images: dict[str, set[int]] = defaultdict(set)
    seen = set()
    for r in rows:
        if r["status"] not in ("ok", "no_box") or not r["seconds"]:
            continue
        key = (r["image"], r["method"])
        if key in seen:
            continue  # one row per image and method carries the unit's time per image
        seen.add(key)
        rank = shard_of[(int(r["batch"]), r["method"])]
        seconds[r["method"]][rank] += float(r["seconds"])
        cpu[r["method"]] += float(r["cpu_seconds"])
        images[r["method"]].add(int(r["index"]))
    return {m: (len(images[m]), max(seconds[m].values()), cpu[m]) for m in seconds}


def table_difference(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two tables agree in every column but ``value`` and the times, and the largest
    difference of their values (the process counts run different numbers of threads, and a
    float sum split over other threads may differ in its last bits)."""

    def read(p: Path) -> list[dict[str, str]]:
        with (p / "results.csv").open() as f:
            return list(csv.DictReader(f))

    ra, rb = read(a), read(b)
    skip = ("value", "seconds", "cpu_seconds")
    same = len(ra) == len(rb) and all(
        {k: v for k, v in x.items() if k not in skip}
        == {k: v for k, v in y.items() if k not in skip}
        for x, y in zip(ra, rb, strict=False)
    )
    diffs = [
        abs(float(x["value"]) - float(y["value"]))
        for x, y in zip(ra, rb, strict=False)
        if x["value"] and y["value"]
    ]
    return same, max(diffs, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=["cam", "grad_cam", "grad_cam_pp", "lrp"])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the 1-process run (default 1, as each process under torchrun)",
    )  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--output", type=Path, default=RESULTS / "evaluate.md")
    args = p.parse_args()
    for m in args.methods:
        get_method(m)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images)
        for procs in args.procs:
            out = Path(tmp) / f"out{procs}"
            wall, stdout = run_once(folder, out, procs, args)
            results[procs] = (wall, loop_seconds(stdout), method_rates(out))
            print(f"{procs} process(es): {wall:.1f} s wall, loop {results[procs][1]:.1f} s")
        compared = [
            table_difference(Path(tmp) / f"out{args.procs[0]}", Path(tmp) / f"out{q}")
            for q in args.procs[1:]
        ]
    load_after = os.getloadavg()

    lines = [
        "# Benchmark: batch evaluation throughput",
        "",
        f"Machine: {machine_line(device)}. Device: {device}. Load average (1 min) before/after: "
        f"{load_before[0]:.1f}/{load_after[0]:.1f} on {os.cpu_count()} cores.",
        "",
        f"{args.images} images, methods {', '.join(args.methods)}, every per-image metric, "
        f"K = {args.steps} deletion/insertion steps, batch size {args.batch_size}, "
        f"{args.workers} loader workers. Images/s: the whole evaluation of an image by one method "
        "(explanation and all metrics); p processes: the images over the slowest process's "
        "time; images per CPU-second: the images over the CPU time of their units in the "
        f"{args.procs[0]}-process run. Efficiency: r_p / (p r_1). Every process runs "
        f"{args.threads} torch thread(s) "
        "(torchrun sets OMP_NUM_THREADS=1).",
        "",
        "| method | "
        + " | ".join(f"{q} proc images/s" for q in args.procs)
        + "".join(f" | efficiency {q} proc" for q in args.procs[1:])
        + " | images per CPU-second |",
        "|---|" + "---:|" * (2 * len(args.procs)),
    ]
    first = args.procs[0]
    for m in args.methods:
        rates = {q: results[q][2][m][0] / results[q][2][m][1] for q in args.procs}
        cells = [f"{rates[q]:.2f}" for q in args.procs]
        cells += [f"{rates[q] / (q / first * rates[first]):.2f}" for q in args.procs[1:]]
        cells.append(f"{results[first][2][m][0] / results[first][2][m][2]:.2f}")
        lines.append(f"| {get_method(m).label} | " + " | ".join(cells) + " |")
    total_expl = args.images * len(args.methods)
    lines.append("")
    for q in args.procs:
        wall, loop, _ = results[q]
        lines.append(
            f"- {q} process(es): {total_expl / loop:.2f} explanations/s in the loop "
            f"({loop:.1f} s, slowest process), {wall:.1f} s wall including start-up and merge"
        )
    if len(args.procs) > 1:
        q = args.procs[1]
        eff = (results[first][1] / results[q][1]) / (q / first)
        lines.append(f"- scaling efficiency of the whole loop, {first} -> {q} processes: {eff:.2f}")
        work = sum(v[2] for v in results[first][2].values())
        work_q = sum(v[2] for v in results[q][2].values())
        lines.append(
            f"- CPU time of all units: {work:.1f} s with {first}, {work_q:.1f} s with {q} "
            f"processes (work efficiency {work / work_q:.2f}: what sharding adds to the work, "
            "whatever else the machine runs)"
        )
        same, diff = compared[0]
        lines.append(
            f"- merged {q}-process table against the {first}-process table: same rows, images, "
            f"targets and statuses: {same}; largest difference of a value: {diff:.1e}"
        )
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
