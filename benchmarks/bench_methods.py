"""Our explanation methods against pytorch-grad-cam, torchcam and zennit, measured in one run.

    python benchmarks/bench_methods.py            # default scope, a few minutes on 2 CPU cores
    python benchmarks/bench_methods.py --full     # every combination (Score-CAM: hours on a CPU)

For each device (CPU; CUDA too when available), model (EfficientNet-Lite0 with its real weights;
ResNet50 and VGG16 with random weights, ``weights=None``: the same shapes and cost), batch size
(1 and 8; the batch of 8 holds 8 distinct images) and method (every method of the registry,
``xai_helpers.registry.METHODS``; the reference implementations are a table keyed by method
name, ``REFERENCES``, and a method without one is timed alone), every library explains the
same input for the same classes (each image's top-1 class). Per call: median wall time (one
warm-up call, then interleaved timed calls, see ``harness.py``), peak extra memory, and how far
the maps agree (CAMs are normalised to [0, 1]: largest absolute difference and smallest
per-image correlation; LRP: largest difference divided by the largest |relevance|). The ratios
are **ours / theirs: below 1 we are faster or leaner**.

For the gradient CAM methods (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM; one interleaved group)
the bare model is a contender too: one forward pass and one backward pass to the input
(``model alone``). The references run with their defaults (pytorch-grad-cam's
Score-CAM: batches of 16 masked images, its fastest of 16/32/64 on the 2-core CPU; torchcam's:
32), except that pytorch-grad-cam's Score-CAM masks are upsampled with ``align_corners=False``
like ours, so that both compute the same map (``--full`` adds it as shipped).

Writes ``benchmarks/results/latest.csv`` and ``latest.md`` (with the machine) and prints the
table. Nothing here is a test: the targets of issue 8 are evaluated and printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # zennit_reference

from harness import (  # noqa: E402
    Contender,
    Measurement,
    agreement,
    constant_maps,
    machine_line,
    time_ratio,
)
from harness import run_group as measure_group  # noqa: E402

from xai_helpers.images import sample_path  # noqa: E402
from xai_helpers.lrp import build_network, pixel_bounds  # noqa: E402
from xai_helpers.maps import normalize_per_image, upsample  # noqa: E402
from xai_helpers.metrics import MEMORY_FLOOR_MIB  # noqa: E402
from xai_helpers.models import LoadedModel, load_model  # noqa: E402
from xai_helpers.registry import METHODS as REGISTRY  # noqa: E402
from xai_helpers.registry import Method  # noqa: E402

MODELS = ("efficientnet_lite0", "resnet50", "vgg16")
SHORT = {"efficientnet_lite0": "Lite0", "resnet50": "ResNet50", "vgg16": "VGG16"}
#: The methods measured: every method of the registry, by name, in learning order.
METHODS = tuple(REGISTRY)
OURS = "xai_helpers"
ALONE = "model alone (fwd+bwd)"
RESULTS = Path(__file__).resolve().parent / "results"
# The classifier layer torchcam's CAM reads its weights from; VGG16 has no GAP -> Linear head.
FC_LAYER = {"efficientnet_lite0": "classifier", "resnet50": "fc"}


@dataclass
class Row:
    device: str
    model: str
    batch: int
    method: str
    reference: str
    ours_s: float
    ref_s: float
    ours_runs: int
    ref_runs: int
    time_ratio: float  # paired: the median of the per-round ratios (harness.time_ratio)
    ours_mib: float
    ref_mib: float
    max_diff: float
    correlation: float
    note: str

    @property
    def mem_ratio(self) -> float:
        return self.ours_mib / self.ref_mib if self.ref_mib > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def make_input(lm: LoadedModel, batch: int) -> torch.Tensor:
    """1: the cat photo; 8: the five sample photos and three of them mirrored (all distinct)."""
    names = ["chelsea", "coffee", "rocket", "astronaut", "cat_and_coffee"]
    if batch == 1:
        return lm.preprocess(sample_path("chelsea"))
    if batch > 2 * len(names):
        raise SystemExit(f"at most {2 * len(names)} distinct images; got batch {batch}")
    x = lm.preprocess([sample_path(n) for n in names])
    x = torch.cat([x, x.flip(-1)])[:batch]
    assert len({tuple(v.flatten()[::997].tolist()) for v in x}) == batch, "images must differ"
    return x.contiguous()


def upsample_normalise(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchcam returns maps at feature resolution: bring them to the input size, in [0, 1]
    (with the package's own upsampling and normalisation, so both sides are treated alike)."""
    return normalize_per_image(upsample(low_res, size))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pytorch-grad-cam's Score-CAM draws a tqdm bar per image on stderr."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# ----------------------------------------------------------------------------------------------
