"""Tests of the explorer, driven without a browser: set a control's value, the observers run,
then check what was computed (calls of a stand-in explain_fn, the cache) and what is displayed
(picture bytes, prediction table, status line, busy state). Long runs are simulated by a
stand-in that blocks inside its progress loop until the test lets it go."""

from __future__ import annotations

import base64
import datetime
import io
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from xai_helpers import explorer_draw as draw
from xai_helpers.cams import CamError, grad_cam
from xai_helpers.explorer_jobs import Cancelled, Job, Runner
from xai_helpers.explorer_state import ClassSearch, format_probability
from xai_helpers.hooks import count_hooks
from xai_helpers.models import LoadedModel, imagenet_classes
from xai_helpers.registry import METHODS, Method, register, unregister
from xai_helpers.widgets import Explorer

SIZE = 32


class TinyNet(nn.Module):
    """conv -> ReLU -> conv -> global average pool -> 1000 logits, seeded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1)
        )
        self.fc = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tiny_loaded() -> LoadedModel:
    def geometry(im: Image.Image) -> Image.Image:
        return im.resize((SIZE, SIZE), Image.BICUBIC)

    return LoadedModel(
        name="tiny",
        model=TinyNet().eval(),
        geometry=geometry,
        transform=T.Compose([geometry, T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        class_names=imagenet_classes(),
        cam_layer="features",
        input_size=SIZE,
        device=torch.device("cpu"),
        pretrained=False,
    )


class Recorder:
    """A cheap stand-in for xai_helpers.explain.explain that records every call.

    Maps are in [0, 1] like the CAM family's and depend on the method, image and class; with
    ``gate`` set, a method that reports progress blocks after 3 of 10 passes until the gate
    opens (a long Score-CAM run that a test can watch and cancel).
    """

    def __init__(self, fail: Exception | None = None, same: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.fail = fail
        self.same = same  # methods that draw the same picture
        self.gate: threading.Event | None = None
        self.stopped = threading.Event()  # set when a gated run ended (normally or cancelled)
        self.reached = threading.Event()  # set when a gated run waits at the gate

    def __call__(self, loaded, x, method, target, **kwargs):
        self.calls.append((method, int(target), {k: v for k, v in kwargs.items()}))
        if self.fail is not None:
            raise self.fail
        if "progress" in kwargs and callable(kwargs["progress"]):
            try:
                for done in range(11):
                    kwargs["progress"](done, 10)
                    if done == 3 and self.gate is not None:
                        self.reached.set()
                        assert self.gate.wait(10), "the test never opened the gate"
            finally:
                self.stopped.set()
        shift = 0 if method in self.same else sum(map(ord, method)) % 5
        maps = torch.sigmoid(x[:, 0] * (1 + (int(target) + shift) % 7))
        maps = (maps - maps.amin()) / (maps.amax() - maps.amin()).clamp_min(1e-12)
        return maps - 0.5 if METHODS.get(method) is not None and METHODS[method].signed else maps


def upload(explorer: Explorer, name: str, data: bytes) -> None:
    """What the front end does when a file is chosen (ipywidgets 8's FileUpload value)."""
    explorer.upload.value = (
        {
            "name": name,
            "type": "",
            "size": len(data),
            "content": memoryview(data),
            "last_modified": datetime.datetime.now(),
        },
    )


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def status_kind(ex: Explorer) -> str:
    return ex.status.value.split("xai-msg-", 1)[1].split("'", 1)[0]


@pytest.fixture()
def tiny() -> LoadedModel:
    return tiny_loaded()


def sync(tiny: LoadedModel, rec: Recorder | None = None, **kwargs) -> Explorer:
    """An explorer that computes inside the observers (deterministic tests)."""
    return Explorer(tiny, explain_fn=rec or Recorder(), background=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# first state, cache, redraws
# ----------------------------------------------------------------------------------------------


def test_first_state_shows_top1_picture_and_table(tiny) -> None:
    rec = Recorder()
    ex = sync(tiny, rec)
    probs = torch.softmax(tiny.model(tiny.preprocess(_chelsea())), dim=1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert [v for _, v in ex.target.options] == top5 and ex.target.value == top5[0]
    assert rec.calls == [("grad_cam", top5[0], {"layer": "features"})]
    assert ex.computed == 1 and ex.key == ("chelsea", "grad_cam", top5[0], "features")
    assert ex.shown == ex.key
    assert ex.picture.value[:2] == b"\xff\xd8"  # a JPEG was rendered
    assert Image.open(io.BytesIO(ex.picture.value)).size == (960, 810)
    name = tiny.class_names[top5[0]]
    assert f"<tr class='xai-chosen'><td class='xai-num'>1</td><td class='xai-num'>{top5[0]}" in (
        ex.predictions.value
    )
    assert f"<td>{name}</td>" in ex.predictions.value
    assert "computed in" in ex.status.value and status_kind(ex) == "done"
    # the layer menu lists the model's 4-D outputs, the CAM layer first
    assert ex.layer.options[0] == "features" and set(ex.layer.options) == {
        "features",
        "features.0",
        "features.1",
        "features.2",
    }


def test_probabilities_have_one_format(tiny) -> None:
    assert [format_probability(p) for p in (0.7134, 0.0412, 0.0005, 0.0004, 0.0)] == [
        "71.3 %",
        "4.1 %",
        "0.1 %",
        "< 0.1 %",
        "< 0.1 %",
    ]
    ex = sync(tiny)
    probs = ex.state.probabilities("chelsea")
    for label, index in ex.target.options:  # the menu and the table print the same strings
        text = format_probability(float(probs[index]))
        assert label.endswith(text) and f"<td class='xai-num'>{text}</td>" in ex.predictions.value


def test_opacity_and_colormap_redraw_without_recomputing(tiny) -> None:
    rec = Recorder()
    ex = sync(tiny, rec)
    first = ex.picture.value
    ex.opacity.value = 0.9
    assert ex.picture.value != first and ex.computed == 1 and len(rec.calls) == 1
    second = ex.picture.value
    ex.colormap.value = "viridis"
    assert ex.picture.value not in (first, second) and ex.computed == 1


def test_cache_hit_when_coming_back(tiny) -> None:
    rec = Recorder()
    ex = sync(tiny, rec)
    ex.method.value = "grad_cam_pp"
    ex.method.value = "grad_cam"
    assert ex.computed == 2 and [c[0] for c in rec.calls] == ["grad_cam", "grad_cam_pp"]
    assert "from the cache" in ex.status.value
    ex.image.value = "coffee"
    ex.image.value = "chelsea"
    assert ex.computed == 3 and "from the cache" in ex.status.value


def test_cache_is_bounded(tiny) -> None:
    ex = sync(tiny, cache_size=2)
    for m in ("grad_cam_pp", "cam", "lrp"):
        ex.method.value = m
    assert len(ex.maps) == 2 and [k[1] for k in ex.maps] == ["cam", "lrp"]


# ----------------------------------------------------------------------------------------------
# the registry drives the controls
# ----------------------------------------------------------------------------------------------


def test_layer_and_opacity_follow_the_method_records(tiny) -> None:
    rec = Recorder()
    ex = sync(tiny, rec)
    ex.layer.value = "features.0"
    assert rec.calls[-1][2] == {"layer": "features.0"}
    ex.method.value = "cam"  # layer="fixed": the classifier's input only
    assert ex.layer.value == "features" and ex.layer.disabled
    assert rec.calls[-1] == ("cam", ex.target.value, {"layer": "features"})
    ex.method.value = "lrp"  # layer="none", signed: no layer, opacity follows |R|
    assert ex.layer.disabled and rec.calls[-1][2] == {} and ex.key[3] == ""
    assert ex.opacity.disabled and "opaque where |value| is large" in ex.opacity.tooltip
    ex.method.value = "grad_cam"
    assert not ex.layer.disabled and not ex.opacity.disabled
    assert [label for label, _ in ex.method.options] == [m.label for m in METHODS.values()]


def test_a_method_registered_at_run_time_appears_in_the_explorer(tiny) -> None:
    calls = []

    def edge_map(loaded, x, target=None, **kwargs):
        """A signed, layer-free, toy map: horizontal gradient of the red channel."""
        calls.append((target, kwargs))
        red = x[:, 0]
        return torch.nn.functional.pad(red[:, :, 1:] - red[:, :, :-1], (0, 1))

    register(Method("edge_demo", "Edge demo", edge_map, "gradient", signed=True, layer="none"))
    try:
        ex = Explorer(tiny, background=False)  # the default explain_fn reads the registry
        assert ("Edge demo", "edge_demo") in ex.method.options
        ex.method.value = "edge_demo"
        assert calls == [(ex.target.value, {})]  # no layer, no progress: as its record says
        assert ex.layer.disabled and ex.opacity.disabled
        assert "Edge demo of" in ex.status.value and ex.heatmap.min() < 0 < ex.heatmap.max()
    finally:
        unregister("edge_demo")
    assert "edge_demo" not in [v for _, v in Explorer(tiny, background=False).method.options]


# ----------------------------------------------------------------------------------------------
# class search
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("espresso", 967),  # a plain name
        ("Espresso ", 967),  # case and spaces do not matter
        ("tabb", 281),  # the start of a name
        ("tabby cat", 281),  # a synonym of the WordNet names ("tabby, tabby cat")
        ("tank suit", 639),  # a synonym only ("maillot, tank suit")
        ("goldf", 1),
        ("expresso", 967),  # a close misspelling
        ("281", 281),  # an index
        ("1: goldfish, Carassius auratus", 1),  # a suggestion of the search box
    ],
)
def test_search_finds_plain_names_parts_and_synonyms(query, best) -> None:
    assert ClassSearch(imagenet_classes()).find(query).best == best


def test_search_breaks_ties_by_the_model_and_says_what_else_matched() -> None:
    search = ClassSearch(imagenet_classes())
    probs = np.zeros(1000)
    probs[285] = 0.3  # Egyptian cat is the model's favourite among the "... cat" classes
    found = search.find("cat", probs)
    assert found.best == 285 and {281, 282, 285} <= set(found.matches)
    assert found.message.startswith("'cat': Egyptian cat (285);") and "more match" in found.message
    assert search.find("crane").matches[:2] in ((134, 517), (517, 134))
    assert search.find("xyzzy").message == "no class matches 'xyzzy'"
    assert search.find("  ").best is None


def test_search_box_explains_the_best_match_on_enter(tiny) -> None:
    rec = Recorder()
    ex = sync(tiny, rec)
    assert len(ex.search.options) == 1000 and ex.search.options[281] == "281: tabby, tabby cat"
    ex.search.value = "espresso"  # what Enter sends with continuous_update=False
    assert ex.target.value == 967 and rec.calls[-1][:2] == ("grad_cam", 967)
    assert ex.search.value == "967: espresso"  # the box shows what was found
    assert "search 'espresso': espresso (967)" in ex.status.value
    assert ex.target.options[-1][1] == 967 and len(ex.target.options) == 6
    assert "<td>espresso</td>" in ex.predictions.value
    calls = len(rec.calls)
    ex.search.value = "xyzzy"
    assert "no class matches 'xyzzy'" in ex.status.value and status_kind(ex) == "error"
    assert len(rec.calls) == calls and ex.target.value == 967  # nothing changed
    ex.search.value = "tabb"  # the next success clears the error
    assert ex.target.value == 281 and status_kind(ex) == "done" and "⚠" not in ex.status.value
    ex.image.value = "coffee"  # a new image: back to its own top-1
    assert ex.target.value != 281 and len(ex.target.options) == 5 and ex.search.value == ""


# ----------------------------------------------------------------------------------------------
# busy state, cancel, errors
# ----------------------------------------------------------------------------------------------


def gated(tiny: LoadedModel) -> tuple[Explorer, Recorder]:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)  # background: changes run on the worker thread
    rec.gate = threading.Event()
    return ex, rec


