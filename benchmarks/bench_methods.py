"""Speed of our explanation methods against the reference libraries, measured in the same run.

    python benchmarks/bench_methods.py [--repeats 5] [--image chelsea] [--json out.json]

For each method, the median wall time of one explanation of one image (EfficientNet-Lite0 with its
real weights, 224 x 224, default CAM layer ``bn2``) with ``xai_helpers`` and with the reference
implementation, and their ratio (reference time / ours: above 1 means we are faster). Both sides
get the same model, the same input and the same class, and their maps are compared (last column:
largest absolute difference; CAMs are in [0, 1], LRP is relative to the largest relevance), so a
fast wrong answer cannot pass unnoticed. Absolute times depend on the machine; the ratios are
what to compare across machines. Nothing here is a test: the numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xai_helpers.images import sample_path
from xai_helpers.models import LoadedModel, load_model


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median of ``repeats`` timed calls, and the output of the first (the one we compare)."""
    times, outputs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs.append(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs[0]


def as_map(a: object) -> np.ndarray:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.reshape(a.shape[-2:]).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--score-cam-repeats", type=int, default=1)
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xai_helpers.cams import grad_cam, grad_cam_pp, score_cam

    torch.manual_seed(0)
    lm = load_model("efficientnet_lite0")
    x = lm.preprocess(sample_path(args.image))
    c = int(lm.model(x).argmax())
    for _ in range(3):  # warm-up: first calls allocate and pick kernels (no .grad written)
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(lm.model(xg)[0, c], xg)
    layer = lm.model.bn2
    targets = [ClassifierOutputTarget(c)]

    def reference(cls: type, **attrs: object) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with cls(model=lm.model, target_layers=[layer]) as method:
                for name, value in attrs.items():
                    setattr(method, name, value)
                return method(input_tensor=x, targets=targets)[0]

        return run

    # (name, ours, theirs, repeats, why the maps may differ)
    cases: list[tuple[str, Callable[[], object], Callable[[], object], int, str]] = [
        (
            "Grad-CAM",
            lambda: grad_cam(lm, x, c).upsampled,
            reference(GradCAM),
            args.repeats,
            "same formula",
        ),
        (
            "Grad-CAM++",
            lambda: grad_cam_pp(lm, x, c).upsampled,
            reference(GradCAMPlusPlus),
            args.repeats,
            "its eps=1e-6 in the alpha denominator is the size of g^2 here (notebook 03)",
        ),
        (
            # pytorch-grad-cam's ScoreCAM is the softmax-over-channels variant of the logits
            "Score-CAM (softmax_logits)",
            lambda: score_cam(lm, x, c, variant="softmax_logits", progress=False).upsampled,
            reference(ScoreCAM, batch_size=32),
            args.score_cam_repeats,
            "it upsamples the masks with align_corners=True (notebook 04)",
        ),
    ]

    rows = []
    for name, ours, theirs, repeats, note in cases:
        t_ours, m_ours = median_time(ours, repeats)
        t_ref, m_ref = median_time(theirs, repeats)
        diff = float(np.abs(as_map(m_ours) - as_map(m_ref)).max())
        rows.append(
            {
                "method": name,
                "reference": "pytorch-grad-cam",
                "ours_s": t_ours,
                "reference_s": t_ref,
                "speedup": t_ref / t_ours,
                "max_abs_diff": diff,
                "note": note,
            }
        )

    rows.extend(lrp_rows(lm, x, args.repeats))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {lm.device}")
    print("| method | reference | ours (s) | reference (s) | reference / ours | max diff | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['reference']} | {r['ours_s']:.4f} | {r['reference_s']:.4f} "
            f"| {r['speedup']:.2f} | {r['max_abs_diff']:.2e} | {r['note']} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


def lrp_rows(lm: LoadedModel, x: torch.Tensor, repeats: int) -> list[dict[str, object]]:
    """LRP (epsilon-gamma-box composite) against zennit configured to compute the same thing.

    The zennit configuration is the one ``tests/test_lrp.py`` checks
    (``tests/zennit_reference.py``).
    Both sides start from the unmodified model: our ``lrp`` rebuilds it with BatchNorm folded, the
    zennit side copies and canonizes it, and both costs are part of one explanation.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zennit_reference import zennit_lrp, zennit_ready_lite

    from xai_helpers.lrp import build_network, lrp, pixel_bounds

    target = lm.model(x).argmax(dim=1)
    rules = build_network(lm.model).rules()
    low, high = (b.float() for b in pixel_bounds(lm.mean, lm.std))

    def theirs() -> torch.Tensor:
        zmodel, extra = zennit_ready_lite(lm.model)
        return zennit_lrp(zmodel, x, target, rules, extra, low=low, high=high).sum(dim=1)

    t_ours, ours = median_time(lambda: lrp(lm, x, target).relevance, repeats)
    t_ref, ref = median_time(theirs, repeats)
    scale = float(np.abs(as_map(ref)).max())
    return [
        {
            "method": "LRP (epsilon-gamma-box)",
            "reference": "zennit",
            "ours_s": t_ours,
            "reference_s": t_ref,
            "speedup": t_ref / t_ours,
            "max_abs_diff": float(np.abs(as_map(ours) - as_map(ref)).max()) / scale,
            "note": "same rules, BatchNorm folded (tests/zennit_reference.py)",
        }
    ]


if __name__ == "__main__":
    main()