# contenders per method
# ----------------------------------------------------------------------------------------------


#: Keyword arguments of our call per method: Score-CAM in the variant the references compute,
#: Eigen-CAM centred as pytorch-grad-cam's, no progress bars.
OUR_KWARGS: dict[str, dict[str, object]] = {
    "score_cam": {"variant": "softmax_logits", "progress": False},
    "ablation_cam": {"progress": False},
    "eigen_cam": {"center": True},
}


def ours(method: Method, lm: LoadedModel, x: torch.Tensor, t: list[int]) -> Contender:
    """Our method through its registry record, as ``explain`` calls it."""
    kwargs = OUR_KWARGS.get(method.name, {})
    return Contender(f"{OURS} {method.name}", lambda: method.fn(lm, x, t, **kwargs), lm.model)


def model_alone(lm: LoadedModel, x: torch.Tensor, t: list[int]) -> Contender:
    """One forward pass and one backward pass to the input: the floor of a gradient method."""
    index = torch.tensor(t, device=x.device)[:, None]

    def run() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(lm.model(xg).gather(1, index).sum(), xg)

    return Contender(ALONE, run, lm.model)


def pgc(cls_name: str, lm: LoadedModel, x: torch.Tensor, t: list[int], **attrs) -> Contender:
    """A pytorch-grad-cam method on the model's CAM layer (``attrs`` set on the instance)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    module = dict(lm.model.named_modules())[lm.cam_layer]
    targets = [ClassifierOutputTarget(c) for c in t]

    # their Score-CAM and Ablation-CAM draw a tqdm bar per image on stderr
    silence = quiet if cls_name in ("ScoreCAM", "AblationCAM") else contextlib.nullcontext

    def run() -> object:
        with cls(model=lm.model, target_layers=[module]) as method, silence():
            for key, value in attrs.items():
                setattr(method, key, value)
            return method(input_tensor=x, targets=targets)

    return Contender(f"pytorch-grad-cam {cls_name}", run, lm.model)


def torchcam(cls_name: str, lm: LoadedModel, x: torch.Tensor, t: list[int]) -> Contender:
    """A torchcam extractor on the model's CAM layer, its maps upsampled and normalised."""
    import torchcam.methods

    cls = getattr(torchcam.methods, cls_name)
    model, size = lm.model, tuple(x.shape[-2:])
    uses_scores = cls_name not in ("CAM", "ScoreCAM")

    def run() -> torch.Tensor:
        args = (model, lm.cam_layer) + ((FC_LAYER[lm.name],) if cls_name == "CAM" else ())
        with cls(*args) as extractor:
            if uses_scores:
                maps = extractor(class_idx=t, scores=model(x))[0]
            else:
                with torch.inference_mode():
                    model(x)
                maps = extractor(class_idx=t)[0]
        return upsample_normalise(maps, size)

    return Contender(f"torchcam {cls_name}", run, model)


@contextlib.contextmanager
def masks_like_ours() -> Iterator[None]:
    """pytorch-grad-cam's Score-CAM upsamples its masks with ``nn.UpsamplingBilinear2d``, i.e.
    ``align_corners=True``; swap in the same interpolation with ``align_corners=False`` (ours,
    torchcam's): one upsampling call per explanation, the same cost, and then the same map."""
    original = torch.nn.UpsamplingBilinear2d
    torch.nn.UpsamplingBilinear2d = lambda size: torch.nn.Upsample(  # type: ignore[assignment]
        size=size, mode="bilinear", align_corners=False
    )
    try:
        yield
    finally:
        torch.nn.UpsamplingBilinear2d = original  # type: ignore[misc]