def test_a_long_run_shows_its_progress_and_a_stale_picture(tiny) -> None:
    ex, rec = gated(tiny)
    before = bytes(ex.picture.value)
    ex.method.value = "score_cam"  # returns at once: the worker computes
    assert rec.reached.wait(10)
    assert ex.busy and "xai-stale" in ex.picture._dom_classes
    assert ex.progress.layout.visibility == "visible" and ex.cancel.layout.visibility == "visible"
    deadline = time.monotonic() + 5
    while ex.progress.value != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (ex.progress.value, ex.progress.max) == (3, 10)
    label = ex.state.describe(ex.key)
    assert status_kind(ex) == "busy" and f"Computing {label}: 3/10 passes" in ex.status.value
    assert "The picture shows Grad-CAM of" in ex.status.value  # the stale picture is named
    assert bytes(ex.picture.value) == before and ex.shown[1] == "grad_cam"
    rec.gate.set()
    assert ex.wait(10)
    assert ex.shown == ex.key and ex.shown[1] == "score_cam" and not ex.busy
    assert "xai-stale" not in ex.picture._dom_classes and bytes(ex.picture.value) != before
    assert ex.progress.layout.visibility == "hidden" and ex.cancel.layout.visibility == "hidden"
    assert "computed in" in ex.status.value


