r"""The data of a batch evaluation: which images, which class each one is, where its objects are.

:func:`find_images` lists a folder recursively, in one sorted order that every process of a
sharded run sees alike. :func:`folder_labels` and :func:`read_labels_csv` give each image its
class: from class sub-folders (ImageNet's ``train/n01440764/...`` layout, or folders named by a
class index or class name) or from a CSV file with the columns ``image,label``. Boxes come from
the course's JSON format (``data/boxes.json``: an image stem, its objects, each with a box
``[left, top, right, bottom]`` in the photo's pixels and its classes) or from ImageNet's
validation XML files (one ``ILSVRC2012_val_00000001.xml`` per image, PASCAL VOC layout, the
object named by its WordNet id): :func:`read_boxes`.

:class:`ImageDataset` loads an image for a ``torch.utils.data.DataLoader``. A file that cannot
be read (truncated, not an image, too small) is not an exception that stops the run: its item
carries the one-line reason, and the job records the image as skipped.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .boxes import BOXES_PATH
from .images import DATA_DIR, SAMPLE_NAMES, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLES",
    "DataError",
    "ImageDataset",
    "ImageItem",
    "Loaded",
    "ObjectBox",
    "find_images",
    "folder_labels",
    "read_boxes",
    "read_labels_csv",
    "resolve_class",
]

#: File name endings (lower case) that are taken as images; other files are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

#: The name that stands for the course's sample photos (``data/``) with their boxes.
SAMPLES = "samples"

_WNID = re.compile(r"^n\d{8}$")


class DataError(ValueError):
    """The images, labels or boxes given to the evaluation cannot be used; the message says why."""


@dataclass(frozen=True)
class ObjectBox:
    """One annotated object: its box in the photo's own pixels and the classes that count as it.

    ``classes`` empty means the object counts for every class.
    """

    box: tuple[float, float, float, float]
    classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ImageItem:
    """One image of the run: its position, file, key (path relative to the folder), label, boxes."""

    index: int
    path: Path
    key: str
    label: int | None = None
    boxes: tuple[ObjectBox, ...] | None = None


@dataclass(frozen=True)
class Loaded:
    """An image as :class:`ImageDataset` returns it: the input tensor, or the reason it failed."""

    index: int
    x: torch.Tensor | None
    size: tuple[int, int] | None
    reason: str = ""


def find_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively; by :data:`IMAGE_SUFFIXES`), sorted by the
    path relative to ``root`` so that every process lists them in the same order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _hidden(p, root)
    ]
    if not found:
        raise DataError(
            f"no images under {root}; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@functools.lru_cache(maxsize=1)
def _wnids() -> dict[str, int]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {info.index_to_label_name(i): i for i in range(1000)}


def resolve_class(text: str, class_names: Sequence[str]) -> int | None:
    """The class index of ``text``: an index (``"285"``), a WordNet id (``"n02124075"``, as
    ImageNet's folders and XML files name classes) or a class name (``"Egyptian cat"``, any
    case); ``None`` when it is none of these."""
    text = text.strip()
    if text.isdigit():
        index = int(text)
        return index if index < len(class_names) else None
    if _WNID.match(text) and len(class_names) == 1000:
        return _wnids().get(text)
    lowered = [c.lower() for c in class_names]
    name = text.replace("_", " ").lower()
    return lowered.index(name) if name in lowered else None


def folder_labels(
    root: str | Path, paths: Sequence[Path], class_names: Sequence[str]
) -> dict[str, int] | None:
    """Labels from class sub-folders: ``{key: class}``, or ``None`` when the images do not sit
    in class folders (some image directly in ``root``, or no folder name is a class).

    The first folder below ``root`` names the class. A folder that is not a class while others
    are raises :class:`DataError` naming it (a typo would otherwise drop its images silently).
    """
    root = Path(root)
    rel = [p.relative_to(root) for p in paths]
    if any(len(r.parts) < 2 for r in rel):
        return None
    folders = sorted({r.parts[0] for r in rel})
    classes = {f: resolve_class(f, class_names) for f in folders}
    unknown = [f for f, c in classes.items() if c is None]
    if len(unknown) == len(folders):
        return None
    if unknown:
        raise DataError(
            f"class folders {', '.join(unknown[:5])} name no class (use an index, a WordNet id "
            "like n02124075, or a class name), or pass --labels none"
        )
    return {r.as_posix(): int(classes[r.parts[0]]) for r in rel}  # type: ignore[arg-type]


def read_labels_csv(path: str | Path, class_names: Sequence[str]) -> dict[str, int]:
    """Labels from a CSV file with a header ``image,label``: ``image`` is the path relative to the
    image folder (or the file name, or its stem), ``label`` as :func:`resolve_class` reads it.

    Returns ``{image: class}`` keyed as written in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} needs a header line with the columns image,label")
        out = {}
        for line, row in enumerate(reader, start=2):
            index = resolve_class(row["label"] or "", class_names)
            if index is None:
                raise DataError(f"{path}, line {line}: {row['label']!r} names no class")
            out[row["image"].strip()] = index
    return out


