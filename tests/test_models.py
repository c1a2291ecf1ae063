"""Model loading: real Lite0 weights, checksum, torchvision architectures offline."""

from __future__ import annotations

import shutil
import urllib.error

import pytest
import torch
import torchvision

from xai_helpers import models
from xai_helpers.images import sample_path
from xai_helpers.models import (
    ModelError,
    WeightsUnavailableError,
    convert_lite_state_dict,
    lite_weight_path,
    load_model,
)

CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # tabby ... lynx: the domestic/wild cat block


def test_lite0_classifies_the_cat(lite0):
    top = lite0.predict(sample_path("chelsea"), k=5)
    index, name, prob = top.top1
    assert index in CAT_CLASSES, top
    assert prob > 0.3, top
    assert "cat" in name or name == "tabby"
    # probabilities are sorted and come from a softmax
    probs = [p for _, _, p in top.rows]
    assert probs == sorted(probs, reverse=True)
    assert 0.0 < sum(probs) <= 1.0 + 1e-6


def test_lite0_recognises_the_espresso(lite0):
    assert lite0.predict(sample_path("coffee")).top1[1] == "espresso"


def test_lite0_model_state(lite0):
    assert not lite0.model.training
    assert lite0.cam_layer == "bn2"
    assert lite0.input_size == 224
    assert len(lite0.class_names) == 1000
    assert lite0.class_names[285] == "Egyptian cat"
    x = lite0.preprocess(sample_path("chelsea"))
    assert x.shape == (1, 3, 224, 224)
    # mean = std = 0.5 maps pixels [0, 1] to [-1, 1]
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    features = dict(lite0.model.named_modules())["bn2"]
    assert features.num_features == 1280


def test_unnormalize_inverts_preprocessing(lite0):
    x = lite0.preprocess(sample_path("coffee"))
    seen = lite0.view(sample_path("coffee"))
    back = lite0.unnormalize(x[0])
    assert back.shape == seen.shape == (224, 224, 3)
    assert abs(back - seen).max() < 1e-5


def test_batch_preprocess(lite0):
    x = lite0.preprocess([sample_path("chelsea"), sample_path("coffee")])
    assert x.shape == (2, 3, 224, 224)


def test_state_dict_conversion_is_a_bijection():
    state = torch.load(lite_weight_path("efficientnet_lite0"), map_location="cpu")
    renamed = convert_lite_state_dict(state, [1, 2, 2, 3, 3, 4, 1])
    assert len(renamed) == len(state)
    # same tensors in the same order, only the names change
    for (old, a), (new, b) in zip(state.items(), renamed.items(), strict=True):
        assert a is b, (old, new)
    assert "blocks.6.0.conv_pwl.weight" in renamed
    assert "blocks.0.0.conv_pw.weight" in renamed  # the block without expansion


def test_sha256_mismatch_raises(tmp_path):
    corrupt = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(lite_weight_path("efficientnet_lite0"), corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        models.load_lite_state_dict("efficientnet_lite0", corrupt)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_sister_models_load(name):
    lm = load_model(name, device="cpu")
    assert lm.predict(sample_path("chelsea")).top1[0] in CAT_CLASSES


@pytest.mark.parametrize("name,layer", [("resnet50", "layer4"), ("vgg16", "features")])
def test_torchvision_architectures_with_random_weights(name, layer):
    lm = load_model(name, device="cpu", weights=None)
    assert not lm.pretrained
    assert lm.cam_layer == layer
    assert layer in dict(lm.model.named_modules())
    with torch.no_grad():
        logits = lm.model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_missing_torchvision_weights_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsUnavailableError) as info:
        load_model(name, device="cpu", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert "not in the torch cache" in message
    assert str(tmp_path) in message  # where to copy the file
    assert "efficientnet_lite0" in message  # the offline default


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    # torchvision's weights API downloads through this function; replace it with a dead network
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded"):
        load_model("resnet50", device="cpu")


def test_unknown_model_and_class(lite0):
    with pytest.raises(ModelError, match="unknown model 'resnet5'.*did you mean 'resnet50'"):
        load_model("resnet5")
    with pytest.raises(ModelError, match="did you mean"):
        lite0.class_index("Egyptian kat")
    with pytest.raises(ModelError, match="out of range"):
        lite0.class_index(1000)
    assert lite0.class_index("espresso") == 967
    assert lite0.class_index("EGYPTIAN CAT") == 285


def test_device_default():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.default_device().type == expected
