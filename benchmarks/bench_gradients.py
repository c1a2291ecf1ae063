"""The gradient family of xai_helpers against captum, measured in the same run.

    python benchmarks/bench_gradients.py                       # Lite0, ResNet50, VGG16; batch 1
    python benchmarks/bench_gradients.py --models efficientnet_lite0 --batches 1 8

For each model (EfficientNet-Lite0 with its real weights; ResNet50 and VGG16 with random weights,
``weights=None``: the same shapes and cost) and batch size, every method is called through
``xai_helpers.gradients`` and through captum (``Saliency``, ``InputXGradient``,
``GuidedBackprop``, ``GuidedGradCam``, ``NoiseTunnel(Saliency)``, ``IntegratedGradients``) on the
same input for the same classes, in interleaved rounds (``harness.run_group``). SmoothGrad: 16
samples at 15 % noise, both sides in one batch of 16 and with the same noise; Integrated
Gradients: 32 Gauss-Legendre steps from the black image, batches of 32.

captum's guided methods hook ``nn.ReLU`` only; on Lite0 (ReLU6) captum runs on a twin of the model
whose ReLU6 modules are an ``nn.ReLU`` subclass that computes ReLU6, so both compute the same map.

Writes ``benchmarks/results/gradients.md``; ratios are **ours / theirs: below 1 we are faster or
leaner**. Max diff: the largest difference divided by the largest |captum attribution|.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Contender, agreement, machine_line, run_group, time_ratio  # noqa: E402

from xai_helpers import gradients as G  # noqa: E402
from xai_helpers.images import sample_path  # noqa: E402
from xai_helpers.models import LoadedModel, load_model  # noqa: E402

MODELS = ("efficientnet_lite0", "resnet50", "vgg16")
SHORT = {"efficientnet_lite0": "Lite0", "resnet50": "ResNet50", "vgg16": "VGG16"}
RESULTS = Path(__file__).resolve().parent / "results"
NOISE, SAMPLES, STEPS = 0.15, 16, 32


def pairs(
    lm: LoadedModel, x: torch.Tensor, t: list[int]
) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], nn.Module]]:
    """Per method: our call, captum's call, and the model captum runs."""
    from captum import attr

    model = lm.model
    has_relu6 = any(isinstance(m, nn.ReLU6) for m in model.modules())
    twin = G.relu6_as_relu(model) if has_relu6 else model
    layer = twin.get_submodule(lm.cam_layer)
    black = torch.tensor([(0 - m) / s for m, s in zip(lm.mean, lm.std, strict=True)])
    black = black.view(1, 3, 1, 1).expand_as(x).contiguous()
    sigma = NOISE * float(x.max() - x.min())  # captum: one stdev for the batch

    def captum_smooth() -> torch.Tensor:
        torch.manual_seed(0)
        nt = attr.NoiseTunnel(attr.Saliency(model))
        return nt.attribute(
            x, nt_type="smoothgrad", nt_samples=SAMPLES, nt_samples_batch_size=SAMPLES,
            stdevs=sigma, target=t, abs=False,
        )  # fmt: skip

    return {
        "Saliency": (
            lambda: G.saliency(lm, x, t).attributions,
            lambda: attr.Saliency(model).attribute(x, target=t, abs=False),
            model,
        ),
        "Gradient × Input": (
            lambda: G.gradient_x_input(lm, x, t).attributions,
            lambda: attr.InputXGradient(model).attribute(x, target=t),
            model,
        ),
        "Guided Backprop": (
            lambda: G.guided_backprop(lm, x, t).attributions,
            lambda: attr.GuidedBackprop(twin).attribute(x, target=t),
            twin,
        ),
        "Guided Grad-CAM": (
            lambda: G.guided_grad_cam(lm, x, t).attributions,
            lambda: attr.GuidedGradCam(twin, layer).attribute(
                x, target=t, interpolate_mode="bilinear"
            ),
            twin,
        ),
        "SmoothGrad": (
            lambda: (
                G.smooth_grad(lm, x, t, NOISE, SAMPLES, seed=0, batch_size=SAMPLES).attributions
            ),
            captum_smooth,
            model,
        ),
        "Integrated Gradients": (
            lambda: G.integrated_gradients(lm, x, t, "black", STEPS, batch_size=STEPS).attributions,
            lambda: attr.IntegratedGradients(model).attribute(
                x, black, target=t, n_steps=STEPS, internal_batch_size=STEPS
            ),
            model,
        ),
    }


def make_input(lm: LoadedModel, batch: int) -> torch.Tensor:
    names = ["chelsea", "coffee", "rocket", "astronaut", "cat_and_coffee"]
    x = lm.preprocess([sample_path(n) for n in names])
    return torch.cat([x, x.flip(-1)])[:batch].contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--methods", nargs="+", default=None, help="labels, e.g. Saliency")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--slow", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gradients.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # captum warns about its hooks on every call
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = f"Machine: {machine_line()}."
    print(header, flush=True)
    lines = [
        "| model | batch | method | ours (s) | captum (s) | time ours/captum | ours (MiB) "
        "| captum (MiB) | max diff | min corr |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.models:
        torch.manual_seed(0)
        lm = load_model(name, device=device, weights="imagenet" if "lite" in name else None)
        for batch in args.batches:
            x = make_input(lm, batch)
            with torch.no_grad():
                t = lm.model(x).argmax(1).tolist()
            for method, (ours, theirs, their_model) in pairs(lm, x, t).items():
                if args.methods and method not in args.methods:
                    continue
                print(f"{SHORT[name]} batch {batch} {method}", flush=True)
                res = run_group(
                    [Contender("ours", ours, lm.model), Contender("captum", theirs, their_model)],
                    device, args.repeats, args.budget, args.slow,
                )  # fmt: skip
                a, b = res["ours"], res["captum"]
                diff, corr = agreement(a.output, b.output, relative=True)
                lines.append(
                    f"| {SHORT[name]} | {batch} | {method} | {a.seconds:.3g} | {b.seconds:.3g} "
                    f"| **{time_ratio(a, b):.2f}** | {a.peak_mib:.0f} | {b.peak_mib:.0f} "
                    f"| {diff:.1e} | {corr:.6f} |"
                )
                print(lines[-1], flush=True)
        del lm
    text = "\n".join(["# Gradient family: xai_helpers against captum", "", header, "", *lines, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