def match_key(key: str, table: dict[str, Any]) -> Any:
    """``table``'s entry for an image key: by relative path, file name, or stem, in that order."""
    p = Path(key)
    for candidate in (key, p.name, p.stem):
        if candidate in table:
            return table[candidate]
    return None


def read_boxes(source: str | Path, class_names: Sequence[str]) -> dict[str, tuple[ObjectBox, ...]]:
    """Boxes by image (stem or relative path): from a course JSON file or a folder of ImageNet
    validation XML files.

    The course format is ``{"chelsea": {"cat": {"box": [l, t, r, b], "classes": [281, ...]}}}``
    (keys starting with ``_`` are comments). In ImageNet's XML files each ``object`` has a
    ``name`` (a WordNet id, or a class index or name) and a ``bndbox`` with ``xmin``, ``ymin``,
    ``xmax``, ``ymax`` in the photo's pixels, read as the box ``(xmin, ymin, xmax, ymax)``.
    """
    source = Path(source)
    if source.is_dir():
        return _read_xml_folder(source, class_names)
    if not source.is_file():
        raise DataError(f"boxes {source} not found: pass a JSON file or a folder of XML files")
    try:
        raw = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{source} is not valid JSON: {err}") from err
    out: dict[str, tuple[ObjectBox, ...]] = {}
    for image, objects in raw.items():
        if image.startswith("_"):
            continue
        try:
            out[image] = tuple(
                ObjectBox(tuple(float(v) for v in o["box"]), tuple(int(c) for c in o["classes"]))
                for o in objects.values()
            )
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise DataError(
                f"{source}: entry {image!r} is not {{label: {{box: [l, t, r, b], classes: "
                f"[...]}}}} ({err})"
            ) from err
    return out


def _read_xml_folder(folder: Path, class_names: Sequence[str]) -> dict[str, tuple[ObjectBox, ...]]:
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise DataError(f"no .xml files in {folder}")
    out = {}
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            raise DataError(f"{path} is not valid XML: {err}") from err
        objects = []
        for obj in root.iter("object"):
            name = obj.findtext("name", default="")
            index = resolve_class(name, class_names)
            bb = obj.find("bndbox")
            if bb is None:
                continue
            box = tuple(
                float(bb.findtext(k, default="nan")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            objects.append(ObjectBox(box, () if index is None else (index,)))
        out[path.stem] = tuple(objects)
    return out


def sample_items() -> tuple[Path, Path]:
    """The folder of the course's sample photos and their boxes file."""
    missing = [n for n in SAMPLE_NAMES if not (DATA_DIR / f"{n}.png").is_file()]
    if missing:
        raise DataError(
            f"sample photos {', '.join(missing)} are missing from {DATA_DIR}; run "
            "`python scripts/make_sample_data.py` from the repository root"
        )
    return DATA_DIR, BOXES_PATH


class ImageDataset(Dataset):
    """Images for a ``DataLoader``: item ``i`` is a :class:`Loaded` with the model's input.

    ``transform`` is the model's preprocessing (``LoadedModel.transform``). Any error while
    reading or transforming a file becomes the item's ``reason`` (one line), never an exception.
    """

    def __init__(self, items: Sequence[ImageItem], transform: Any) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Loaded:
        item = self.items[i]
        try:
            image = load_image(item.path)
            x = self.transform(image)
            return Loaded(item.index, x, image.size)
        except Exception as err:  # noqa: BLE001 -- every failure is recorded, the run goes on
            message = " ".join(str(err).split()) or type(err).__name__
            return Loaded(item.index, None, None, f"{type(err).__name__}: {message}")


def collate(batch: list[Loaded]) -> list[Loaded]:
    """The identity: a batch stays a list, so that failed items travel with the others."""
    return batch
