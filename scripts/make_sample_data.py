"""Copy the sample photos out of scikit-image's wheel and build the two-object image.

Run from the repository root:  ``python scripts/make_sample_data.py``

Everything here is deterministic, so re-running it reproduces the files in ``data/`` byte for byte
(PNG encoding by Pillow; the JPEG rocket is re-encoded as PNG so every sample has one format).
The two-object image puts Chelsea the cat (left) beside the espresso cup (right) on a neutral grey
square, so that a class-discriminative method can be asked "where is the cat?" and "where is the
espresso?" about the same picture. The exact boxes of both objects are written into the
``cat_and_coffee`` entry of ``data/boxes.json`` (the one file of object boxes, read by
``xai_helpers.boxes``) by this script, because it knows them; the other entries, drawn by hand,
are kept as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data"

SAMPLES = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "astronaut": skimage.data.astronaut,
}

CANVAS = 512  # square, so the model's centre crop keeps both halves
TILE = 256  # each object is scaled to this width
GREY = 128


def _tile(image: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """Crop ``box`` = (left, top, right, bottom) and scale it to TILE pixels wide."""
    crop = Image.fromarray(image).crop(box)
    height = round(crop.height * TILE / crop.width)
    return crop.resize((TILE, height), Image.Resampling.BICUBIC)


def make_two_objects() -> tuple[Image.Image, dict[str, list[int]]]:
    """Chelsea's face on the left, the espresso cup and saucer on the right, on grey."""
    cat = _tile(skimage.data.chelsea(), (40, 0, 340, 300))  # the face, 300 x 300
    cup = _tile(skimage.data.coffee(), (70, 10, 490, 400))  # cup and saucer, 420 x 390
    canvas = Image.new("RGB", (CANVAS, CANVAS), (GREY, GREY, GREY))
    boxes = {}
    for name, tile, left in (("cat", cat, 0), ("espresso", cup, TILE)):
        top = (CANVAS - tile.height) // 2
        canvas.paste(tile, (left, top))
        boxes[name] = [left, top, left + tile.width, top + tile.height]
    return canvas, boxes


def format_boxes(data: dict) -> str:
    """``boxes.json`` as it is kept: one line per object, so that a diff shows one box."""
    lines = ["{"]
    images = list(data.items())
    for i, (image, objects) in enumerate(images):
        comma = "," if i < len(images) - 1 else ""
        if image.startswith("_"):  # a comment
            lines.append(f"  {json.dumps(image)}: {json.dumps(objects)}{comma}")
            continue
        lines.append(f"  {json.dumps(image)}: {{")
        entries = list(objects.items())
        for j, (label, entry) in enumerate(entries):
            sep = "," if j < len(entries) - 1 else ""
            lines.append(f"    {json.dumps(label)}: {json.dumps(entry)}{sep}")
        lines.append(f"  }}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


def write_boxes(boxes: dict[str, list[int]], path: Path) -> None:
    """Put the two-object image's exact boxes into ``boxes.json``, keeping everything else."""
    data = json.loads(path.read_text())
    entry = data.setdefault("cat_and_coffee", {})
    classes = {"cat": [281, 282, 283, 284, 285], "espresso": [967]}
    for label, box in boxes.items():
        entry.setdefault(label, {"box": box, "classes": classes[label]})["box"] = box
    path.write_text(format_boxes(data))


def main() -> None:
    DATA.mkdir(exist_ok=True)
    for name, loader in SAMPLES.items():
        Image.fromarray(loader()).save(DATA / f"{name}.png", optimize=True)
    image, boxes = make_two_objects()
    image.save(DATA / "cat_and_coffee.png", optimize=True)
    write_boxes(boxes, DATA / "boxes.json")
    print("wrote", sorted(p.name for p in DATA.iterdir()))


if __name__ == "__main__":
    main()
