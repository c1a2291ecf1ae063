"""Tests of xai_helpers.widgets.Explorer, driven without a browser: set a control's value, the
observers run, then check what was computed (calls of a stand-in explain_fn, the cache) and what
is displayed (picture bytes, prediction table, status line)."""

from __future__ import annotations

import datetime
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from xai_helpers.cams import CamError, grad_cam
from xai_helpers.hooks import count_hooks
from xai_helpers.models import LoadedModel, imagenet_classes
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
    """A cheap stand-in for xai_helpers.explain.explain that records every call."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.fail = fail

    def __call__(self, loaded, x, method, target, **kwargs):
        self.calls.append((method, int(target), kwargs))
        if self.fail is not None:
            raise self.fail
        if "progress" in kwargs:
            for done in range(0, 11, 5):
                kwargs["progress"](done, 10)
        maps = x[:, 0] * (1 + int(target) % 7)  # depends on the image and the class
        return -maps if method == "lrp" else maps


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


@pytest.fixture()
def tiny() -> LoadedModel:
    return tiny_loaded()


def test_first_state_shows_top1_overlay_and_table(tiny) -> None:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
    probs = torch.softmax(tiny.model(tiny.preprocess(_chelsea())), dim=1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert [v for _, v in ex.target.options] == top5 and ex.target.value == top5[0]
    assert rec.calls == [("grad_cam", top5[0], {"layer": "features"})]
    assert ex.computed == 1 and ex.key == ("chelsea", "grad_cam", top5[0], "features")
    assert ex.picture.value[:2] == b"\xff\xd8"  # a JPEG was rendered
    assert Image.open(io.BytesIO(ex.picture.value)).size[0] > 200
    name = tiny.class_names[top5[0]]
    assert f"<tr style='font-weight:bold'><td>1</td><td>{top5[0]}</td><td>{name}" in (
        ex.predictions.value
    )
    assert "computed in" in ex.status.value
    # the layer menu lists the model's 4-D outputs, the CAM layer first
    assert ex.layer.options[0] == "features" and set(ex.layer.options) == {
        "features",
        "features.0",
        "features.1",
        "features.2",
    }


def test_opacity_and_colormap_redraw_without_recomputing(tiny) -> None:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
    first = ex.picture.value
    ex.opacity.value = 0.9
    assert ex.picture.value != first and ex.computed == 1 and len(rec.calls) == 1
    second = ex.picture.value
    ex.colormap.value = "viridis"
    assert ex.picture.value not in (first, second) and ex.computed == 1


def test_cache_hit_when_coming_back(tiny) -> None:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
    ex.method.value = "grad_cam_pp"
    ex.method.value = "grad_cam"
    assert ex.computed == 2 and [c[0] for c in rec.calls] == ["grad_cam", "grad_cam_pp"]
    assert "from the cache" in ex.status.value
    ex.image.value = "coffee"
    ex.image.value = "chelsea"
    assert ex.computed == 3 and "from the cache" in ex.status.value


def test_cache_is_bounded(tiny) -> None:
    ex = Explorer(tiny, explain_fn=Recorder(), cache_size=2)
    for m in ("grad_cam_pp", "cam", "lrp"):
        ex.method.value = m
    assert len(ex.maps) == 2 and [k[1] for k in ex.maps] == ["cam", "lrp"]


def test_search_explains_any_of_the_1000_classes(tiny) -> None:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
    goldfish = ex.search.options[1]
    assert goldfish == "1: goldfish" and len(ex.search.options) == 1000
    ex.search.value = "not a class"  # ensure_option: ignored, nothing computed
    assert ex.computed == 1
    ex.search.value = goldfish
    assert ex.target.value == 1 and rec.calls[-1][:2] == ("grad_cam", 1)
    assert ex.target.options[-1][1] == 1 and len(ex.target.options) == 6
    assert "<td>goldfish</td>" in ex.predictions.value
    ex.image.value = "coffee"  # a new image: back to its own top-1
    assert ex.target.value != 1 and len(ex.target.options) == 5 and ex.search.value == ""


def test_layer_choice_cam_and_lrp(tiny) -> None:
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
    ex.layer.value = "features.0"
    assert rec.calls[-1][2] == {"layer": "features.0"}
    ex.method.value = "cam"  # CAM can only use the classifier's input
    assert ex.layer.value == "features" and ex.layer.disabled
    assert rec.calls[-1] == ("cam", ex.target.value, {"layer": "features"})
    ex.method.value = "lrp"
    assert ex.layer.disabled and rec.calls[-1][2] == {} and ex.key[3] == ""
    ex.method.value = "grad_cam"
    assert not ex.layer.disabled


def test_score_cam_shows_progress(tiny) -> None:
    seen: list[tuple[int, int, str]] = []
    rec = Recorder()

    def spy(loaded, x, method, target, **kwargs):
        if "progress" in kwargs:
            report = kwargs["progress"]

            def progress(done: int, total: int) -> None:
                report(done, total)
                seen.append((ex.progress.value, ex.progress.max, ex.progress.layout.visibility))

            kwargs["progress"] = progress
        return rec(loaded, x, method, target, **kwargs)

    ex = Explorer(tiny, explain_fn=spy)
    assert ex.progress.layout.visibility == "hidden"
    ex.method.value = "score_cam"
    assert seen == [(0, 10, "visible"), (5, 10, "visible"), (10, 10, "visible")]
    assert ex.progress.layout.visibility == "hidden" and "computed in" in ex.status.value


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
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec, **limits)
    picture, options = bytes(ex.picture.value), ex.image.options
    upload(ex, name, data)
    assert message in ex.status.value and "⚠" in ex.status.value
    assert "\n" not in ex.status.value  # one line
    assert ex.image.options == options and ex.image.value == "chelsea"
    assert bytes(ex.picture.value) == picture and ex.computed == 1
    ex.opacity.value = 0.3  # the explorer still works afterwards
    assert bytes(ex.picture.value) != picture


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
    rec = Recorder()
    ex = Explorer(tiny, explain_fn=rec)
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


def test_method_errors_are_shown_not_raised(tiny) -> None:
    ex = Explorer(tiny, explain_fn=Recorder())
    ex.explain_fn = Recorder(
        fail=CamError("layer 'x' gave no 4-D feature maps; choose a conv layer")
    )
    ex.method.value = "grad_cam_pp"
    assert "gave no 4-D feature maps; choose a conv layer" in ex.status.value
    assert ex.heatmap is None
    ex.explain_fn = Recorder(fail=RuntimeError("boom"))
    ex.method.value = "score_cam"
    assert "unexpected RuntimeError: boom" in ex.status.value
    assert ex.progress.layout.visibility == "hidden"
    ex.explain_fn = Recorder()
    ex.method.value = "grad_cam"  # cached from the start
    assert "from the cache" in ex.status.value and ex.heatmap is not None


def test_bad_arguments_fail_at_once(tiny) -> None:
    with pytest.raises(ValueError, match="unknown method 'gradcam'"):
        Explorer(tiny, method="gradcam", explain_fn=Recorder())
    with pytest.raises(ValueError, match="unknown sample image 'dog'"):
        Explorer(tiny, image="dog", explain_fn=Recorder())
    with pytest.raises(ValueError, match="unknown layer 'layer4'"):
        Explorer(tiny, layer="layer4", explain_fn=Recorder())
    with pytest.raises(ValueError, match="unknown class name"):
        Explorer(tiny, target="not a class", explain_fn=Recorder())


def test_display_bundle_has_widget_and_still_picture(tiny) -> None:
    ex = Explorer(tiny, explain_fn=Recorder())
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/jpeg"] and bundle["text/plain"].startswith("Explorer(tiny, Grad-CAM")


def test_real_lite0_maps_match_the_helper_and_leave_the_model_alone(lite0) -> None:
    hooks, training = count_hooks(lite0.model), lite0.model.training
    ex = Explorer(lite0)
    x = lite0.preprocess(_chelsea())
    assert ex.target.value == 282  # tiger cat
    np.testing.assert_allclose(ex.heatmap, grad_cam(lite0, x).upsampled[0].double(), atol=1e-6)
    assert {"blocks.4", "blocks.2", "conv_head"} <= set(ex.layer.options)
    ex.layer.value = "blocks.4"
    ref = grad_cam(lite0, x, layer="blocks.4").upsampled[0].double()
    np.testing.assert_allclose(ex.heatmap, ref, atol=1e-6)
    assert count_hooks(lite0.model) == hooks and lite0.model.training == training


def _chelsea():
    from xai_helpers.images import sample_path

    return sample_path("chelsea")
