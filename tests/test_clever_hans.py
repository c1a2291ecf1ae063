"""Tests of xai_helpers.clever_hans: data, stamp, head, relevance share, SpRAy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai_helpers import clever_hans as ch
from xai_helpers.perturb import draw_text


@pytest.fixture(scope="module")
def small_set() -> ch.FaceSet:
    return ch.make_face_set(size=64, n_test_per_class=10, seed=3)


# -- data and cue ------------------------------------------------------------------------------


def test_face_set_is_deterministic_and_split_is_stratified(small_set: ch.FaceSet) -> None:
    again = ch.make_face_set(size=64, n_test_per_class=10, seed=3)
    assert np.array_equal(small_set.images, again.images)
    assert np.array_equal(small_set.test, again.test)
    other = ch.make_face_set(size=64, n_test_per_class=10, seed=4)
    assert not np.array_equal(small_set.images, other.images)
    assert small_set.images.shape == (200, 64, 64, 3) and small_set.images.dtype == np.float32
    assert 0.0 <= small_set.images.min() and small_set.images.max() <= 1.0
    assert np.intersect1d(small_set.train, small_set.test).size == 0
    assert len(small_set.train) + len(small_set.test) == 200
    assert np.bincount(small_set.labels[small_set.test]).tolist() == [10, 10]
    assert small_set.labels[:100].all() and not small_set.labels[100:].any()  # lfw_subset order


def test_cue_box_and_placement_are_exact(small_set: ch.FaceSet) -> None:
    images = small_set.images[:6]
    mask = np.array([True, False, True, False, False, True])
    out = ch.add_cue(images, mask)
    left, top, right, bottom = ch.cue_box(64)
    assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
    assert bottom > 48 and left < 16  # the bottom-left corner
    inside = np.zeros((64, 64), bool)
    inside[top:bottom, left:right] = True
    # unstamped pictures unchanged; stamped ones changed inside the box only, bit for bit
    assert np.array_equal(out[~mask], images[~mask])
    assert np.array_equal(out[mask][:, ~inside], images[mask][:, ~inside])
    changed = np.any(out[mask] != images[mask], axis=-1)
    assert changed.any(axis=0)[inside].mean() > 0.5
    # the label is black with white ink: both colours occur inside the box of every stamp
    patch = out[mask][:, top:bottom, left:right]
    assert (patch.max(axis=(1, 2, 3)) > 0.9).all() and (patch.min(axis=(1, 2, 3)) < 0.01).all()
    # the box is the label's: the stamp on a white picture changes exactly the box's pixels
    white = ch.add_cue(np.ones((1, 64, 64, 3), np.float32), [True])[0]
    assert np.array_equal(np.any(white < 1.0, axis=-1) | inside, inside)
    ys, xs = np.nonzero(np.any(white < 1.0, axis=-1))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (left, top, right, bottom)
    # and it is the box draw_text reports
    args = ch._stamp_args(64)
    assert draw_text(images[0], ch.CUE_TEXT, **args).box == (left, top, right, bottom)


def test_bad_inputs_raise_one_line_errors() -> None:
    with pytest.raises(ch.CleverHansError, match="low_res"):
        ch.make_face_set(low_res=40)
    with pytest.raises(ch.CleverHansError, match="mask"):
        ch.add_cue(np.zeros((2, 8, 8, 3), np.float32), [True])
    with pytest.raises(ch.CleverHansError, match="box"):
        ch.relevance_share(np.ones((1, 8, 8)), (4, 4, 4, 8))
    with pytest.raises(ch.CleverHansError, match="labels"):
        ch.fit_head(torch.zeros(3, 2), np.array([0, 1, 2]))


# -- relevance share ---------------------------------------------------------------------------


def test_relevance_share_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 12, 10))
    box = (2, 3, 7, 11)
    got = ch.relevance_share(maps, box)
    for n, m in enumerate(maps):
        inside = total = 0.0
        for i in range(12):
            for j in range(10):
                v = max(m[i, j], 0.0)
                total += v
                if box[0] <= j < box[2] and box[1] <= i < box[3]:
                    inside += v
        assert got[n] == pytest.approx(inside / total, abs=1e-12)
    uniform = ch.relevance_share(np.ones((1, 10, 10)), (0, 0, 5, 2))
    assert uniform[0] == pytest.approx(0.1)  # a map that ignores the box: its area share
    assert ch.relevance_share(-np.ones((10, 10)), (0, 0, 5, 2))[0] == 0.0


# -- the head learns a shortcut on a tiny synthetic case ---------------------------------------


def _shortcut_features(n: int, rng: np.random.Generator, tag: np.ndarray) -> torch.Tensor:
    """Feature 0: a weak, noisy 'object' signal; feature 1: the tag, clean; the rest noise."""
    labels = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    f = rng.standard_normal((n, 20)) * 0.5
    f[:, 0] += 0.6 * (2 * labels - 1)
    f[:, 1] = 3.0 * tag
    return torch.tensor(f, dtype=torch.float32), labels.astype(np.int64)


def test_head_learns_the_shortcut_and_decorrelation_removes_it() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(bool)
    f_biased, labels = _shortcut_features(n, rng, tag=y.astype(float))
    biased = ch.fit_head(f_biased, labels)
    f_swapped, _ = _shortcut_features(n, rng, tag=(~y).astype(float))
    assert ch.accuracy(biased, f_biased, labels) == 1.0
    assert ch.accuracy(biased, f_swapped, labels) < 0.2  # it reads the tag
    coin = rng.random(n) < 0.5
    f_decor, _ = _shortcut_features(n, rng, tag=coin.astype(float))
    fixed = ch.fit_head(f_decor, labels)
    assert ch.accuracy(fixed, f_swapped, labels) > 0.7  # the object signal, weak as it is
    w = fixed.weight[1] - fixed.weight[0]
    assert abs(w[1]) < 0.3 * abs(w[0])  # the tag's weight is gone
    # deterministic: same data, same head
    again = ch.fit_head(f_biased, labels)
    assert torch.equal(again.weight, biased.weight) and torch.equal(again.bias, biased.bias)


def test_fit_head_matches_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    f = rng.standard_normal((80, 6))
    labels = (f[:, 0] + 0.5 * rng.standard_normal(80) > 0).astype(np.int64)
    lam = 0.05
    head = ch.fit_head(torch.tensor(f, dtype=torch.float32), labels, weight_decay=lam)
    # two logits, symmetric: the log-odds weight is w1 - w0 with penalty lam/2 (|w0|^2 + |w1|^2)
    # = lam/4 |w|^2, i.e. scikit-learn's C = 2 / (lam N)
    ref = sklearn.LogisticRegression(C=2.0 / (lam * len(f)), tol=1e-10, max_iter=10000).fit(
        f, labels
    )
    w = (head.weight[1] - head.weight[0]).double().numpy()
    b = float(head.bias[1] - head.bias[0])
    np.testing.assert_allclose(w, ref.coef_[0], atol=2e-3)
    assert b == pytest.approx(ref.intercept_[0], abs=2e-3)


# -- SpRAy -------------------------------------------------------------------------------------


def _two_strategies(rng: np.random.Generator, n_tag: int = 12, n_obj: int = 18) -> np.ndarray:
    """Maps of two strategies: relevance on a corner tag, or on a blob that moves around."""
    maps = []
    for _ in range(n_tag):
        m = rng.random((32, 32)) * 0.05
        m[26:31, 1:7] += 1.0 + 0.2 * rng.random()
        maps.append(m)
    for _ in range(n_obj):
        m = rng.random((32, 32)) * 0.05
        cy, cx = rng.integers(13, 17, size=2)
        m[cy - 5 : cy + 5, cx - 5 : cx + 5] += 1.0
        maps.append(m)
    return np.stack(maps)


def test_spray_finds_the_shortcut_group() -> None:
    maps = _two_strategies(np.random.default_rng(0))
    found = ch.spray(maps, pooled=8, n_neighbors=10)
    tag = np.r_[np.ones(12, bool), np.zeros(18, bool)]
    assert found.n_clusters == 2  # the eigengap picks two groups
    assert found.sizes == [18, 12]  # numbered by size
    assert np.array_equal(found.labels == 1, tag)  # the tag maps, exactly
    assert found.eigenvalues[1] < 1e-9 < found.eigengap  # two disconnected components
    means = found.mean_maps((8, 8))
    assert means[1][6:, :2].sum() > 0.5 > means[0][6:, :2].sum() * 10  # corner: tag cluster
    again = ch.spray(maps, pooled=8, n_neighbors=10)
    assert np.array_equal(again.labels, found.labels)  # deterministic


def test_spray_agrees_with_scikit_learn() -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    metrics = pytest.importorskip("sklearn.metrics")
    maps = _two_strategies(np.random.default_rng(5), n_tag=10, n_obj=20)
    maps += np.random.default_rng(6).random(maps.shape) * 0.3  # noisier: not two components
    found = ch.spray(maps, n_clusters=2, pooled=8, n_neighbors=6)
    ref = cluster.SpectralClustering(
        2, affinity="precomputed", random_state=0, assign_labels="kmeans"
    ).fit(found.affinity)
    assert metrics.adjusted_rand_score(found.labels, ref.labels_) == pytest.approx(1.0)
    # the graph: symmetric 0/1, every node has at least k neighbours, no self-loops
    a = found.affinity
    assert np.array_equal(a, a.T) and set(np.unique(a)) <= {0.0, 1.0}
    assert (a.sum(1) >= 6).all() and not np.diag(a).any()


# -- with the real network (small) -------------------------------------------------------------


def test_with_head_explains_the_two_class_model(small_set: ch.FaceSet) -> None:
    from xai_helpers.explain import explain
    from xai_helpers.models import load_model
    from xai_helpers.perturb import to_input

    lm = load_model(device="cpu")
    images = small_set.images[[0, 150]]
    f = ch.frozen_features(lm, images, batch_size=1)
    assert f.shape == (2, 1280)
    with torch.no_grad():
        full = lm.model.forward_head(lm.model.forward_features(to_input(lm, list(images))), True)
    torch.testing.assert_close(f, full, atol=1e-4, rtol=1e-4)  # batching does not matter
    head = torch.nn.Linear(1280, 2)
    model = ch.with_head(lm, head)
    assert model.class_names == list(ch.CLASS_NAMES)
    assert lm.model.classifier.out_features == 1000  # the original is untouched
    x = to_input(model, list(images))
    with torch.no_grad():
        torch.testing.assert_close(model.model(x), head(f), atol=1e-4, rtol=1e-4)
    maps = explain(model, x, "grad_cam", target=1)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
