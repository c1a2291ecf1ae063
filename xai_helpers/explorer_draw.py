"""What the explorers draw: the map picture, the prediction table, status lines, still pictures.

Pictures are rendered with matplotlib's object API (``Figure`` + Agg canvas, no pyplot), so
they can be drawn on the explorer's worker thread without touching the notebook's figures.

The map picture has a fixed layout: the photo, its colour bar and the two title lines sit at the
same place for every method, so switching from Grad-CAM to LRP never moves the picture. It is
rendered for display up to ~960 px wide (fonts of at least 13 pt at that size) and scales down
with the page; the widgets give it ``width: 100%`` up to that size.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from .explorer_state import format_probability
from .registry import Method
from .viz import color_limits, show_map

__all__ = [
    "CSS",
    "STILL_NOTE",
    "figure_bytes",
    "map_picture",
    "new_figure",
    "prediction_table",
    "status_html",
    "still_picture",
]

#: The one-line note on every still picture stored in a notebook.
STILL_NOTE = "Still picture: run the cells to use the controls."

DPI = 150
#: Figure size of the map picture (inches): 960 x 810 px at :data:`DPI`.
MAP_INCHES = (6.4, 5.4)
TITLE_PT, TICK_PT = 13, 11

#: Styles of the explorers' HTML parts. Messages use the theme's text colour on a tinted band,
#: so that they read on the light and the dark JupyterLab theme alike; the stale picture is
#: dimmed and grey until the new one arrives.
CSS = """<style>
.xai-explorer .xai-stale { opacity: 0.35; filter: grayscale(100%); transition: opacity 0.2s; }
.xai-explorer .xai-msg { padding: 3px 8px; margin: 2px 0; border-left: 4px solid transparent;
  color: var(--jp-content-font-color1, inherit); line-height: 1.45; overflow-wrap: anywhere; }
