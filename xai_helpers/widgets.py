"""An interactive explorer: perturb the picture with sliders, watch prediction and explanation.

Two layers, so that the computation runs (and is tested) without a browser:

* :func:`explore` -- a plain function: mask the top-k % of the original explanation, write a word
  on the picture, rotate and scale it, then classify and explain the result and carry the map back
  onto the original grid (:mod:`xai_helpers.perturb`); returns an :class:`Exploration`;
* :func:`plot_exploration` -- draws one :class:`Exploration` (pictures, maps, numbers);
* :func:`explorer` -- the ipywidgets front end: sliders wired to the two functions above through
  ``ipywidgets.interactive_output``. Without a front end (nbval, nbconvert) the widget is built
  and its first update computed, but nothing can move the sliders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure

from . import perturb as P
from .models import LoadedModel, TopK
from .viz import show_map

__all__ = [
    "ExplainFn",
    "Exploration",
    "explore",
    "explorer",
    "plot_exploration",
]

#: ``explain_fn(loaded, x, method, target) -> (N, H, W)`` map at input resolution; by default
#: :func:`xai_helpers.explain.explain`.
ExplainFn = Callable[[LoadedModel, torch.Tensor, str, "int | str | None"], torch.Tensor]


def _default_explain(
    loaded: LoadedModel, x: torch.Tensor, method: str, target: int | str | None
) -> torch.Tensor:
    from .explain import explain  # imported late: explain imports every method

    return explain(loaded, x, method, target=target)


@dataclass(frozen=True)
class Exploration:
    """One perturbed picture, its prediction and explanation, next to the original's.

    Attributes
    ----------
    original, perturbed:
        (S, S, 3) pictures in [0, 1], before and after the perturbation.
    valid:
        (S, S) bool, the original pixels that are still visible after the affine transform.
    reference:
        The original picture's map, (S, S).
    heatmap:
        The perturbed picture's map, in the perturbed frame (S, S).
    aligned:
        ``heatmap`` carried back onto the original grid, ``NaN`` where invalid.
    before, after:
        Top-5 predictions.
    target:
        The explained class, the original's top-1 unless given.
    p_before, p_after:
        Probability of ``target``.
    agreement:
        Spearman's rho and top-20 % IoU of ``reference`` and ``aligned`` on the valid pixels.
    method:
        The explanation method.
    """

    original: np.ndarray
    perturbed: np.ndarray
    valid: np.ndarray
    reference: np.ndarray
    heatmap: np.ndarray
    aligned: np.ndarray
    before: TopK
    after: TopK
    target: int
    p_before: float
    p_after: float
    agreement: P.MapAgreement
    method: str


def explore(
    loaded: LoadedModel,
    picture: np.ndarray,
    method: str = "grad_cam",
    angle: float = 0.0,
    scale: float = 1.0,
    text: str = "",
    text_size: int = 32,
    mask_fraction: float = 0.0,
    target: int | str | None = None,
    fill: P.Fill = "blur",
    reference: np.ndarray | None = None,
    explain_fn: ExplainFn | None = None,
) -> Exploration:
    """Perturb ``picture`` (mask, then text, then rotation and scaling), classify and explain.

    Parameters
    ----------
    loaded:
        The model.
    picture:
        The picture the network sees, ``loaded.view(image)``.
    method:
        A method name understood by ``explain_fn`` (``"grad_cam"``, ``"lrp"``, ...).
    angle, scale:
        Rotation (degrees, counter-clockwise) and zoom about the centre; the uncovered corners
        are black and left out of the comparison.
    text, text_size:
        A word drawn at the centre in white on a black label (nothing when empty).
    mask_fraction:
        Fraction of the pixels, the most relevant ones of ``reference``, occluded with ``fill``.
    target:
        The class explained before and after; default the original's top-1.
    reference:
        The original's map, when already computed (the explorer caches it per method).
    explain_fn:
        ``(loaded, x, method, target) -> (N, H, W)``; default :func:`xai_helpers.explain.explain`.
    """
    explain_fn = explain_fn or _default_explain
    before = loaded.predict(P.to_input(loaded, picture))
    target_index = before.top1[0] if target is None else loaded.class_index(target)
    if reference is None:
        reference = _as_map(explain_fn(loaded, P.to_input(loaded, picture), method, target_index))

    perturbed = picture
    if mask_fraction > 0:
        perturbed = P.occlude(perturbed, P.top_k_mask(reference, mask_fraction), fill=fill)
    if text:
        perturbed = P.draw_text(perturbed, text, size=text_size, background="black").image
    warped = P.affine(perturbed, angle=angle, scale=scale)

    x = P.to_input(loaded, warped.array)
    heatmap = _as_map(explain_fn(loaded, x, method, target_index))
    aligned = P.unwarp(heatmap, warped.matrix, valid=warped.valid)
    probs = P.class_probability(loaded, [picture, warped.array], target_index)
    return Exploration(
        original=picture,
        perturbed=warped.array,
        valid=aligned.valid,
        reference=reference,
        heatmap=heatmap,
        aligned=aligned.array,
        before=before,
        after=loaded.predict(x),
        target=target_index,
        p_before=float(probs[0]),
        p_after=float(probs[1]),
        agreement=P.compare_maps(reference, aligned.array, aligned.valid),
        method=method,
    )


def _as_map(maps: torch.Tensor) -> np.ndarray:
    return maps.detach().cpu().double().numpy()[0]


def plot_exploration(result: Exploration, cell_size: float = 2.0) -> Figure:
    """Original and perturbed picture with their maps, the map aligned back, and the numbers."""
    signed = result.method == "lrp"
    fig, axes = plt.subplots(1, 5, figsize=(5 * cell_size, cell_size + 0.8), layout="constrained")
    axes[0].imshow(result.original)
    axes[0].set_title(f"original\n{result.before.top1[1]} {result.before.top1[2]:.2f}", fontsize=9)
    axes[0].set_axis_off()
    show_map(
        axes[1], result.reference, result.original, "map before", symmetric=signed, colorbar=False
    )
    axes[2].imshow(result.perturbed)
    axes[2].set_title(f"perturbed\n{result.after.top1[1]} {result.after.top1[2]:.2f}", fontsize=9)
    axes[2].set_axis_off()
    show_map(
        axes[3], result.heatmap, result.perturbed, "map after", symmetric=signed, colorbar=False
    )
    aligned = np.where(result.valid, result.aligned, 0.0)
    show_map(
        axes[4], aligned, result.original, "after, aligned back", symmetric=signed, colorbar=False
    )
    a = result.agreement
    fig.suptitle(
        f"{result.method}: class {result.target}, p {result.p_before:.3f} -> {result.p_after:.3f}"
        f" | Spearman {a.spearman:.2f}, top-20% IoU {a.iou:.2f}, valid {a.valid_fraction:.0%}",
        fontsize=10,
    )
    return fig


def explorer(
    loaded: LoadedModel,
    picture: np.ndarray,
    methods: Sequence[str] = ("grad_cam", "grad_cam_pp", "lrp"),
    target: int | str | None = None,
    explain_fn: ExplainFn | None = None,
) -> widgets.VBox:
    """Sliders for angle, scale, text size, mask fraction, a text box and a method menu.

    Every change (on release of a slider, on Enter in the text box) re-runs :func:`explore`
    and redraws :func:`plot_exploration`. The original's map is computed once per method and
    cached. Returns the ``ipywidgets.VBox``; display it as the
    last expression of a cell.
    """
    controls = {
        "method": widgets.Dropdown(options=list(methods), value=methods[0], description="method"),
        "angle": widgets.FloatSlider(
            value=0, min=-180, max=180, step=5, description="angle", continuous_update=False
        ),
        "scale": widgets.FloatSlider(
            value=1, min=0.5, max=2, step=0.05, description="scale", continuous_update=False
        ),
        "text": widgets.Text(value="", description="text", continuous_update=False),
        "text_size": widgets.IntSlider(
            value=32, min=8, max=96, step=4, description="text size", continuous_update=False
        ),
        "mask_fraction": widgets.FloatSlider(
            value=0, min=0, max=0.8, step=0.05, description="mask top-k", continuous_update=False
        ),
    }
    references: dict[str, np.ndarray] = {}

    def update(
        method: str, angle: float, scale: float, text: str, text_size: int, mask_fraction: float
    ) -> None:
        result = explore(
            loaded,
            picture,
            method,
            angle=angle,
            scale=scale,
            text=text,
            text_size=text_size,
            mask_fraction=mask_fraction,
            target=target,
            reference=references.get(method),
            explain_fn=explain_fn,
        )
        references[method] = result.reference
        fig = plot_exploration(result)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(update, controls)
    return widgets.VBox(
        [widgets.HBox(list(controls.values())[:3]), widgets.HBox(list(controls.values())[3:]), out]
    )