PGC_SAME_MAP = "pytorch-grad-cam, masks align_corners=False"
PGC_STOCK = "pytorch-grad-cam as shipped"


def score_cam_references(
    lm: LoadedModel, x: torch.Tensor, t: list[int], args: argparse.Namespace
) -> list[Contender]:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(lm.model.named_modules())[lm.cam_layer]
    targets = [ClassifierOutputTarget(c) for c in t]

    def run_pgc(same_masks: bool) -> Callable[[], object]:
        def run() -> object:
            patch = masks_like_ours() if same_masks else contextlib.nullcontext()
            with ScoreCAM(model=lm.model, target_layers=[module]) as method, quiet(), patch:
                if args.pgc_score_batch is not None:
                    method.batch_size = args.pgc_score_batch
                return method(input_tensor=x, targets=targets)

        return run

    stock = [Contender(PGC_STOCK, run_pgc(same_masks=False), lm.model)] if args.full else []
    return [
        Contender(PGC_SAME_MAP, run_pgc(same_masks=True), lm.model),
        torchcam("ScoreCAM", lm, x, t),  # its default batch_size=32
        *stock,
    ]


def lrp_references(
    lm: LoadedModel, x: torch.Tensor, t: list[int], args: argparse.Namespace
) -> list[Contender]:
    """zennit configured for the same rules as our ``lrp`` (epsilon-gamma-box).

    zennit's model preparation (a copy with BatchNorm merged for Lite0; with BatchNorm's epsilon
    moved for ResNet50) is done once, outside the timed call, as a zennit user would reuse it;
    our ``lrp`` folds BatchNorm inside every call.
    """
    from zennit_reference import zennit_lrp, zennit_ready

    target = torch.tensor(t, device=x.device)
    rules = build_network(lm.model).rules()
    low, high = (b.to(x) for b in pixel_bounds(lm.mean, lm.std))
    zmodel, extra, canonizers = zennit_ready(lm.model)

    def zennit() -> torch.Tensor:
        relevance = zennit_lrp(zmodel, x, target, rules, extra, canonizers, low=low, high=high)
        return relevance.sum(dim=1)

    return [Contender("zennit", zennit, zmodel)]


References = Callable[[LoadedModel, torch.Tensor, list[int], argparse.Namespace], list[Contender]]

#: The reference implementations of each method, keyed by its registry name. A registered
#: method that is not here is timed alone.
REFERENCES: dict[str, References] = {
    "cam": lambda lm, x, t, a: [torchcam("CAM", lm, x, t)],
    "grad_cam": lambda lm, x, t, a: [pgc("GradCAM", lm, x, t), torchcam("GradCAM", lm, x, t)],
    "grad_cam_pp": lambda lm, x, t, a: [
        pgc("GradCAMPlusPlus", lm, x, t),
        torchcam("GradCAMpp", lm, x, t),
    ],
    "score_cam": score_cam_references,
    "lrp": lrp_references,
    "xgrad_cam": lambda lm, x, t, a: [pgc("XGradCAM", lm, x, t), torchcam("XGradCAM", lm, x, t)],
    "layer_cam": lambda lm, x, t, a: [pgc("LayerCAM", lm, x, t), torchcam("LayerCAM", lm, x, t)],
    "eigen_cam": lambda lm, x, t, a: [pgc("EigenCAM", lm, x, t)],
    # its default batch of 32 ablated copies, each through the whole network
    "ablation_cam": lambda lm, x, t, a: [pgc("AblationCAM", lm, x, t)],
}


def is_gradient_cam(method: Method) -> bool:
    """Gradient CAM methods share one interleaved group with the bare model's pass."""
    return method.family == "cam" and method.needs_gradients


# ----------------------------------------------------------------------------------------------
# rows: ours against each reference
# ----------------------------------------------------------------------------------------------