.xai-explorer .xai-msg-done { border-left-color: #43a047; }
.xai-explorer .xai-msg-busy { border-left-color: #1e88e5; background: rgba(30, 136, 229, 0.13); }
.xai-explorer .xai-msg-error { border-left-color: #e53935; background: rgba(229, 57, 53, 0.16); }
.xai-explorer .xai-msg-note { border-left-color: #fb8c00; background: rgba(251, 140, 0, 0.15); }
.xai-explorer table.xai-predictions { border-collapse: collapse;
  font-size: clamp(13px, 0.95vw, 19px); color: var(--jp-content-font-color1, inherit); }
.xai-explorer table.xai-predictions th, .xai-explorer table.xai-predictions td {
  padding: 2px 10px 2px 0; text-align: left; }
.xai-explorer table.xai-predictions td.xai-num { text-align: right;
  font-variant-numeric: tabular-nums; }
.xai-explorer table.xai-predictions tr.xai-chosen { font-weight: bold; }
</style>"""


def new_figure(inches: tuple[float, float], dpi: int = DPI, layout: str | None = None) -> Figure:
    """A figure outside pyplot (safe on a worker thread, never shown by the inline backend)."""
    fig = Figure(figsize=inches, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig: Figure, fmt: str = "jpeg") -> bytes:
    """The figure as JPEG (photos with overlays: a quarter of the PNG's size) or PNG bytes."""
    buffer = io.BytesIO()
    kwargs = {"pil_kwargs": {"quality": 88}} if fmt == "jpeg" else {}
    fig.savefig(buffer, format=fmt, dpi=fig.dpi, facecolor="white", **kwargs)
    return buffer.getvalue()


def map_picture(
    heatmap: np.ndarray,
    view: np.ndarray,
    method: Method,
    title: str,
    subtitle: str,
    cmap: str | None = None,
    alpha: float = 0.5,
) -> bytes:
    """The explorer's picture: ``heatmap`` over ``view`` with its colour bar, as JPEG bytes.

    Unsigned maps (the CAM family, normalised to [0, 1] by the method) are drawn over the photo
    with opacity ``alpha``; signed maps with :func:`xai_helpers.viz.show_map`'s ``"signed"``
    scale: a diverging colour map centred at zero, clipped symmetrically at the 99.5th
    percentile of the absolute value, over a grey copy of the photo.
    """
    width, height = MAP_INCHES
    fig = new_figure(MAP_INCHES)
    side, margin, top = 4.4, 0.15, 0.85  # inches: the photo's square, margins, title band
    ax = fig.add_axes((margin / width, margin / height, side / width, side / height))
    cax = fig.add_axes(
        ((margin + side + 0.18) / width, margin / height, 0.2 / width, side / height)
    )
    scale = "signed" if method.signed else "values"
    cmap = cmap or ("bwr" if method.signed else "jet")
    show_map(ax, heatmap, view, None, cmap=cmap, alpha=alpha, scale=scale, colorbar=False)
    shown, lo, hi, what = color_limits(heatmap, scale)
    clipped = method.signed and bool(np.nanmax(np.abs(shown)) > hi)
    bar = fig.colorbar(
        ScalarMappable(norm=Normalize(lo, hi), cmap=cmap),
        cax=cax,
        extend="both" if clipped else "neither",
    )
    normalised = not method.signed and lo >= 0.0 and hi <= 1.0 + 1e-6
    label = "value (normalised to [0, 1] by the method)" if normalised else what
    bar.set_label(label, fontsize=TICK_PT)
    bar.ax.tick_params(labelsize=TICK_PT)
    fig.text(
        margin / width, 1 - 0.12 / height, title, fontsize=TITLE_PT + 1, va="top", fontweight="bold"
    )
    fig.text(margin / width, 1 - (0.12 + top / 2) / height, subtitle, fontsize=TITLE_PT, va="top")
    return figure_bytes(fig)


def prediction_table(
    model_name: str,
    image_label: str,
    probabilities: torch.Tensor,
    class_names: Sequence[str],
    top: Sequence[int],
    target: int,
) -> str:
    """The top-k classes of the image (and the explained class if not among them) as HTML."""
    rows = []
    shown = list(top) + ([target] if target not in top else [])
    for i in shown:
        rank = int((probabilities > probabilities[i]).sum()) + 1
        chosen = " class='xai-chosen'" if i == target else ""
        rows.append(
            f"<tr{chosen}><td class='xai-num'>{rank}</td><td class='xai-num'>{i}</td>"
            f"<td>{html.escape(class_names[i])}</td>"
            f"<td class='xai-num'>{format_probability(float(probabilities[i]))}</td></tr>"
        )
    return (
        f"<div><b>{html.escape(model_name)}</b> on {html.escape(image_label)}</div>"
        "<table class='xai-predictions'><thead><tr><th>rank</th><th>class</th><th>name</th>"
        f"<th>probability</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def status_html(text: str, kind: str = "done", note: str | None = None) -> str:
    """A status line (``kind``: ``done``, ``busy``, ``error`` or ``note``) and an optional note.

    ``text`` and ``note`` are plain text (escaped here); each is one line.
    """
    icon = "⚠ " if kind == "error" else ""  # in every font; the band colour says the rest
    text, note = _escape(text), _escape(note) if note else None
    out = f"<div class='xai-msg xai-msg-{kind}'>{icon}{text}</div>"
    if note:
        out += f"<div class='xai-msg xai-msg-note'>ℹ {note}</div>"
    return out


def _escape(text: str) -> str:
    """One line of element text: whitespace collapsed, ``<>&`` escaped (quotes need not be)."""
    return html.escape(" ".join(str(text).split()), quote=False)


def still_picture(picture: bytes, note: str = STILL_NOTE) -> bytes:
    """``picture`` (JPEG or PNG bytes) with a band below it that says what it is: a still."""
    image = Image.open(io.BytesIO(picture)).convert("RGB")
    size = max(14, image.width // 40)
    font = ImageFont.truetype(str(_font()), size=size)
    band = int(size * 2.2)
    out = Image.new("RGB", (image.width, image.height + band), (238, 238, 238))
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text(
        (size, image.height + band // 2), "▶ " + note, fill=(20, 20, 20), font=font, anchor="lm"
    )
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _font() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