def test_cancel_stops_the_run_and_puts_the_controls_back(tiny) -> None:
    ex, rec = gated(tiny)
    shown, before = ex.shown, bytes(ex.picture.value)
    ex.method.value = "score_cam"
    assert rec.reached.wait(10)
    ex.cancel.click()  # what the button does (on the kernel's main thread)
    # at once: the controls agree with the picture again, and the status says what happened
    assert ex.key == shown and ex.method.value == "grad_cam" and not ex.layer.disabled
    assert "Cancelled Score-CAM of" in ex.status.value and "at 3/10 passes" in ex.status.value
    assert "xai-stale" not in ex.picture._dom_classes
    assert ex.cancel.layout.visibility == "hidden" and ex.progress.layout.visibility == "hidden"
    rec.gate.set()  # the computation notices the cancel at its next progress report
    assert rec.stopped.wait(10) and ex.wait(10)
    assert not any(k[1] == "score_cam" for k in ex.maps)  # nothing half-done was kept
    assert ex.shown == shown and bytes(ex.picture.value) == before
    ex.method.value = "lrp"  # and the explorer keeps working
    assert ex.wait(10) and ex.shown == ex.key == ("chelsea", "lrp", shown.target, "")


def test_a_change_during_a_run_supersedes_it(tiny) -> None:
    ex, rec = gated(tiny)
    ex.method.value = "score_cam"
    assert rec.reached.wait(10)
    second = ex.target.options[1][1]
    ex.target.value = second  # a new choice while Score-CAM runs: it replaces the run
    rec.gate.set()
    assert ex.wait(10)
    assert ex.shown == ex.key == ("chelsea", "score_cam", second, "features")
    assert [c[:2] for c in rec.calls[-2:]] == [
        ("score_cam", ex.target.options[0][1]),
        ("score_cam", second),
    ]
    assert ex.state.maps.get(("chelsea", "score_cam", ex.target.options[0][1], "features")) is None


