"""Every explanation method of the course as one record, defined once.

A :class:`Method` says what a method *is*: its name and display label, whether its maps are
signed, which layer it reads, whether it needs gradients or reports progress, and the function
that computes it. :data:`METHODS` holds the records in learning order.
:func:`xai_helpers.explain.explain`, the explorer, the comparison and robustness notebooks, the
batch evaluation and the benchmark all read this table; none of them lists methods of its own.

Adding a method is adding one record: write its function (``(loaded, x, target, **kwargs) ->
(N, H, W)`` map at input resolution) and :func:`register` it, here for the course's own methods
or at run time for your own::

    register(Method("my_cam", "My-CAM", my_cam_map, family="cam", layer="any"))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "METHODS",
    "Method",
    "MethodFn",
    "UnknownMethodError",
    "get_method",
    "method_names",
    "register",
    "unregister",
]

#: ``fn(loaded, x, target, **kwargs) -> (N, H, W)`` map at input resolution, detached.
MethodFn = Callable[..., torch.Tensor]

Family = Literal["cam", "lrp", "gradient", "perturbation"]
LayerUse = Literal["any", "fixed", "none"]


class UnknownMethodError(ValueError):
    """The method name is not in :data:`METHODS`."""


@dataclass(frozen=True)
class Method:
    """What one explanation method is.

    Attributes
    ----------
    name:
        The identifier used everywhere in code (``"grad_cam_pp"``).
    label:
        The display name, as its paper writes it (``"Grad-CAM++"``).
    fn:
        ``fn(loaded, x, target, **kwargs) -> (N, H, W)`` map at input resolution.
    family:
        ``"cam"`` (weights times feature maps), ``"lrp"``, ``"gradient"`` (pixel attributions
        from input gradients) or ``"perturbation"`` (forward passes on altered inputs).
    signed:
        The map has a meaningful sign (LRP relevance, gradients): draw it with a diverging colour
        map centred at zero. Unsigned maps are non-negative and min-max normalised per image.
    layer:
        ``"any"``: the method takes ``layer=`` (a feature layer of the model);
        ``"fixed"``: it reads one layer, the model's ``cam_layer`` (CAM: its weights are the
        classifier's); ``"none"``: it works on the input pixels only.
    needs_gradients:
        It runs a backward pass.
    reports_progress:
        It takes ``progress=`` (``True`` for a tqdm bar, or a callable ``progress(done, total)``)
        because one call may run many forward passes.
    class_discriminative:
        Its map depends on the explained class (Eigen-CAM's does not).
    citation:
        Author, year and venue of the paper that defines it.
    """

    name: str
    label: str
    fn: MethodFn
    family: Family
    signed: bool = False
    layer: LayerUse = "none"
    needs_gradients: bool = True
    reports_progress: bool = False
    class_discriminative: bool = True
    citation: str = ""

    @property
    def uses_layer(self) -> bool:
        """Whether the method reads a feature layer (``"any"`` or ``"fixed"``)."""
        return self.layer != "none"

    def __call__(self, loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any):
        return self.fn(loaded, x, target, **kwargs)


#: The registered methods, by name, in learning order.
METHODS: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` (``replace=True`` to overwrite a record of that name)."""
    if not isinstance(method, Method):
        raise TypeError(f"register() takes a Method record, not {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(
            f"a method named {method.name!r} is already registered; pass replace=True to "
            "overwrite it or choose another name"
        )
    METHODS[method.name] = method
    return method


def unregister(name: str) -> Method:
    """Remove a method from :data:`METHODS` and return its record."""
    return METHODS.pop(get_method(name).name)


def get_method(name: str | Method) -> Method:
    """The record of ``name``; :class:`UnknownMethodError` with the closest names otherwise."""
    if isinstance(name, Method):
        return name
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(str(name), list(METHODS), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise UnknownMethodError(
        f"unknown method {name!r}{hint}; choose one of {', '.join(METHODS)}"
    )


def method_names(**where: Any) -> list[str]:
    """Names of the registered methods whose attributes equal ``where``, in learning order.

    ``method_names()`` lists all; ``method_names(family="cam")`` the CAM family;
    ``method_names(signed=True)`` the methods with signed maps.
    """
    return [m.name for m in _select(where)]


def _select(where: dict[str, Any]) -> Iterator[Method]:
    for method in METHODS.values():
        if all(getattr(method, key) == value for key, value in where.items()):
            yield method


# ----------------------------------------------------------------------------------------------
# the course's methods
# ----------------------------------------------------------------------------------------------


def _register_course_methods() -> None:
    from . import cams, gradients, occlusion
    from .lrp import lrp
    from .maps import normalize_per_image

    def cam_family(fn: Callable[..., Any]) -> MethodFn:
        def run(loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any) -> torch.Tensor:
            return fn(loaded, x, target, **kwargs).upsampled

        run.__name__ = run.__qualname__ = f"{fn.__name__}_map"
        run.__doc__ = f"``{fn.__name__}(...).upsampled``: the (N, H, W) map in [0, 1]."
        return run

    def occlusion_map(
        loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        """``occlusion(...).saliency``: the mean score drop, signed, in probability units."""
        return occlusion.occlusion(loaded, x, target, **kwargs).saliency

    def rise_map(loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any) -> torch.Tensor:
        """``rise(...).normalized``: the (N, H, W) RISE saliency min-max normalised to [0, 1]."""
        return occlusion.rise(loaded, x, target, **kwargs).normalized

    def lrp_map(loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any) -> torch.Tensor:
        """``lrp(...).relevance``: signed pixel relevance, summed over colour channels."""
        return lrp(loaded, x, target, **kwargs).relevance

    def gradient_family(fn: Callable[..., Any], unsigned: bool = False) -> MethodFn:
        reduce = gradients.REDUCTIONS[fn.__name__]

        def run(loaded: Any, x: torch.Tensor, target: Any = None, **kwargs: Any) -> torch.Tensor:
            reduced = reduce(fn(loaded, x, target, **kwargs).attributions)
            # an unsigned map of the registry lies in [0, 1], like the CAM family's
            return normalize_per_image(reduced) if unsigned else reduced

        run.__name__ = run.__qualname__ = f"{fn.__name__}_map"
        run.__doc__ = f"``{reduce.__name__}({fn.__name__}(...).attributions)``: (N, H, W)" + (
            ", min-max normalised per image to [0, 1]." if unsigned else "."
        )
        return run

    for record in (
        Method(
            "cam", "CAM", cam_family(cams.cam), "cam", layer="fixed", needs_gradients=False,
            citation="Zhou et al., CVPR 2016",
        ),
        Method(
            "grad_cam", "Grad-CAM", cam_family(cams.grad_cam), "cam", layer="any",
            citation="Selvaraju et al., ICCV 2017",
        ),
        Method(
            "grad_cam_pp", "Grad-CAM++", cam_family(cams.grad_cam_pp), "cam", layer="any",
            citation="Chattopadhay et al., WACV 2018",
        ),
        Method(
            "score_cam", "Score-CAM", cam_family(cams.score_cam), "cam", layer="any",
            needs_gradients=False, reports_progress=True,
            citation="Wang et al., CVPR Workshops 2020",
        ),
        Method(
            "lrp", "LRP", lrp_map, "lrp", signed=True, layer="none",
            citation="Bach et al., PLOS ONE 2015; Montavon et al. 2019",
        ),
        # the gradient family of notebook 06
        Method(
            "saliency", "Saliency", gradient_family(gradients.saliency, unsigned=True), "gradient",
            citation="Simonyan et al., ICLR Workshop 2014",
        ),
        Method(
            "gradient_x_input", "Gradient × Input", gradient_family(gradients.gradient_x_input),
            "gradient", signed=True, citation="Shrikumar et al., ICML 2017",
        ),
        Method(
            "guided_backprop", "Guided Backprop", gradient_family(gradients.guided_backprop),
            "gradient", signed=True, citation="Springenberg et al., ICLR Workshop 2015",
        ),
        Method(
            "guided_grad_cam", "Guided Grad-CAM", gradient_family(gradients.guided_grad_cam),
            "gradient", signed=True, layer="any", citation="Selvaraju et al., ICCV 2017",
        ),
        Method(
            "smooth_grad", "SmoothGrad", gradient_family(gradients.smooth_grad, unsigned=True),
            "gradient", reports_progress=True, citation="Smilkov et al., arXiv 2017",
        ),
        Method(
            "integrated_gradients", "Integrated Gradients",
            gradient_family(gradients.integrated_gradients), "gradient", signed=True,
            reports_progress=True, citation="Sundararajan et al., ICML 2017",
        ),
        # the CAM variants of notebook 07 (after LRP and the gradient family, in learning order)
        Method(
            "xgrad_cam", "XGrad-CAM", cam_family(cams.xgrad_cam), "cam", layer="any",
            citation="Fu et al., BMVC 2020",
        ),
        Method(
            "layer_cam", "LayerCAM", cam_family(cams.layer_cam), "cam", layer="any",
            citation="Jiang et al., IEEE TIP 2021",
        ),
        Method(
            "eigen_cam", "Eigen-CAM", cam_family(cams.eigen_cam), "cam", layer="any",
            needs_gradients=False, class_discriminative=False,
            citation="Muhammad & Yeasin, IJCNN 2020",
        ),
        Method(
            "ablation_cam", "Ablation-CAM", cam_family(cams.ablation_cam), "cam", layer="any",
            needs_gradients=False, reports_progress=True,
            citation="Desai & Ramaswamy, WACV 2020",
        ),
        # the perturbation family of notebook 07: forward passes on masked inputs
        Method(
            "occlusion", "Occlusion", occlusion_map, "perturbation", signed=True,
            layer="none", needs_gradients=False, reports_progress=True,
            citation="Zeiler & Fergus, ECCV 2014",
        ),
        Method(
            "rise", "RISE", rise_map, "perturbation", layer="none", needs_gradients=False,
            reports_progress=True, citation="Petsiuk et al., BMVC 2018",
        ),
    ):
        register(record)


_register_course_methods()
