"""The explorer without its widgets: images, predictions, class search, maps and their cache.

:class:`ExplorerState` holds everything :class:`xai_helpers.widgets.Explorer` shows and
computes, as plain Python: the images (samples and uploads) with their predictions, the methods
(records of :data:`xai_helpers.registry.METHODS`), the layers, and an LRU cache of maps keyed
by a :class:`Choice`. :class:`ClassSearch` finds an ImageNet class from what a person types.
Nothing here imports ipywidgets; tests drive it directly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from .explain import explain
from .hooks import feature_map_layers
from .images import MAX_BYTES, MAX_PIXELS, SAMPLE_NAMES, decode_image, sample_path
from .models import LoadedModel
from .progress import ProgressFn
from .registry import METHODS, Method, get_method

__all__ = [
    "SAME_PICTURE_REASONS",
    "Choice",
    "ClassSearch",
    "ExplainFn",
    "ExplorerState",
    "SearchResult",
    "format_probability",
]

#: ``explain_fn(loaded, x, method, target, **kwargs) -> (N, H, W)`` map at input resolution; by
#: default :func:`xai_helpers.explain.explain` (``kwargs``: ``layer``, ``progress``).
ExplainFn = Callable[..., torch.Tensor]

#: Why two methods can draw the same picture, for the explorer's one-line note. Keys are pairs of
#: method names; a pair not listed gets a note without a reason.
SAME_PICTURE_REASONS: dict[frozenset[str], str] = {
    frozenset({"cam", "grad_cam"}): (
        "behind global average pooling and one linear layer, Grad-CAM's channel weights are "
        "CAM's divided by the h*w positions, and min-max normalisation removes that factor"
    ),
}


class Choice(NamedTuple):
    """What is explained: (image, method, class index, layer); ``layer`` is ``""`` for methods
    that read no layer. Equal to the plain tuple, so ``explorer.key == ("chelsea", ...)``."""

    image: str
    method: str
    target: int
    layer: str


def format_probability(p: float) -> str:
    """Probabilities in one format everywhere in the explorers: ``71.3 %``, ``< 0.1 %``."""
    return "< 0.1 %" if p < 0.0005 else f"{100 * p:.1f} %"


# ----------------------------------------------------------------------------------------------
# class search
# ----------------------------------------------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[_\-]", " ", text.lower()).split())


def imagenet_synonyms(n: int) -> list[str] | None:
    """The comma-separated WordNet names of each ImageNet class (``"tabby, tabby cat"``), from
    timm's offline copy of the synset list; ``None`` when that does not have ``n`` classes."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        if info.num_classes() != n:
            return None
        return [info.index_to_description(i) for i in range(n)]
    except Exception:  # an older timm without ImageNetInfo: search by the plain names only
        return None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The classes that match a query, best first, and a one-line message about them."""

    query: str
    matches: tuple[int, ...]
    message: str

    @property
    def best(self) -> int | None:
        return self.matches[0] if self.matches else None


class ClassSearch:
    """Find a class from a plain name, part of one, a synonym, an index or a close misspelling.

    Every class has its display name (``loaded.class_names``) and its WordNet synonyms
    (``"tabby, tabby cat"``). A query matches, from best to worst: a name exactly; whole words
    of a name (``cat`` in ``tiger cat``); the start of a name (``tabb``); the start of words
    (``gold fi``); any part of a name; a close misspelling (``expresso``). Within one tier the
    class the model finds most probable on the current image comes first, so ``cat`` on the cat
    photo finds the cat the model sees.
    ``281`` and ``281: tabby`` (a suggestion of the search box) name a class by index.
    """

    def __init__(self, class_names: Sequence[str], synonyms: Sequence[str] | None = None) -> None:
        self.names = list(class_names)
        synonyms = synonyms if synonyms is not None else imagenet_synonyms(len(self.names))
        self.terms: list[tuple[str, ...]] = []
        for i, name in enumerate(self.names):
            extra = synonyms[i].split(",") if synonyms is not None else []
            terms = dict.fromkeys(_normal(t) for t in [name, *extra] if t.strip())
            self.terms.append(tuple(terms))
        self._all = {t: i for i, terms in enumerate(self.terms) for t in reversed(terms)}

    @property
    def options(self) -> list[str]:
        """Suggestions for a search box: ``"281: tabby, tabby cat"`` for each class."""
        return [f"{i}: {', '.join(terms)}" for i, terms in enumerate(self.terms)]

    def label(self, index: int) -> str:
        """``"tabby (281)"``."""
        return f"{self.names[index]} ({index})"

    def find(self, query: str, probabilities: Sequence[float] | None = None) -> SearchResult:
        """The matching classes, best first (see the class docstring)."""
        q = _normal(query)
        if not q:
            return SearchResult(query, (), "type a class name, part of one, or its index")
        index = re.fullmatch(r"(\d+)(:.*)?", q)
        if index and int(index.group(1)) < len(self.names):
            i = int(index.group(1))
            return SearchResult(query, (i,), f"class {self.label(i)}")
        tiers: dict[int, float] = {}
        for i, terms in enumerate(self.terms):
            found = [tier for t in terms if (tier := _tier(q, t)) is not None]
            if found:
                tiers[i] = min(found)
        if not tiers:
            close = difflib.get_close_matches(q, list(self._all), n=5, cutoff=0.75)
            for rank, term in enumerate(close):  # most similar first
                tiers.setdefault(self._all[term], 5 + rank / 10)
        if not tiers:
            return SearchResult(query, (), f"no class matches {query.strip()!r}")
        p = probabilities if probabilities is not None else [0.0] * len(self.names)
        order = tuple(sorted(tiers, key=lambda i: (tiers[i], -float(p[i]), i)))
        best = self.label(order[0])
        if len(order) == 1:
            return SearchResult(query, order, f"{query.strip()!r}: {best}")
        others = ", ".join(self.names[i] for i in order[1:4]) + (", ..." if len(order) > 4 else "")
        return SearchResult(
            query, order, f"{query.strip()!r}: {best}; {len(order) - 1} more match ({others})"
        )


def _tier(q: str, term: str) -> int | None:
    """How well ``term`` matches the query ``q``: 0 best, ``None`` not at all."""
    if term == q:
        return 0
    if f" {q} " in f" {term} ":  # whole words: "cat" in "tiger cat" before "catamaran"
        return 1
    if term.startswith(q):
        return 2
    words = term.split()
    if all(any(w.startswith(part) for w in words) for part in q.split()):
        return 3
    if q in term:
        return 4
    return None


# ----------------------------------------------------------------------------------------------
# the state
# ----------------------------------------------------------------------------------------------


class ExplorerState:
    """Images, predictions, methods, layers and cached maps of one explorer.

    Parameters
    ----------
    loaded:
        The model. The explorer computes on its own copy of the network (``copy_model=True``)
        so that a cell the student runs while the explorer computes in the background can
        never see the explorer's hooks, nor the explorer theirs.
    methods:
        Method names or records; default every method registered in
        :data:`xai_helpers.registry.METHODS` when the explorer is built.
    explain_fn:
        ``(loaded, x, method, target, **kwargs) -> (N, H, W)``, default
        :func:`xai_helpers.explain.explain`; tests pass a cheap stand-in.
    top_k, cache_size, max_bytes, max_pixels:
        Classes offered per image; maps kept; upload limits (:func:`decode_image`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        methods: Sequence[str | Method] | None = None,
        explain_fn: ExplainFn | None = None,
        top_k: int = 5,
        cache_size: int = 32,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
        copy_model: bool = True,
    ) -> None:
        self.user_model = loaded
        self.loaded = (
            dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)) if copy_model else loaded
        )
        records = [get_method(m) for m in (methods if methods is not None else list(METHODS))]
        self.methods: dict[str, Method] = {m.name: m for m in records}
        if not self.methods:
            raise ValueError("the explorer needs at least one method; see registry.METHODS")
        self.explain_fn = explain_fn or _default_explain
        self.top_k, self.cache_size = top_k, cache_size
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.computed = 0
        self.maps: OrderedDict[Choice, np.ndarray] = OrderedDict()
        self.seconds: dict[Choice, float] = {}
        self.search = ClassSearch(loaded.class_names)
        #: Held while the network runs: one computation at a time on the explorer's copy.
        self.lock = threading.Lock()
        self.sources: dict[str, Path | Image.Image] = {n: sample_path(n) for n in SAMPLE_NAMES}
        #: Short menu labels (never cut off); the description goes with the prediction table.
        self.labels: dict[str, str] = {n: n for n in SAMPLE_NAMES}
        self.descriptions: dict[str, str] = dict(SAMPLE_NAMES)
        self._inputs: dict[str, torch.Tensor] = {}
        self._views: dict[str, np.ndarray] = {}
        self._probs: dict[str, torch.Tensor] = {}
        self._classify(list(SAMPLE_NAMES))  # image switches never wait for the network
        first = self._inputs[next(iter(SAMPLE_NAMES))]
        layers = [name for name, _ in feature_map_layers(self.loaded.model, first)]
        cam_layer = self.loaded.cam_layer
        self.layers = [cam_layer, *(n for n in layers if n != cam_layer)]

    # -- images ------------------------------------------------------------------------------
    def _classify(self, keys: list[str]) -> None:
        with self.lock:
            batch = torch.cat([self.loaded.preprocess(self.sources[k]) for k in keys])
            with torch.no_grad():
                probs = torch.softmax(self.loaded.model(batch).float(), dim=1).cpu()
        for k, x, p in zip(keys, batch, probs, strict=True):
            self._inputs[k], self._probs[k] = x[None], p
            self._views[k] = self.loaded.view(self.sources[k])

    def input(self, image: str) -> torch.Tensor:
        return self._inputs[image]

    def view(self, image: str) -> np.ndarray:
        """The picture the network sees, (S, S, 3) in [0, 1]."""
        return self._views[image]

    def probabilities(self, image: str) -> torch.Tensor:
        return self._probs[image]

    def top_classes(self, image: str) -> list[int]:
        return self._probs[image].topk(self.top_k).indices.tolist()

    def add_upload(self, name: str, data: bytes) -> str:
        """Decode and classify an uploaded file; return its image key (``"upload: name"``).

        Raises :class:`xai_helpers.images.ImageLoadError` (a one-line message) for a file that
        is too large or not an image; nothing changes then. A new file under a name already
        uploaded replaces the old picture and forgets its maps.
        """
        return self.add_picture(name, self.decode_upload(name, data))

    def decode_upload(self, name: str, data: bytes) -> Image.Image:
        """Check and decode an uploaded file (no network involved): :func:`decode_image`."""
        return decode_image(data, name, max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    def add_picture(self, name: str, picture: Image.Image) -> str:
        """Add a decoded upload under ``"upload: name"`` and classify it (waits for the network)."""
        key = f"upload: {name}"
        for k in [k for k in list(self.maps) if k.image == key]:
            del self.maps[k]
        self.sources[key] = picture
        self.labels[key] = f"{key} ({picture.width}x{picture.height})"
        self.descriptions[key] = f"your upload, {picture.width}x{picture.height} pixels"
        self._classify([key])
        return key

    # -- choices -----------------------------------------------------------------------------
    def method(self, name: str) -> Method:
        return self.methods[name]

    def choice(self, image: str, method: str, target: int, layer: str) -> Choice:
        """The choice as computed: CAM's layer is the model's (``"fixed"``), LRP's none."""
        use = self.methods[method].layer
        layer = self.loaded.cam_layer if use == "fixed" else "" if use == "none" else layer
        return Choice(image, method, int(target), layer)

    def describe(self, choice: Choice) -> str:
        where = f", layer {choice.layer}" if choice.layer else ""
        label = self.methods[choice.method].label
        name = self.loaded.class_names[choice.target]
        return f"{label} of '{name}' ({choice.target}) on {choice.image}{where}"

    # -- maps --------------------------------------------------------------------------------
    def cached(self, choice: Choice) -> np.ndarray | None:
        heatmap = self.maps.get(choice)
        if heatmap is not None:
            self.maps.move_to_end(choice)
        return heatmap

    def compute(self, choice: Choice, progress: ProgressFn | None = None) -> np.ndarray:
        """Explain ``choice`` (blocking), cache the map and return it.

        ``progress(done, total)`` is passed to methods that report progress; it may raise to
        cancel the run (the method's ``finally`` blocks restore the model).
        """
        method = self.methods[choice.method]
        kwargs: dict[str, Any] = {"layer": choice.layer} if choice.layer else {}
        if method.reports_progress:
            kwargs["progress"] = progress if progress is not None else False
        start = time.perf_counter()
        with self.lock:
            maps = self.explain_fn(
                self.loaded, self._inputs[choice.image], choice.method, choice.target, **kwargs
            )
        heatmap = maps.detach().cpu().double().numpy()[0]
        self.computed += 1
        self.seconds[choice] = time.perf_counter() - start
        self.maps[choice] = heatmap
        while len(self.maps) > self.cache_size:
            self.seconds.pop(self.maps.popitem(last=False)[0], None)
        return heatmap

    def same_picture(self, choice: Choice, atol: float = 1e-5) -> tuple[str, float] | None:
        """Another cached method whose map of this image, class and layer is the same picture.

        Returns ``(method name, largest absolute difference)`` or ``None``. Only unsigned maps
        are compared (they arrive normalised to [0, 1], so ``atol`` is a fraction of the range).
        """
        heatmap = self.maps.get(choice)
        if heatmap is None or self.methods[choice.method].signed:
            return None
        for other, other_map in list(self.maps.items()):  # the worker may add meanwhile
            same_place = (other.image, other.target) == (choice.image, choice.target)
            if other.method == choice.method or not same_place or other.method not in self.methods:
                continue
            if other.layer != choice.layer or self.methods[other.method].signed:
                continue
            if other_map.shape == heatmap.shape:
                difference = float(np.abs(other_map - heatmap).max())
                if difference <= atol:
                    return other.method, difference
        return None

    def same_picture_note(self, choice: Choice) -> str | None:
        """The one-line note for :meth:`same_picture`, with the reason when it is known."""
        same = self.same_picture(choice)
        if same is None:
            return None
        other, difference = same
        reason = SAME_PICTURE_REASONS.get(frozenset({other, choice.method}))
        label = self.methods[other].label
        note = f"Same picture as {label} (largest difference {difference:.1g})"
        return note + (f": {reason}." if reason else ".")


def _default_explain(
    loaded: LoadedModel, x: torch.Tensor, method: str, target: int | str | None, **kwargs: Any
) -> torch.Tensor:
    return explain(loaded, x, method, target=target, **kwargs)