def test_a_failed_run_says_why_and_keeps_controls_and_picture_together(tiny) -> None:
    ex = sync(tiny)
    shown = ex.shown
    ex.state.explain_fn = Recorder(
        fail=CamError("layer 'x' gave no 4-D feature maps; choose a conv layer")
    )
    ex.method.value = "grad_cam_pp"
    assert "gave no 4-D feature maps; choose a conv layer" in ex.status.value
    assert status_kind(ex) == "error" and "The picture shows Grad-CAM of" in ex.status.value
    assert ex.key == ex.shown == shown  # the menu went back to the method on display
    ex.state.explain_fn = Recorder(fail=RuntimeError("boom"))
    ex.method.value = "score_cam"
    assert "unexpected RuntimeError: boom" in ex.status.value
    assert ex.progress.layout.visibility == "hidden"
    ex.state.explain_fn = Recorder()
    ex.method.value = "lrp"  # the next success clears the error
    assert status_kind(ex) == "done" and "⚠" not in ex.status.value


def test_error_text_is_readable_on_both_themes() -> None:
    html = draw.status_html("x.txt is not a readable image", "error")
    assert "xai-msg-error" in html and "⚠" in html
    # the text takes the theme's own colour; only the band is tinted
    rule = draw.CSS.split(".xai-explorer .xai-msg {", 1)[1].split("}", 1)[0]
    assert "color: var(--jp-content-font-color1" in rule


# ----------------------------------------------------------------------------------------------
# the same picture twice, the picture's layout
# ----------------------------------------------------------------------------------------------


