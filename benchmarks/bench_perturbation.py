"""Benchmark of the perturbation family (occlusion, RISE) against captum and the physical floor.

Occlusion and RISE are forward passes on masked copies, so two comparisons matter:

* **captum's** ``Occlusion`` with the same patch, stride, baseline and batch of copies
  (``perturbations_per_eval``), for one image and for one image explained for two classes (we
  score every class in each pass and share the passes; captum runs them once per class);
* **the bare model's throughput**: the same number of images through ``model(...)`` in batches
  of the same size, with no masks built and nothing accumulated. No implementation of a
  perturbation method can beat it; our time divided by it is the overhead of everything else.

Timing, interleaving, memory and agreement come from :mod:`harness` (the same rules as
``bench_methods.py``). The CAM variants (XGrad-CAM, LayerCAM, Eigen-CAM, Ablation-CAM) are in the
registry, so ``bench_methods.py`` measures them against pytorch-grad-cam.

Usage::

    python benchmarks/bench_perturbation.py    # Lite0, CPU: writes results/perturbation.md
    python benchmarks/bench_perturbation.py --masks 1000 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Contender, Measurement, agreement, machine_line, run_group, time_ratio  # noqa: E402

from xai_helpers.images import sample_path  # noqa: E402
from xai_helpers.models import LoadedModel, load_model  # noqa: E402
from xai_helpers.occlusion import occlusion, occlusion_positions, rise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = "model alone (same images)"


def floor(lm: LoadedModel, x: torch.Tensor, images: int, batch_size: int) -> Contender:
    """``images`` copies of ``x[0]`` through the model, ``batch_size`` at a time, no masks."""

    def run() -> None:
        with torch.no_grad():
            for start in range(0, images, batch_size):
                b = min(batch_size, images - start)
                lm.model(x[:1].expand(b, -1, -1, -1).contiguous(memory_format=torch.channels_last))

    return Contender(FLOOR, run, lm.model)


def captum_occlusion(
    lm: LoadedModel, x: torch.Tensor, targets: list[int], patch: int, stride: int, bs: int
) -> Contender:
    from captum.attr import Occlusion

    def run() -> torch.Tensor:
        with torch.no_grad():
            out = Occlusion(lambda inp: torch.softmax(lm.model(inp), dim=1)).attribute(
                x,
                sliding_window_shapes=(3, patch, patch),
                strides=(3, stride, stride),
                baselines=0,
                target=targets,
                perturbations_per_eval=bs,
            )
        return out[:, 0]

    return Contender("captum Occlusion", run, lm.model)


def line(case: str, ours: Measurement, other: Measurement, passes: int, output=None) -> str:
    ratio = time_ratio(ours, other)
    agree = ""
    if output is not None:
        diff, corr = agreement(ours.output, output, relative=True)
        agree = f"{diff:.1e} | {corr:.6f}"
    else:
        agree = "– | –"
    rate = passes / ours.seconds
    return (
        f"| {case} | {other.library} | {ours.seconds:.2f} | {other.seconds:.2f} | **{ratio:.2f}** "
        f"| {rate:.0f} | {ours.peak_mib:.0f} | {other.peak_mib:.0f} | {agree} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--masks", type=int, default=256, help="RISE masks (default 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="timed seconds per contender")
    parser.add_argument("--slow", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "perturbation.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    lm = load_model("efficientnet_lite0", device=device)
    x = lm.preprocess(sample_path("chelsea")).to(device)
    top = int(lm.model(x).argmax())
    pair = x.expand(2, -1, -1, -1).contiguous()
    two = [top, lm.class_index("Egyptian cat")]
    bs, p, s = args.batch_size, args.patch, args.stride
    positions = len(occlusion_positions(224, p, s)) ** 2
    rows = []
    kw = {"patch": p, "stride": s, "batch_size": bs, "progress": False}

    print(f"occlusion {p}/{s}: {positions} occluded copies per image", flush=True)
    res = run_group(
        [
            Contender("ours occlusion", lambda: occlusion(lm, x, top, **kw).saliency, lm.model),
            captum_occlusion(lm, x, [top], p, s, bs),
            floor(lm, x, positions + 1, bs),
        ],
        device,
        args.repeats,
        args.budget,
        args.slow,
    )
    ours = res["ours occlusion"]
    rows.append(
        line(
            f"occlusion {p}/{s}, 1 image",
            ours,
            res["captum Occlusion"],
            positions,
            res["captum Occlusion"].output,
        )
    )
    rows.append(line(f"occlusion {p}/{s}, 1 image", ours, res[FLOOR], positions))

    print("occlusion, one image explained for two classes", flush=True)
    res2 = run_group(
        [
            Contender("ours occlusion", lambda: occlusion(lm, pair, two, **kw).saliency, lm.model),
            captum_occlusion(lm, pair, two, p, s, bs),
        ],
        device,
        args.repeats,
        args.budget,
        args.slow,
    )
    rows.append(
        line(
            f"occlusion {p}/{s}, 1 image x 2 classes",
            res2["ours occlusion"],
            res2["captum Occlusion"],
            positions,
            res2["captum Occlusion"].output,
        )
    )

    print(f"RISE, {args.masks} masks", flush=True)
    res3 = run_group(
        [
            Contender(
                "ours RISE",
                lambda: (
                    rise(lm, x, top, n_masks=args.masks, batch_size=bs, progress=False).saliency
                ),
                lm.model,
            ),
            floor(lm, x, args.masks + 1, bs),
        ],
        device,
        args.repeats,
        args.budget,
        args.slow,
    )
    rows.append(line(f"RISE N={args.masks}, 1 image", res3["ours RISE"], res3[FLOOR], args.masks))

    header = (
        "| case | against | ours s | theirs s | time ratio (ours/theirs) | ours images/s "
        "| ours MiB | theirs MiB | max rel. diff | corr |\n" + "|---" * 10 + "|"
    )
    text = "\n".join(
        [
            f"# Perturbation benchmark (Lite0, Chelsea, batch {bs} copies per pass)",
            "",
            f"{machine_line(device)}",
            "",
            header,
            *rows,
            "",
            "Time ratios are medians of per-round ratios (harness.time_ratio). Against the bare "
            "model: the same number of images through model(...) in the same batches, the floor "
            "of any perturbation method.",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