def rows_for(
    key: tuple[str, str, int],
    method: str,
    ours: Measurement,
    references: list[Measurement],
    notes: dict[str, str],
    relative: bool = False,
) -> list[Row]:
    device, model, batch = key
    dead = constant_maps(ours.output) if not relative else 0
    rows = []
    if not references:  # no reference implementation: timed alone
        nan = float("nan")
        note = "no reference implementation: timed alone"
        return [
            Row(device, model, batch, method, "–", ours.seconds, nan, len(ours.times), 0, nan,
                ours.peak_mib, nan, nan, nan, note)
        ]
    for ref in references:
        if ref.output is None:
            diff, corr = float("nan"), float("nan")
        else:
            diff, corr = agreement(ours.output, ref.output, relative)
        note = notes.get(ref.library, "")
        if dead:
            note = f"{dead}/{batch} of our maps constant; " + note
        rows.append(
            Row(
                device,
                model,
                batch,
                method,
                ref.library,
                ours.seconds,
                ref.seconds,
                len(ours.times),
                len(ref.times),
                time_ratio(ours, ref),
                ours.peak_mib,
                ref.peak_mib,
                diff,
                corr,
                note.strip("; "),
            )
        )
    return rows


#: What each difference in the agreement columns comes from, by method name and reference.
NOTES = {
    "cam": {
        "torchcam CAM": "its CAM has no ReLU before the normalisation (ours has, like Grad-CAM): "
        "maps differ where a map has negative parts",
    },
    "grad_cam_pp": {
        "pytorch-grad-cam GradCAMPlusPlus": "its eps=1e-6 in the alpha denominator is the size "
        "of g^2 here (notebook 03)",
        "torchcam GradCAMpp": "torchcam 0.5 bug: `alpha[mask].div_()` divides a copy, so its "
        "alpha is g^2 undivided",
    },
    "score_cam": {
        PGC_SAME_MAP: "its nn.UpsamplingBilinear2d swapped for align_corners=False",
        PGC_STOCK: "its masks are upsampled with align_corners=True (notebook 04)",
        "torchcam ScoreCAM": "it normalises each mask before upsampling, we after",
    },
    "lrp": {"zennit": "same rules (tests/zennit_reference.py)"},
    "xgrad_cam": {"pytorch-grad-cam XGradCAM": "its eps=1e-7 in the activation sums"},
    "eigen_cam": {
        "pytorch-grad-cam EigenCAM": "ours with center=True like theirs; they keep LAPACK's sign "
        "of v1, so a map can be the other half of the projection (a low or negative corr)",
    },
    "ablation_cam": {
        "pytorch-grad-cam AblationCAM": "it runs the whole network on every ablated copy; ours "
        "the layers above the CAM layer (a control row checks the logits)",
    },
}


def run_group(
    methods: list[Method],
    lm: LoadedModel,
    x: torch.Tensor,
    t: list[int],
    key: tuple[str, str, int],
    args: argparse.Namespace,
) -> list[Row]:
    """Measure ``methods`` and their references in one interleaved group (plus the bare model
    when they are gradient methods); one row per method and reference."""
    contenders, references = [], {}
    for method in methods:
        refs = REFERENCES.get(method.name, lambda *_: [])(lm, x, t, args)
        references[method.name] = [c.library for c in refs]
        contenders += [ours(method, lm, x, t), *refs]
    if all(is_gradient_cam(m) for m in methods):
        contenders.append(model_alone(lm, x, t))
        for names in references.values():
            names.append(ALONE)
    res = measure_group(contenders, lm.device, args.repeats, args.budget, args.slow)
    rows = []
    for method in methods:
        mine = res[f"{OURS} {method.name}"]
        refs = [res[name] for name in references[method.name]]
        new = rows_for(
            key, method.label, mine, refs, NOTES.get(method.name, {}), relative=method.signed
        )
        if method.name == "score_cam":
            n = x.shape[0]  # unmasked images: one pass each; torchcam's baseline pass is a second
            for row, ref in zip(new, refs, strict=True):
                masked = ref.forward_images - n * (2 if ref.library.startswith("torchcam") else 1)
                row.note += f"; masked images: ours {mine.forward_images - n}, theirs {masked}"
        rows += new
    return rows