def test_same_picture_gets_a_one_line_note_with_the_reason(tiny) -> None:
    ex = sync(tiny, Recorder(same=("cam", "grad_cam")))
    ex.method.value = "cam"
    note = ex.status.value.split("xai-msg-note'>", 1)[1]
    assert note.startswith("ℹ Same picture as Grad-CAM (largest difference 0)")
    assert "Grad-CAM's channel weights are CAM's divided by the h*w positions" in note
    assert "\n" not in ex.status.value
    ex.method.value = "grad_cam_pp"  # a different picture: no note
    assert "xai-msg-note" not in ex.status.value


def _photo_box(picture: bytes) -> tuple[int, int, int, int]:
    """Bounding box of the non-white pixels in the left part of the picture (the photo)."""
    a = np.asarray(Image.open(io.BytesIO(picture)).convert("L"))[160:, :690]
    rows, cols = np.nonzero(a < 235)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_signed_maps_are_drawn_signed_over_grey_without_moving_the_picture(tiny) -> None:
    ex = sync(tiny)
    unsigned = bytes(ex.picture.value)
    ex.method.value = "lrp"  # the stand-in's LRP map is signed: values in [-0.5, 0.5]
    signed = bytes(ex.picture.value)
    box_u, box_s = _photo_box(unsigned), _photo_box(signed)
    assert all(abs(a - b) <= 2 for a, b in zip(box_u, box_s, strict=True)), (box_u, box_s)
    rgb = np.asarray(Image.open(io.BytesIO(signed)).convert("RGB")).astype(int)
    top, bottom, left, right = box_s
    photo = rgb[160 + top + 5 : 160 + bottom - 5, left + 5 : right - 5]
    red = (photo[..., 0] > 200) & (photo[..., 1] < 90) & (photo[..., 2] < 90)
    blue = (photo[..., 2] > 200) & (photo[..., 0] < 90) & (photo[..., 1] < 90)
    grey = (np.abs(photo[..., 0] - photo[..., 2]) < 12) & (
        np.abs(photo[..., 0] - photo[..., 1]) < 12
    )
    assert red.mean() > 0.01 and blue.mean() > 0.01  # both signs in full colour
    assert grey.mean() > 0.05  # near zero: the grey photo shows through


# ----------------------------------------------------------------------------------------------
# uploads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "limits", "message"),
    [
        ("notes.txt", b"just some text", {}, "notes.txt is not a readable image"),
        ("empty.png", b"", {}, "empty.png is empty"),
        ("big.png", None, {"max_bytes": 1000}, "over the 0 MB limit"),
        ("huge.png", None, {"max_pixels": 10_000}, "over the 0-megapixel limit"),
        ("truncated.png", "truncated", {}, "truncated.png is not a readable image"),
        ("tiny.png", "tiny", {}, "too small to classify"),
    ],
)
def test_bad_upload_shows_a_message_and_changes_nothing(tiny, name, data, limits, message) -> None:
    if data is None:
        data = png_bytes(
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
        )
    elif data == "truncated":
        data = png_bytes(Image.new("RGB", (64, 64), "red"))[:60]
    elif data == "tiny":
        data = png_bytes(Image.new("RGB", (8, 8), "red"))
    ex = sync(tiny, **limits)
    picture, options = bytes(ex.picture.value), ex.image.options
    upload(ex, name, data)
    assert message in ex.status.value and "⚠" in ex.status.value
    assert "\n" not in ex.status.value  # one line
    assert ex.image.options == options and ex.image.value == "chelsea"
    assert bytes(ex.picture.value) == picture and ex.computed == 1
    ex.opacity.value = 0.3  # the explorer still works afterwards, and the error is gone
    assert bytes(ex.picture.value) != picture and "⚠" not in ex.status.value


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (120, 90), (255, 0, 0, 128)),
        Image.fromarray(np.arange(100 * 80, dtype=np.uint16).reshape(80, 100) * 8),
        Image.new("L", (64, 64), 128),
    ],
    ids=["rgba", "16-bit", "grey"],
)
def test_good_upload_is_added_and_explained(tiny, image) -> None:
    ex = sync(tiny)
    upload(ex, "mine.png", png_bytes(image))
    assert ex.image.value == "upload: mine.png"
    assert ex.image.options[-1] == (
        f"upload: mine.png ({image.width}x{image.height})",
        ex.image.value,
    )
    assert ex.computed == 2 and "computed in" in ex.status.value
    assert "upload: mine.png" in ex.predictions.value
    # the same name again replaces the picture (and forgets its cached maps)
    upload(ex, "mine.png", png_bytes(Image.new("RGB", (50, 40), "blue")))
    assert ex.image.options[-1][0] == "upload: mine.png (50x40)" and ex.computed == 3
    assert sum(v == "upload: mine.png" for _, v in ex.image.options) == 1


