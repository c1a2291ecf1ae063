"""Tests of the robustness explorer (xai_helpers.explorer_robustness and its widget) with a
tiny model and an exactly equivariant stand-in map, and of the text progress bars."""

from __future__ import annotations

import base64
import datetime
import io
import re
import threading

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from xai_helpers import perturb as P
from xai_helpers.explorer_draw import STILL_NOTE
from xai_helpers.models import LoadedModel, imagenet_classes
from xai_helpers.progress import Reporter, TextProgress, progress
from xai_helpers.registry import METHODS, Method, register, unregister
from xai_helpers.widgets import (
    RobustnessExplorer,
    explore,
    plot_exploration,
    robustness_explorer,
)

matplotlib.use("Agg")


class MeanLogit(nn.Module):
    """Logit of class 3 = 8 + 4 x mean of the red channel; the rest 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 1000, dtype=x.dtype)
        logits[:, 3] = 8.0 + 4.0 * x[:, 0].mean(dim=(1, 2))
        return logits


def tiny_loaded(size: int = 48) -> LoadedModel:
    return LoadedModel(
        name="mean_logit",
        model=MeanLogit().eval(),
        geometry=lambda im: im.convert("RGB").resize((size, size)),
        transform=lambda im: torch.zeros(3, size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        class_names=imagenet_classes(),
        cam_layer="",
        input_size=size,
        device=torch.device("cpu"),
        pretrained=False,
    )


def brightness(loaded, x, method, target, **kwargs):
    """A 'map' that moves exactly with the picture: its mean intensity (rotation-equivariant)."""
    assert method in ("brightness", "red", "slow")
    if method == "red":  # channel-sensitive: what a BGR swap changes
        return x[:, 0]
    if "progress" in kwargs and callable(kwargs["progress"]):
        for done in range(11):
            kwargs["progress"](done, 10)
            if done == 3 and GATE.get("gate") is not None:
                GATE["reached"].set()
                assert GATE["gate"].wait(10)
    return x.mean(dim=1)


GATE: dict[str, threading.Event] = {}


def smooth_picture(size: int = 48) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    blob = np.exp(-((xs - 0.35 * size) ** 2 + (ys - 0.6 * size) ** 2) / (2 * (0.15 * size) ** 2))
    return np.stack([blob, 0.5 * blob, 1 - blob], axis=-1).astype(np.float32)


@pytest.fixture()
def stand_ins():
    """The stand-in methods as registry records, so the explorer shows their labels."""

    def record(name: str, label: str, **kwargs) -> Method:
        def fn(loaded, x, target=None, **kw):
            return brightness(loaded, x, name, target, **kw)

        return Method(name, label, fn, "gradient", layer="none", **kwargs)

    records = [
        record("brightness", "Brightness"),
        record("red", "Red channel"),
        record("slow", "Slow", reports_progress=True),
    ]
    for r in records:
        register(r)
    yield [r.name for r in records]
    for r in records:
        unregister(r.name)
    GATE.clear()


# ----------------------------------------------------------------------------------------------
# explore
# ----------------------------------------------------------------------------------------------


def test_explore_identity_agrees_perfectly() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    res = explore(lm, pic, "brightness", explain_fn=brightness)
    assert res.target == 3 and res.before.top1[0] == 3
    assert res.p_after == pytest.approx(res.p_before)
    assert res.agreement.spearman == pytest.approx(1.0) and res.agreement.iou == 1.0
    assert res.valid.all() and res.channels == "RGB"


def test_explore_rotation_is_aligned_back() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    res = explore(lm, pic, "brightness", angle=90, explain_fn=brightness)
    np.testing.assert_allclose(res.perturbed, np.rot90(pic), atol=1e-6)
    assert res.agreement.spearman > 0.999 and res.agreement.iou > 0.95
    res30 = explore(lm, pic, "brightness", angle=30, scale=1.2, explain_fn=brightness)
    assert res30.agreement.valid_fraction < 0.95
    assert np.isnan(res30.aligned[~res30.valid]).all()
    assert res30.agreement.spearman > 0.98


def test_explore_masks_text_and_target() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    masked = explore(lm, pic, "brightness", mask_fraction=0.25, fill="zeros", explain_fn=brightness)
    changed = (masked.perturbed != pic).any(axis=-1)
    assert changed.sum() <= round(0.25 * 48 * 48)
    # the brightest pixels were masked, so the red mean (and the class probability) falls
    assert masked.p_after < masked.p_before
    text = explore(lm, pic, "brightness", text="cat", text_size=16, explain_fn=brightness)
    assert not np.array_equal(text.perturbed, pic)
    other = explore(lm, pic, "brightness", target=5, explain_fn=brightness)
    assert other.target == 5


def test_explore_bgr_swaps_red_and_blue_before_the_rest() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    res = explore(lm, pic, "red", channels="BGR", explain_fn=brightness)
    np.testing.assert_array_equal(res.perturbed, pic[..., ::-1])
    # the model reads the red channel: after the swap it reads the old blue one
    assert res.p_after != pytest.approx(res.p_before) and res.channels == "BGR"
    assert res.agreement.spearman < -0.9  # red and blue are opposite in this picture
    with pytest.raises(ValueError, match="channels must be 'RGB' or 'BGR'"):
        explore(lm, pic, "red", channels="GBR", explain_fn=brightness)


def test_plot_exploration_has_the_maps_and_the_numbers() -> None:
    lm, pic = tiny_loaded(), smooth_picture()
    fig = plot_exploration(explore(lm, pic, "brightness", angle=20, explain_fn=brightness))
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and titles[0].startswith("original\n")
    assert "perturbed map, aligned back" in titles
    numbers = fig.axes[2].texts[0].get_text()
    assert "Spearman rho" in numbers and "p before" in numbers and "%" in numbers
    matplotlib.pyplot.close(fig)


def test_explore_rejects_bad_picture() -> None:
    lm = tiny_loaded()
    with pytest.raises(P.PerturbationError):
        explore(lm, np.zeros((3, 48, 48), np.float32), "brightness", explain_fn=brightness)


# ----------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------


def build(stand_ins, **kwargs) -> RobustnessExplorer:
    kwargs.setdefault("background", False)
    return robustness_explorer(tiny_loaded(), smooth_picture(), stand_ins, **kwargs)


def test_widget_has_every_control_with_display_names(stand_ins) -> None:
    rx = build(stand_ins)
    assert isinstance(rx, RobustnessExplorer)
    assert rx.method.options == (
        ("Brightness", "brightness"),
        ("Red channel", "red"),
        ("Slow", "slow"),
    )
    assert rx.channels.options == ("RGB", "BGR")
    images = [v for _, v in rx.image.options]
    assert images[0] == "notebook picture" and {"chelsea", "coffee"} <= set(images)
    assert {"angle", "zoom", "mask top-k", "text", "text size"} <= {
        c.description for c in rx._controls
    }
    assert rx.result is not None and rx.picture.value[:2] == b"\xff\xd8"
    assert "computed" in rx.status.value


def test_default_methods_are_the_registry_with_labels() -> None:
    rx = RobustnessExplorer(
        tiny_loaded(), smooth_picture(), background=False, explain_fn=brightness_any
    )
    assert [label for label, _ in rx.method.options] == [m.label for m in METHODS.values()]
    assert "Score-CAM" in [label for label, _ in rx.method.options]


def brightness_any(loaded, x, method, target, **kwargs):
    return x.mean(dim=1)


def test_bgr_control_changes_the_picture_and_back_is_cached(stand_ins) -> None:
    rx = build(stand_ins, method="red")
    rgb = bytes(rx.picture.value)
    rx.channels.value = "BGR"
    assert rx.result.channels == "BGR" and bytes(rx.picture.value) != rgb
    assert "BGR" in rx.status.value and rx.computed == 2
    rx.channels.value = "RGB"
    assert bytes(rx.picture.value) == rgb and rx.computed == 2  # from the cache
    assert "from the cache" in rx.status.value


def test_every_slider_and_the_text_recompute(stand_ins) -> None:
    rx = build(stand_ins)
    for control, value in (
        (rx.angle, 45.0),
        (rx.scale, 1.3),
        (rx.mask_fraction, 0.2),
        (rx.text, "goldfish"),
        (rx.text_size, 20),
    ):
        before = rx.computed
        control.value = value
        assert rx.computed == before + 1 and getattr(rx.request, _field(control)) == value
    assert rx.result.agreement.valid_fraction < 1


def _field(control) -> str:
    return {
        "angle": "angle",
        "zoom": "scale",
        "mask top-k": "mask_fraction",
        "text": "text",
        "text size": "text_size",
    }[control.description]


def test_image_choice_and_uploads(stand_ins) -> None:
    rx = build(stand_ins)
    rx.image.value = "coffee"
    assert rx.result.original.shape == (48, 48, 3) and "on coffee" in rx.status.value
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    rx.upload.value = (
        {
            "name": "red.png",
            "type": "",
            "size": 1,
            "content": memoryview(buffer.getvalue()),
            "last_modified": datetime.datetime.now(),
        },
    )
    assert rx.image.value == "upload: red.png" and rx.result.original[..., 0].mean() > 0.7
    rx.upload.value = (
        {
            "name": "x.txt",
            "type": "",
            "size": 3,
            "content": memoryview(b"abc"),
            "last_modified": datetime.datetime.now(),
        },
    )
    assert "x.txt is not a readable image" in rx.status.value and "⚠" in rx.status.value
    rx.angle.value = 10.0  # the next success clears the message
    assert "⚠" not in rx.status.value


def test_precompute_fills_the_quick_methods_references(stand_ins) -> None:
    rx = build(stand_ins)
    done = rx.state.precompute("notebook picture")
    assert done == ["red"]  # brightness is on display already; slow reports progress: left out
    before = rx.computed
    rx.method.value = "red"
    assert rx.computed == before + 1 and not rx.state.precompute("notebook picture")


def test_busy_state_and_cancel(stand_ins) -> None:
    rx = build(stand_ins, background=True, precompute=False)
    shown = rx.request
    GATE["gate"], GATE["reached"] = threading.Event(), threading.Event()
    rx.method.value = "slow"
    assert GATE["reached"].wait(10)
    assert (
        rx.busy and "xai-stale" in rx.picture._dom_classes and "Computing Slow" in (rx.status.value)
    )
    rx.cancel.click()
    assert rx.request == shown and rx.method.value == "brightness"
    assert "Cancelled Slow" in rx.status.value and "xai-stale" not in rx.picture._dom_classes
    GATE["gate"].set()
    assert rx.wait(10) and rx.request == shown


def test_still_picture_instead_of_a_raw_widget_repr(stand_ins) -> None:
    rx = build(stand_ins)
    bundle = rx._repr_mimebundle_()
    assert "VBox(" not in bundle["text/plain"] and STILL_NOTE in bundle["text/plain"]
    assert bundle["text/plain"].startswith("RobustnessExplorer(mean_logit, Brightness on")
    still = Image.open(io.BytesIO(base64.b64decode(bundle["image/jpeg"])))
    assert still.height > Image.open(io.BytesIO(rx.picture.value)).height


def test_real_lite0_robustness_explorer(lite0) -> None:
    picture = lite0.view(_chelsea())
    rx = RobustnessExplorer(lite0, picture, methods=["grad_cam", "lrp"], background=False)
    assert rx.result.target == 282 and rx.state.loaded.model is not lite0.model
    assert rx.state.precompute("notebook picture") == ["lrp"]
    rx.channels.value = "BGR"
    assert rx.result.p_after < rx.result.p_before  # the cat is less of a cat in BGR
    rx.method.value = "lrp"
    assert rx.computed == 3


# ----------------------------------------------------------------------------------------------
# progress bars
# ----------------------------------------------------------------------------------------------


def test_progress_is_a_text_bar_on_stdout(capsys) -> None:
    for _ in progress(range(5), desc="demo", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert err == "" and re.search(r"\rdemo: 100%\|#+\| 5/5 \[", out) and out.endswith("\n")
    bar = progress(total=3, desc="gone", leave=False, mininterval=0)
    bar.update(3)
    bar.close()
    out, _ = capsys.readouterr()
    assert "gone: 100%" in out and out.split("\r")[-1].strip() == ""  # erased at the end


def test_reporter_calls_back_and_may_cancel() -> None:
    seen = []
    with Reporter(4, lambda d, t: seen.append((d, t))) as report:
        report.update(1)
        report.update(3)
    assert seen == [(0, 4), (1, 4), (4, 4)]

    def stop(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Reporter(4, stop) as report:
        for _ in range(4):
            report.update(1)
    assert report.done == 2
    with pytest.raises(TypeError, match="progress must be True, False or a callable"):
        Reporter(3, "yes")


def test_text_progress_as_a_callback(capsys) -> None:
    with TextProgress("Score-CAM", unit="pass", leave=True) as report:
        for done in range(0, 11, 5):
            report(done, 10)
    out, _ = capsys.readouterr()
    assert re.search(r"Score-CAM: 100%\|#+\| 10/10 \[.*pass/s\]", out)


def _chelsea():
    from xai_helpers.images import sample_path

    return sample_path("chelsea")