# ----------------------------------------------------------------------------------------------
# scope: what runs by default, what only with --full
# ----------------------------------------------------------------------------------------------


def skip_reason(model: str, batch: int, method: str, full: bool) -> str | None:
    if REGISTRY[method].family == "perturbation":
        return (
            "occlusion and RISE are measured by bench_perturbation.py (against captum's "
            "Occlusion and the bare model's throughput)"
        )
    if method == "cam" and model == "vgg16":
        return "VGG16 has no GAP -> Linear head, so CAM does not apply (torchcam refuses too)"
    if method == "score_cam" and not full and (model != "efficientnet_lite0" or batch != 1):
        return (
            "Score-CAM runs only for Lite0 at batch 1 by default: pytorch-grad-cam and torchcam "
            "need one forward pass per channel and image (Lite0 1280, ResNet50 2048, VGG16 512 "
            "channels), 1-2 min per image here, and up to 2 GiB per image for pytorch-grad-cam's "
            "masked batch; --full runs them all"
        )
    if method == "ablation_cam" and not full and (model != "efficientnet_lite0" or batch != 1):
        return (
            "Ablation-CAM runs only for Lite0 at batch 1 by default: pytorch-grad-cam runs the "
            "whole network once per channel and image (minutes per image here); --full runs "
            "them all"
        )
    return None


def since_start() -> float:
    """Seconds since this process started (imports included)."""
    return time.time() - psutil.Process().create_time()


def load(name: str, device: torch.device) -> LoadedModel:
    torch.manual_seed(0)  # random weights for ResNet50 and VGG16: the same in every run
    return load_model(name, device=device, weights="imagenet" if "lite" in name else None)


def warm_up(lm: LoadedModel, x: torch.Tensor) -> list[int]:
    """One forward and backward pass for this shape (allocator, kernels); the top-1 classes."""
    xg = x.detach().requires_grad_(True)
    logits = lm.model(xg)
    torch.autograd.grad(logits.max(dim=1).values.sum(), xg)
    return logits.argmax(dim=1).tolist()


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def fmt(v: float, digits: int = 3) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"


def ratio(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.2f}"


HEADER = (
    "| device | model | batch | method | reference | ours (s) | theirs (s) | time ours/theirs "
    "| ours (MiB) | theirs (MiB) | memory ours/theirs | max diff | min corr | note |"
)


def markdown_table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + "---|" * 5 + "---:|" * 8 + "---|"]
    for r in rows:
        lines.append(
            f"| {r.device} | {SHORT[r.model]} | {r.batch} | {r.method} | {r.reference} "
            f"| {fmt(r.ours_s)}{'¹' if r.ours_runs == 1 else ''} "
            f"| {fmt(r.ref_s)}{'¹' if r.ref_runs == 1 else ''} "
            f"| **{ratio(r.time_ratio)}** | {fmt(r.ours_mib, 4)} | {fmt(r.ref_mib, 4)} "
            f"| {fmt(r.mem_ratio)} | {fmt(r.max_diff, 2)} | {fmt(r.correlation, 6)} | {r.note} |"
        )
    return "\n".join(lines)


ABBREVIATION = {
    "torchcam": "tc",
    "zennit": "zennit",
    ALONE: "alone",
    PGC_SAME_MAP: "pgc",
    PGC_STOCK: "pgc as shipped",
}


def abbreviate(reference: str) -> str:
    if reference in ABBREVIATION:
        return ABBREVIATION[reference]
    return "pgc" if reference.startswith("pytorch-grad-cam") else "tc"