def test_an_upload_during_a_run_replaces_it(tiny) -> None:
    ex, rec = gated(tiny)
    ex.method.value = "score_cam"
    assert rec.reached.wait(10)
    rec.gate.set()
    upload(ex, "mine.png", png_bytes(Image.new("RGB", (64, 64), "green")))
    assert ex.wait(10) and ex.shown == ex.key and ex.shown.image == "upload: mine.png"


# ----------------------------------------------------------------------------------------------
# arguments, display, the real model
# ----------------------------------------------------------------------------------------------


def test_bad_arguments_fail_at_once(tiny) -> None:
    with pytest.raises(ValueError, match="unknown method 'gradcam'"):
        sync(tiny, method="gradcam")
    with pytest.raises(ValueError, match="unknown sample image 'dog'"):
        sync(tiny, image="dog")
    with pytest.raises(ValueError, match="unknown layer 'layer4'"):
        sync(tiny, layer="layer4")
    with pytest.raises(ValueError, match="unknown class name"):
        sync(tiny, target="not a class")


def test_display_bundle_has_widget_still_picture_and_note(tiny) -> None:
    ex = sync(tiny)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    text = bundle["text/plain"]
    assert text.startswith("Explorer(tiny, Grad-CAM") and draw.STILL_NOTE in text
    assert "VBox(" not in text and "Dropdown(" not in text
    still = Image.open(io.BytesIO(base64.b64decode(bundle["image/jpeg"])))
    picture = Image.open(io.BytesIO(ex.picture.value))
    assert still.width == picture.width and still.height > picture.height  # the note's band
    band = np.asarray(still.convert("L"))[picture.height :]
    assert (band < 100).sum() > 500  # the note's text is drawn in it


def test_runner_runs_the_latest_job_and_reports_errors() -> None:
    done, errors = [], []
    runner = Runner(background=True)
    gate = threading.Event()

    def slow(job: Job) -> str:
        for i in range(100):
            job.report(i, 100)
            gate.wait(0.01)
        return "slow"

    first = runner.submit(Job("slow", slow), lambda j, r: done.append(r), print)
    second = runner.submit(Job("fast", lambda job: "fast"), lambda j, r: done.append(r), print)
    assert runner.wait(10) and done == ["fast"] and first.cancelled and not second.cancelled

    def broken(job: Job) -> None:
        raise ValueError("no")

    runner.submit(Job("broken", broken), print, lambda j, e: errors.append(str(e)))
    assert runner.wait(10) and errors == ["no"]
    job = Job("x", lambda job: None)
    job.cancel()
    with pytest.raises(Cancelled):
        job.report(1, 2)


def test_real_lite0_maps_match_the_helper_and_leave_the_model_alone(lite0) -> None:
    hooks, training = count_hooks(lite0.model), lite0.model.training
    ex = Explorer(lite0, background=False)
    assert ex.state.loaded.model is not lite0.model  # the explorer computes on its own copy
    x = lite0.preprocess(_chelsea())
    assert ex.target.value == 282  # tiger cat
    np.testing.assert_allclose(ex.heatmap, grad_cam(lite0, x).upsampled[0].double(), atol=1e-6)
    assert {"blocks.4", "blocks.2", "conv_head"} <= set(ex.layer.options)
    ex.layer.value = "blocks.4"
    ref = grad_cam(lite0, x, layer="blocks.4").upsampled[0].double()
    np.testing.assert_allclose(ex.heatmap, ref, atol=1e-6)
    ex.method.value = "cam"  # CAM = Grad-CAM at bn2 on Lite0's GAP -> Linear head: the note
    assert "Same picture as Grad-CAM" in ex.status.value
    assert count_hooks(lite0.model) == hooks and lite0.model.training == training
    search = ex.state.search.find("cat", ex.state.probabilities("chelsea").tolist())
    assert search.best == 282  # the cat the model sees on the cat photo


def _chelsea():
    from xai_helpers.images import sample_path

    return sample_path("chelsea")
