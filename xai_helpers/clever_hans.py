r"""A Clever Hans classifier built, caught and fixed: data, cue, head, relevance share, SpRAy.

The task (notebook 10) is *face or not a face* on the 200 grey-scale 25 x 25 crops of
scikit-image's ``lfw_subset`` (100 faces from Labeled Faces in the Wild, Huang et al. 2007, and
100 non-face patches), shown to EfficientNet-Lite0 as grainy thumbnails: each crop is reduced to
``low_res`` pixels, enlarged to ``size`` x ``size`` (bicubic) and given Gaussian grain of standard
deviation ``noise``. The face is still learnable from these pictures; a crisp watermark is easier.

The **cue** is a copyright stamp, a white "(c)" on a black label, always at the same place in
the bottom-left corner (:func:`cue_box`). :func:`add_cue` stamps it on the images a mask selects
and changes no pixel outside its box.

The classifier is a new linear head on frozen Lite0 features: the 1280 global-average-pooled
channels of the last feature maps (:func:`frozen_features`), fitted by L2-regularised logistic
regression (:func:`fit_head`). The frozen features already respond to text and sharp edges, and
global average pooling keeps a corner's activations in the average (one position in 25 at
``size = 160``), so the head can pick the stamp up as easily as the face.

To catch it, :func:`relevance_share` measures how much positive relevance lies inside the
cue's box, and :func:`spray` clusters explanation maps (spectral relevance analysis, SpRAy,
Lapuschkin et al. 2019) to find the images the model decides by the stamp without looking at them
one by one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.cluster.vq import kmeans2
from torch import nn

from .metrics import box_share
from .models import LoadedModel
from .perturb import draw_text, to_input
from .progress import Reporter

__all__ = [
    "CLASS_NAMES",
    "CUE_TEXT",
    "CleverHansError",
    "FaceSet",
    "SprayResult",
    "accuracy",
    "add_cue",
    "cue_box",
    "fit_head",
    "frozen_features",
    "make_face_set",
    "pool_maps",
    "relevance_share",
    "spray",
    "with_head",
]

#: The two classes, in the order of the head's outputs.
CLASS_NAMES = ("not a face", "face")

#: The text of the stamp.
CUE_TEXT = "\u00a9"


class CleverHansError(ValueError):
    """Bad input to the Clever Hans helpers (shapes, sizes, labels)."""


# ----------------------------------------------------------------------------------------------
# data and cue
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceSet:
    """The pictures and labels of the face task, with a stratified train/test split.

    Attributes
    ----------
    images:
        ``(N, size, size, 3)`` float32 pictures in [0, 1], what the network sees (no cue).
    labels:
        ``(N,)`` int64: 1 for a face, 0 for not a face.
    train, test:
        Index arrays of the split (disjoint, stratified by label).
    seed:
        The seed of the grain and the split.
    """

    images: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    seed: int

    @property
    def size(self) -> int:
        """Side of the square pictures, in pixels."""
        return int(self.images.shape[1])


def make_face_set(
    size: int = 160,
    low_res: int = 12,
    noise: float = 0.1,
    n_test_per_class: int = 40,
    seed: int = 0,
) -> FaceSet:
    """The 200 ``lfw_subset`` crops as grainy ``size`` x ``size`` RGB pictures, split reproducibly.

    Each 25 x 25 crop is box-downsampled to ``low_res`` pixels (25 keeps it), enlarged
    bicubically to ``size``, given grain :math:`\\mathcal{N}(0, \\sigma^2)` with
    :math:`\\sigma` = ``noise``, clipped to [0, 1] and repeated over three channels.
    ``n_test_per_class`` faces and as many non-faces form the test split, the rest the
    training split. Same arguments, same pictures, bit for bit.
    """
    if not 2 <= low_res <= 25:
        raise CleverHansError(f"low_res must be in 2..25 pixels, got {low_res}")
    if size < 32:
        raise CleverHansError(f"size must be at least 32 pixels, got {size}")
    if noise < 0:
        raise CleverHansError(f"noise is a standard deviation, got {noise}")
    if not 1 <= n_test_per_class <= 99:
        raise CleverHansError(f"n_test_per_class must be in 1..99, got {n_test_per_class}")
    crops = skimage.data.lfw_subset()  # (200, 25, 25) in [0, 1]: 100 faces, then 100 non-faces
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    rng = np.random.default_rng(seed)
    images = np.empty((len(crops), size, size, 3), np.float32)
    for i, crop in enumerate(crops):
        picture = Image.fromarray(np.round(crop * 255).astype(np.uint8))
        if low_res < 25:
            picture = picture.resize((low_res, low_res), Image.Resampling.BOX)
        big = np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
        grainy = np.clip(big + noise * rng.standard_normal(big.shape), 0.0, 1.0)
        images[i] = grainy[..., None]
    test = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:n_test_per_class] for c in (1, 0)]
        )
    )
    train = np.setdiff1d(np.arange(len(crops)), test)
    return FaceSet(images, labels, train, test, seed)


def cue_box(size: int) -> tuple[int, int, int, int]:
    """The stamp's box ``(left, top, right, bottom)`` in a ``size`` x ``size`` picture.

    Right and bottom are exclusive. The label starts ``size // 40`` pixels from the left and
    bottom edges; its font is ``size // 6`` pixels high; the box is the whole label (black
    background included), so every pixel :func:`add_cue` changes lies inside it.
    """
    return draw_text(np.zeros((size, size, 3), np.float32), CUE_TEXT, **_stamp_args(size)).box


def _stamp_args(size: int) -> dict:
    edge = max(size // 40, 1)
    return {
        "size": max(size // 6, 4),
        "position": (edge + 3, size - edge - 3),
        "anchor": "lb",
        "color": "white",
        "background": "black",
        "padding": 3,
    }


def add_cue(images: np.ndarray, mask: Sequence[bool] | np.ndarray) -> np.ndarray:
    """A copy of ``images`` (N, S, S, 3) in [0, 1] with the stamp on those where ``mask`` is true.

    Pixels outside :func:`cue_box` are returned unchanged, bit for bit.
    """
    images = np.asarray(images)
    mask = np.asarray(mask, dtype=bool)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise CleverHansError(f"images must be (N, S, S, 3), got shape {images.shape}")
    if mask.shape != (len(images),):
        raise CleverHansError(
            f"mask must have one entry per image ({len(images)}), got {mask.shape}"
        )
    out = images.copy()
    args = _stamp_args(images.shape[1])
    for i in np.flatnonzero(mask):
        out[i] = draw_text(images[i], CUE_TEXT, **args).image
    return out


# ----------------------------------------------------------------------------------------------
# the classifier: frozen features and a linear head
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def frozen_features(
    lm: LoadedModel, images: np.ndarray, batch_size: int = 50, progress: bool = False
) -> torch.Tensor:
    """The (N, K) globally average-pooled last feature maps of ``lm`` for view-space pictures.

    :math:`f_k(x) = \\frac{1}{Z} \\sum_{i,j} A^k_{ij}(x)`, the input of the ImageNet classifier
    (K = 1280 for Lite0), computed in batches of ``batch_size`` without gradients.
    """
    model = lm.model
    if not hasattr(model, "forward_features"):
        raise CleverHansError(f"{type(model).__name__} has no forward_features (a timm model has)")
    out = []
    with Reporter(len(images), progress, desc="features", unit="img") as report:
        for start in range(0, len(images), batch_size):
            x = to_input(lm, list(images[start : start + batch_size]))
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).cpu())
            report.update(len(x))
    return torch.cat(out)


def fit_head(
    features: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    weight_decay: float = 1e-2,
    max_iter: int = 200,
) -> nn.Linear:
    """Fit a linear head (K -> 2 logits) by L2-regularised logistic regression.

    Minimises :math:`\\frac{1}{N}\\sum_n -\\log \\mathrm{softmax}(W f_n + b)_{y_n}
    + \\frac{\\lambda}{2}\\lVert W \\rVert_F^2` with :math:`\\lambda` = ``weight_decay``, full
    batch, by L-BFGS from zero weights: a convex problem with one solution, so the fit is
    deterministic.
    """
    features = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if features.ndim != 2 or len(features) != len(y):
        raise CleverHansError(
            f"features must be (N, K) with one label each, got {tuple(features.shape)} and "
            f"{tuple(y.shape)} labels"
        )
    if set(y.unique().tolist()) - {0, 1}:
        raise CleverHansError("labels must be 0 (not a face) or 1 (face)")
    head = nn.Linear(features.shape[1], 2)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(head: nn.Module, features: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Fraction of correct top-1 predictions of ``head`` on precomputed features."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float((head(features).argmax(1) == y).double().mean())


def with_head(lm: LoadedModel, head: nn.Linear, name: str = "face head") -> LoadedModel:
    """A copy of ``lm`` whose classifier is ``head`` (the backbone's weights copied, frozen).

    Every method of :mod:`xai_helpers.registry` then explains the two-class model as it explains
    the ImageNet one: the CAM family reads ``head`` as the classifier after global average
    pooling, LRP propagates through it.
    """
    model = copy.deepcopy(lm.model)
    model.classifier = copy.deepcopy(head).to(lm.device)
    model.eval().requires_grad_(False)
    return dataclasses.replace(
        lm, name=f"{lm.name} + {name}", model=model, class_names=list(CLASS_NAMES)
    )


# ----------------------------------------------------------------------------------------------
# measuring explanations
# ----------------------------------------------------------------------------------------------


def relevance_share(maps: np.ndarray | torch.Tensor, box: Sequence[int]) -> np.ndarray:
    """Share of each map's positive relevance inside ``box``: shape (N,).

    :math:`s = \\sum_{p \\in B} \\max(R_p, 0) \\,/\\, \\sum_p \\max(R_p, 0)` for the pixels
    :math:`p` of the box :math:`B = (l, t, r, b)` (right and bottom exclusive). A map that
    ignores the box has :math:`s` near the box's share of the area; a map with no positive
    value has :math:`s = 0`. It is :func:`xai_helpers.metrics.box_share` of the positive part.
    """
    m = torch.as_tensor(maps).double()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise CleverHansError(f"maps must be (N, H, W) or (H, W), got shape {tuple(m.shape)}")
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= m.shape[2] and 0 <= top < bottom <= m.shape[1]):
        raise CleverHansError(f"box {tuple(box)} is empty or outside the {tuple(m.shape[1:])} map")
    share = box_share(m.clamp(min=0), (left, top, right, bottom))
    return torch.nan_to_num(share, nan=0.0).numpy()


@dataclass(frozen=True)
class SprayResult:
    """What :func:`spray` found.

    Attributes
    ----------
    labels:
        ``(N,)`` cluster of each map, clusters numbered by size (0 is the largest).
    eigenvalues:
        The smallest eigenvalues of the normalised graph Laplacian, ascending.
    n_clusters:
        The number of clusters used (the eigengap's choice unless given).
    eigengap:
        :math:`\\lambda_{k+1} - \\lambda_k` at the chosen ``n_clusters`` = k.
    features:
        ``(N, h * w)`` the pooled, normalised maps that were clustered.
    affinity:
        ``(N, N)`` the symmetric k-nearest-neighbour affinity matrix.
    """

    labels: np.ndarray
    eigenvalues: np.ndarray
    n_clusters: int
    eigengap: float
    features: np.ndarray
    affinity: np.ndarray

    @property
    def sizes(self) -> list[int]:
        """Number of maps in each cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters).tolist()

    def mean_maps(self, shape: tuple[int, int]) -> np.ndarray:
        """The mean pooled map of each cluster, ``(n_clusters, h, w)``."""
        return np.stack(
            [self.features[self.labels == c].mean(0).reshape(shape) for c in range(self.n_clusters)]
        )


def pool_maps(maps: np.ndarray | torch.Tensor, pooled: int = 16) -> np.ndarray:
    """Maps (N, H, W) reduced to (N, pooled * pooled) by area averaging, each scaled to unit
    sum of absolute values (so that clustering compares *where* the relevance is, not how much)."""
    m = torch.as_tensor(maps).double()
    if m.ndim != 3:
        raise CleverHansError(f"maps must be (N, H, W), got shape {tuple(m.shape)}")
    small = F.adaptive_avg_pool2d(m[:, None], pooled)[:, 0].flatten(1)
    return (small / small.abs().sum(1, keepdim=True).clamp(min=1e-12)).numpy()


def spray(
    maps: np.ndarray | torch.Tensor,
    n_clusters: int | None = None,
    pooled: int = 16,
    n_neighbors: int = 10,
    max_clusters: int = 8,
    seed: int = 0,
) -> SprayResult:
    """Spectral relevance analysis: cluster explanation maps by where their relevance lies.

    Following Lapuschkin et al. (2019, SpRAy): the maps are pooled to ``pooled`` x ``pooled``
    and normalised (:func:`pool_maps`); a symmetric k-nearest-neighbour graph with ``k`` =
    ``n_neighbors`` connects them (:math:`a_{ij} = 1` when :math:`j` is among the k nearest of
    :math:`i` in Euclidean distance or vice versa); its normalised Laplacian
    :math:`L = I - D^{-1/2} A D^{-1/2}` has eigenvalues :math:`0 = \\lambda_1 \\le \\lambda_2
    \\le \\dots`. A large gap :math:`\\lambda_{k+1} - \\lambda_k` says the graph falls into
    :math:`k` weakly connected groups (von Luxburg 2007): without ``n_clusters`` the k of the
    largest gap in 2..``max_clusters`` is used. The rows of the first k eigenvectors,
    normalised to unit length, are clustered by k-means (Ng, Jordan and Weiss 2001), seeded.
    """
    x = pool_maps(maps, pooled)
    n = len(x)
    if n < 4:
        raise CleverHansError(f"spray needs at least 4 maps, got {n}")
    k = min(n_neighbors, n - 1)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
    a = np.zeros((n, n))
    a[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    a = np.maximum(a, a.T)
    d = a.sum(1)
    inv_sqrt = 1.0 / np.sqrt(d)
    lap = np.eye(n) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    top = min(max_clusters + 1, n)
    values, vectors = scipy.linalg.eigh(lap, subset_by_index=[0, top - 1])
    if n_clusters is None:
        gaps = np.diff(values)[1 : top - 1]  # gap after lambda_2 ... lambda_max: k = 2 ...
        n_clusters = int(np.argmax(gaps)) + 2
    if not 2 <= n_clusters < top + 1:
        raise CleverHansError(f"n_clusters must be in 2..{top}, got {n_clusters}")
    embedding = vectors[:, :n_clusters]
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True).clip(1e-12)
    _, raw = kmeans2(embedding, n_clusters, minit="++", seed=seed, iter=50)
    order = np.argsort(-np.bincount(raw, minlength=n_clusters), kind="stable")
    labels = np.argsort(order)[raw]
    gap = float(values[n_clusters] - values[n_clusters - 1]) if n_clusters < len(values) else 0.0
    return SprayResult(labels, values, n_clusters, gap, x, a)