def summary_table(rows: list[Row]) -> str:
    """One line per device, model and batch: time ratio (ours / theirs) against the faster
    library (and, for the gradient methods, the bare model), then the memory ratio."""
    cases: dict[tuple[str, str, int], dict[str, list[Row]]] = {}
    for r in rows:
        cases.setdefault((r.device, r.model, r.batch), {}).setdefault(r.method, []).append(r)
    labels = [m.label for m in REGISTRY.values()]
    methods = [m for m in labels if any(m in c for c in cases.values())]
    lines = [
        "| device | model | batch | " + " | ".join(methods) + " |",
        "|---|---|---:|" + "---|" * len(methods),
    ]
    for (device, model, batch), by_method in cases.items():
        cells = []
        for method in methods:
            rs = by_method.get(method)
            if not rs:
                cells.append("–")
                continue
            libs = [r for r in rs if r.reference not in (ALONE, PGC_STOCK, "–")]
            if not libs:
                cells.append(f"{fmt(rs[0].ours_s)} s, no reference")
                continue
            fastest = min(libs, key=lambda r: r.ref_s)
            cell = f"**{fastest.time_ratio:.2f}** {abbreviate(fastest.reference)}"
            cell += "".join(f", {r.time_ratio:.2f} alone" for r in rs if r.reference == ALONE)
            worst = max(libs, key=lambda r: r.mem_ratio)
            cell += f"; memory {worst.mem_ratio:.2f} {abbreviate(worst.reference)}"
            cells.append(cell)
        lines.append(f"| {device} | {SHORT[model]} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """Issue 8's targets, evaluated on this run's ratios."""
    out = []
    by_case: dict[tuple[str, str, int, str], list[Row]] = {}
    for r in rows:
        by_case.setdefault((r.device, r.model, r.batch, r.method), []).append(r)
    for (device, model, batch, method), rs in by_case.items():
        case = f"{device} {SHORT[model]} b{batch} {method}"
        libs = [r for r in rs if r.reference not in (ALONE, "–")]
        if not libs:
            continue  # timed alone: no target
        if method in ("Grad-CAM", "Grad-CAM++"):
            fastest = min(libs, key=lambda r: r.ref_s)
            alone = next(r for r in rs if r.reference == ALONE)
            ok = fastest.time_ratio <= 1.0 and alone.time_ratio <= 1.2
            out.append(
                f"{'met ' if ok else 'MISSED'} {case}: {fastest.time_ratio:.3f}x the faster "
                f"reference ({fastest.reference}; target <= 1.0), {alone.time_ratio:.2f}x one "
                "forward + backward pass (target <= 1.2)"
            )
        elif method == "Score-CAM":
            pgc = next(r for r in rs if r.reference == PGC_SAME_MAP)
            ok = pgc.time_ratio <= 0.5 and pgc.correlation >= 0.999
            out.append(
                f"{'met ' if ok else 'MISSED'} {case}: {pgc.time_ratio:.2f}x {pgc.reference} "
                f"(target <= 0.5), correlation {pgc.correlation:.6f} (target >= 0.999)"
            )
        elif method == "LRP":
            z = rs[0]
            ok = z.time_ratio <= 1.0
            out.append(f"{'met ' if ok else 'MISSED'} {case}: {z.time_ratio:.3f}x zennit (<= 1.0)")
        # memory: against the libraries (not the bare model); a few MiB are sampler noise
        worst = max(libs, key=lambda r: r.ours_mib - 1.5 * r.ref_mib)
        if max(worst.ours_mib, worst.ref_mib) < MEMORY_FLOOR_MIB:
            out.append(
                f"n/a  {case} memory: {worst.ours_mib:.1f} vs {worst.ref_mib:.1f} MiB "
                f"({worst.reference}), both under {MEMORY_FLOOR_MIB} MiB"
            )
        else:
            ok = worst.ours_mib <= 1.5 * worst.ref_mib
            out.append(
                f"{'met ' if ok else 'MISSED'} {case} memory: {worst.mem_ratio:.2f}x "
                f"{worst.reference} ({worst.ours_mib:.0f} vs {worst.ref_mib:.0f} MiB; "
                "target <= 1.5)"
            )
    return out


def write_results(
    rows: list[Row], skipped: list[str], goals: list[str], header: str, legend: str, out_dir: Path
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(Row.__dataclass_fields__) + ["mem_ratio"]
    with open(out_dir / "latest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow([getattr(r, k) for k in fields])
    md = [
        "# Benchmark: xai_helpers against pytorch-grad-cam, torchcam and zennit",
        "",
        header,
        "",
        "Ratios are ours / theirs: below 1 we are faster (time) or use less (memory). " + legend,
        "",
        "## Summary",
        "",
        "Time ratio against the faster library (tc: torchcam, pgc: pytorch-grad-cam), for "
        "the gradient CAM methods also against one forward and backward pass of the bare model "
        "(alone); memory ratio against the library that uses least.",
        "",
        summary_table(rows),
        "",
        "## All measurements",
        "",
        markdown_table(rows),
        "",
        "## Targets (issue 8)",
        "",
        *[f"- {g}" for g in goals],
        "",
        "## Not measured in this run",
        "",
        *[f"- {s}" for s in skipped],
        "",
    ]
    (out_dir / "latest.md").write_text("\n".join(md))


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every combination (Score-CAM!)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="registry names (default: every registered method)",
    )
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu (+ cuda)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7, help="most timed calls per contender")
    parser.add_argument(
        "--budget", type=float, default=5.0, help="seconds of timed calls per contender"
    )
    parser.add_argument("--slow", type=float, default=8.0, help="single run above (seconds)")
    parser.add_argument(
        "--pgc-score-batch",
        type=int,
        default=None,
        help="pytorch-grad-cam Score-CAM batch size (default: its own, 16)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    header = f"Machine: {machine_line()}. Scope: {'--full' if args.full else 'default'}."
    print(header, flush=True)
    rows: list[Row] = []
    skipped: dict[str, list[str]] = {}  # reason -> cases
    for device_name in devices:
        device = torch.device(device_name)
        for name in args.models:
            lm = load(name, device)
            for batch in args.batches:
                x = make_input(lm, batch)
                t = warm_up(lm, x)
                key = (device.type, name, batch)
                selected = [REGISTRY[m] for m in args.methods]
                groups = [[m for m in selected if is_gradient_cam(m)]]
                groups += [[m] for m in selected if not is_gradient_cam(m)]
                for group in filter(None, groups):
                    measured = []
                    for method in group:
                        case = f"{device.type} {SHORT[name]} batch {batch} {method.label}"
                        reason = skip_reason(name, batch, method.name, args.full)
                        if reason:
                            skipped.setdefault(reason, []).append(f"{SHORT[name]} b{batch}")
                            print(f"[skip] {case}: {reason}", flush=True)
                        else:
                            measured.append(method)
                    if measured:
                        labels = " and ".join(m.label for m in measured)
                        case = f"{device.type} {SHORT[name]} batch {batch} {labels}"
                        print(f"[{since_start():6.0f} s] {case}", flush=True)
                        rows += run_group(measured, lm, x, t, key, args)
            del lm
    notes = [f"{', '.join(cases)}: {reason}" for reason, cases in skipped.items()]
    if "cam" in args.methods:
        notes.append("pytorch-grad-cam has no plain CAM: CAM is compared with torchcam only")
    alone = [REGISTRY[m].label for m in args.methods if m not in REFERENCES]
    if alone:
        notes.append(f"no reference implementation, timed alone: {', '.join(alone)}")
    header += f" Total wall time {since_start() / 60:.1f} min (from process start)."
    goals = targets(rows)
    legend = (
        f"Times: median of the timed calls after a warm-up call (about {args.budget:g} s of "
        f"them per contender, 1 to {args.repeats}), in interleaved rounds; time ratios are "
        f"medians of the per-round ratios. ¹ one timed run (the first call took over "
        f"{args.slow:g} s). Memory: peak extra memory of a call (CPU: resident set size above "
        "the start, sampled every ms; for calls under 2 s the smaller of two calls). Max diff: "
        "CAMs in [0, 1]; LRP relative to the largest |relevance|; min corr: the smallest "
        "per-image correlation."
    )
    write_results(rows, notes, goals, header, legend, args.out)
    print()
    print(header)
    print(markdown_table(rows))
    print()
    print(summary_table(rows))
    print("\nTargets:")
    print("\n".join(f"  {g}" for g in goals))
    print(f"\nwrote {args.out / 'latest.csv'} and {args.out / 'latest.md'}")


if __name__ == "__main__":
    main()
