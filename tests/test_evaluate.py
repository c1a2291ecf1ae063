"""The batch evaluation: complete rows, direct-call equality, resume after a torn row and after
SIGKILL, and a 2-process gloo run under torchrun equal to the 1-process run."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xai_helpers import metrics as M
from xai_helpers.boxes import box_to_input_frame, boxes_to_mask
from xai_helpers.evaluate import (
    METRICS,
    EvaluateConfig,
    evaluate_batch,
    main,
    output_layer,
    run,
)
from xai_helpers.evaluate_data import (
    DataError,
    find_images,
    folder_labels,
    read_boxes,
    read_labels_csv,
    resolve_class,
)
from xai_helpers.evaluate_results import (
    ShardWriter,
    bootstrap_interval,
    read_shard,
    shard_path,
)
from xai_helpers.explain import explain
from xai_helpers.images import sample_path
from xai_helpers.models import imagenet_classes

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["cam", "lrp"]  # cheap; LRP is signed (the positive-part path)
STEPS = 2
CAT_BOX = [0, 0, 400, 300]  # data/boxes.json's cat, in the photo's pixels
DEFAULT_METRICS = [m for m, spec in METRICS.items() if spec.default]  # all but sanity
N_ROWS = 3 * len(METHODS) * len(DEFAULT_METRICS)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two photos, a truncated PNG that sorts first, a text file (ignored) and a box file."""
    root = tmp_path_factory.mktemp("images")
    shutil.copy(sample_path("chelsea"), root / "chelsea.png")
    Image.open(sample_path("coffee")).save(root / "coffee.jpg", quality=90)
    (root / "a_broken.png").write_bytes(sample_path("rocket").read_bytes()[:200])
    (root / "notes.txt").write_text("not an image")
    boxes = {"chelsea": {"cat": {"box": CAT_BOX, "classes": [281, 282, 283, 284, 285]}}}
    (root.parent / f"{root.name}_boxes.json").write_text(json.dumps(boxes))
    return root


def _config(folder: Path, out: Path, **kw) -> EvaluateConfig:
    base = dict(
        images=str(folder),
        out=str(out),
        methods=list(METHODS),
        boxes=str(folder.parent / f"{folder.name}_boxes.json"),
        steps=STEPS,
        batch_size=2,
        progress=False,
        figures=False,
    )
    base.update(kw)
    return EvaluateConfig(**base)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as each process under torchrun: a float sum split over another number of
    threads may differ in the last bits, and the tables here are compared exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory, lite0):
    """One uninterrupted 1-process run."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(_config(folder, out, figures=True), lite0)


def _table(out: Path, drop=("seconds", "cpu_seconds")) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def test_rows_complete_and_broken_image_skipped(reference):
    out, stats = reference
    rows = _table(out)
    assert len(rows) == N_ROWS
    assert stats.units_computed == 4 and stats.units_done_before == 0  # 2 batches x 2 methods
    keys = {(r["image"], r["method"], r["metric"]) for r in rows}
    assert len(keys) == N_ROWS
    broken = [r for r in rows if r["image"] == "a_broken.png"]
    assert len(broken) == len(METHODS) * len(DEFAULT_METRICS)
    assert all(r["status"] == "skipped" and "ImageLoadError" in r["reason"] for r in broken)
    assert all(r["value"] == "" for r in broken)
    coffee = [r for r in rows if r["image"] == "coffee.jpg"]
    assert {r["status"] for r in coffee if METRICS[r["metric"]].needs_boxes} == {"no_box"}
    assert {r["status"] for r in coffee if not METRICS[r["metric"]].needs_boxes} == {"ok"}
    assert {r["status"] for r in rows if r["image"] == "chelsea.png"} == {"ok"}
    for name in ("summary.md", "summary.csv", "curves.png", "distributions.png"):
        assert (out / name).stat().st_size > 0, name


def test_values_equal_calling_the_methods_and_metrics(reference, folder, lite0):
    out, _ = reference
    rows = {(r["image"], r["method"], r["metric"]): r for r in _table(out)}
    for name in ("chelsea.png", "coffee.jpg"):
        x = lite0.preprocess(folder / name)  # the broken file leaves chelsea alone in its batch
        t = int(lite0.model(x).argmax(1))
        for method in METHODS:
            maps = explain(lite0, x, method, [t])
            pos = maps.clamp_min(0) if method == "lrp" else maps
            tt = torch.tensor([t])
            want = {
                "deletion": M.deletion(lite0.model, x, maps, tt, "dataset_mean", steps=STEPS),
                "insertion": M.insertion(lite0.model, x, maps, tt, "blur", steps=STEPS),
            }
            want = {k: float(v.auc[0]) for k, v in want.items()}
            drop = M.average_drop_increase(lite0.model, x, pos, tt)
            want["average_drop"] = 100 * float(drop.drop[0])
            want["increase"] = 100.0 * float(drop.increase[0])
            if name == "chelsea.png":
                size = Image.open(folder / name).size
                box = box_to_input_frame(CAT_BOX, size, lite0.resize, lite0.input_size)
                mask = boxes_to_mask([box], tuple(x.shape[-2:]))
                want["pointing_game"] = float(M.pointing_game(maps, mask)[0])
                want["energy_pointing_game"] = float(M.energy_pointing_game(pos, mask)[0])
            for metric, value in want.items():
                row = rows[(name, method, metric)]
                assert int(row["target"]) == t and row["target_source"] == "top1"
                assert float(row["value"]) == pytest.approx(value, abs=1e-9), (name, method, metric)


def test_resume_after_torn_row_recomputes_only_the_lost_unit(reference, folder, tmp_path, lite0):
    out, _ = reference
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shard = shard_path(copy, 0)
    lines = shard.read_bytes().splitlines(keepends=True)
    rows, _ = read_shard(shard)
    assert rows[-1]["unit_rows"] == len(DEFAULT_METRICS)  # the last unit: coffee alone in batch 1
    # keep part of the last unit and then half a row: a write cut by a kill
    torn = b"".join(lines[: len(lines) - 3]) + lines[-3][:25]
    shard.write_bytes(torn)
    with pytest.raises(DataError, match="--resume"):
        run(_config(folder, copy))
    stats = run(_config(folder, copy, resume=True), lite0)
    assert (stats.units_computed, stats.units_done_before) == (1, 3)
    assert _table(copy) == _table(out)
    assert read_shard(shard)[1] == shard.stat().st_size  # nothing torn left in the file
    again = run(_config(folder, copy, resume=True), lite0)
    assert (again.units_computed, again.units_done_before) == (0, 4)


def test_resume_refuses_other_settings(reference, folder, tmp_path, lite0):
    out, _ = reference
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    with pytest.raises(DataError, match="steps was 2, now 3"):
        run(_config(folder, copy, resume=True, steps=3), lite0)


def test_resume_after_sigkill_of_a_real_process(reference, folder, tmp_path, lite0):
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "xai_helpers.evaluate", str(folder), "--out", str(out),
        "--methods", *METHODS, "--boxes", str(folder.parent / f"{folder.name}_boxes.json"),
        "--steps", str(STEPS), "--batch-size", "1", "--workers", "0", "--no-progress",
        "--no-figures",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard = shard_path(out, 0)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (
                shard.is_file()
                and len({(r["batch"], r["method"]) for r in read_shard(shard)[0]}) >= 3
            ):
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len({(r["batch"], r["method"]) for r in read_shard(shard)[0]})
    assert 3 <= done < 6 and not (out / "results.csv").exists()
    stats = run(_config(folder, out, resume=True, batch_size=1), lite0)
    assert stats.units_done_before == done and stats.units_computed == 6 - done
    value_columns = (
        "batch",
        "unit_rows",
        "seconds",
        "cpu_seconds",
    )  # batch size 1 here, 2 in the reference
    assert _table(out, value_columns) == _table(reference[0], value_columns)


def test_two_process_gloo_run_equals_one_process_run(reference, folder, tmp_path):
    out = tmp_path / "sharded"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "xai_helpers.evaluate", str(folder), "--out", str(out), "--methods", *METHODS,
        "--boxes", str(folder.parent / f"{folder.name}_boxes.json"), "--steps", str(STEPS),
        "--batch-size", "2", "--workers", "0", "--no-progress", "--no-figures",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "rank-000.jsonl",
        "rank-001.jsonl",
    ]
    for rank in (0, 1):  # each process computed its own batch: 0 and 1
        rows, _ = read_shard(shard_path(out, rank))
        assert {r["batch"] for r in rows} == {rank}
    assert _table(out) == _table(reference[0])


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def test_shard_reader_drops_an_incomplete_unit_and_a_torn_line(tmp_path):
    path = tmp_path / "s.jsonl"
    unit = [{"batch": 0, "method": "cam", "unit_rows": 2, "i": i} for i in range(2)]
    with ShardWriter(path) as w:
        w.commit(unit)
        end = path.stat().st_size
        w.commit([{**r, "batch": 1} for r in unit])
    full = path.read_bytes()
    # half of unit 1 (one whole row) and a torn row: neither is read
    path.write_bytes(full[:end] + full[end:].split(b"\n")[0] + b"\n" + b'{"batch": 1, "me')
    rows, offset = read_shard(path)
    assert [r["batch"] for r in rows] == [0, 0] and offset == end
    with ShardWriter(path) as w:  # opening cuts the shard back
        assert path.stat().st_size == end and w.done_units() == {(0, "cam")}
    with pytest.raises(ValueError, match="unit_rows"):
        ShardWriter(path).commit([{"batch": 2, "method": "cam", "unit_rows": 3}])


def test_bootstrap_interval_matches_a_loop_and_behaves():
    v = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])
    lo, hi = bootstrap_interval(v, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, v.size, size=(500, v.size))
    means = sorted(sum(v[j] for j in row) / v.size for row in idx)
    assert lo == pytest.approx(np.quantile(means, 0.025)) and hi == pytest.approx(
        np.quantile(means, 0.975)
    )
    assert lo < v.mean() < hi
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert all(np.isnan(bootstrap_interval([])))
    wide = bootstrap_interval(np.r_[v, v, v, v])  # more data: a narrower interval
    assert wide[1] - wide[0] < hi - lo


def test_labels_from_class_folders_csv_and_boxes_from_xml(tmp_path):
    names = imagenet_classes()
    assert resolve_class("n01440764", names) == 0 and resolve_class("285", names) == 285
    assert resolve_class("egyptian_cat", names) == 285 and resolve_class("nonsense", names) is None
    for folder in ("n01440764", "285"):
        (tmp_path / "set" / folder).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(tmp_path / "set" / folder / "a.png")
    paths = find_images(tmp_path / "set")
    assert folder_labels(tmp_path / "set", paths, names) == {"285/a.png": 285, "n01440764/a.png": 0}
    (tmp_path / "set" / "typo").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "set" / "typo" / "b.png")
    with pytest.raises(DataError, match="typo"):
        folder_labels(tmp_path / "set", find_images(tmp_path / "set"), names)
    (tmp_path / "labels.csv").write_text("image,label\na.png,Egyptian cat\n")
    assert read_labels_csv(tmp_path / "labels.csv", names) == {"a.png": 285}
    (tmp_path / "bad.csv").write_text("image,label\na.png,no such class\n")
    with pytest.raises(DataError, match="line 2"):
        read_labels_csv(tmp_path / "bad.csv", names)
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><object><name>n01751748</name><bndbox><xmin>10</xmin><ymin>20</ymin>"
        "<xmax>110</xmax><ymax>220</ymax></bndbox></object></annotation>"
    )
    boxes = read_boxes(xml, names)
    (obj,) = boxes["ILSVRC2012_val_00000001"]
    assert obj.box == (10.0, 20.0, 110.0, 220.0) and obj.classes == (
        resolve_class("n01751748", names),
    )


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing" in err and "\n" not in err
    assert main(["samples", "--out", str(tmp_path / "o"), "--methods", "grad_cm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "grad_cam" in err and "\n" not in err


def test_imagenet_layout_labels_from_xml_boxes_and_a_seeded_sample(tmp_path):
    from types import SimpleNamespace

    from xai_helpers.evaluate import _items

    names = imagenet_classes()
    (tmp_path / "val").mkdir()
    (tmp_path / "xml").mkdir()
    for i, wnid in enumerate(["n01440764", "n02124075", "n01440764", "n04266014"], start=1):
        stem = f"ILSVRC2012_val_{i:08d}"
        Image.new("RGB", (60, 50)).save(tmp_path / "val" / f"{stem}.JPEG")
        (tmp_path / "xml" / f"{stem}.xml").write_text(
            f"<annotation><object><name>{wnid}</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
            "<xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
        )
    lm = SimpleNamespace(class_names=names)
    config = EvaluateConfig(str(tmp_path / "val"), str(tmp_path / "o"), labels="boxes")
    config.boxes = str(tmp_path / "xml")
    items, _ = _items(config, lm)
    assert [it.label for it in items] == [0, 285, 0, resolve_class("n04266014", names)]
    assert items[1].boxes[0].box == (1.0, 2.0, 30.0, 40.0)
    config.sample = 2
    first = [it.key for it in _items(config, lm)[0]]
    assert len(first) == 2 and first == sorted(first)
    assert first == [it.key for it in _items(config, lm)[0]]  # the same draw every time
    draws = set()
    for seed in range(8):
        config.seed = seed
        draws.add(tuple(it.key for it in _items(config, lm)[0]))
    assert len(draws) > 1  # the seed decides which images


def test_a_full_disk_leaves_only_complete_units(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "s.jsonl"
    unit = [{"batch": 0, "method": "cam", "unit_rows": 2, "i": i} for i in range(2)]
    writer = ShardWriter(path)
    writer.commit(unit)
    size = path.stat().st_size
    real_write = os.write

    def full_disk(fd, data):  # half the bytes reach the file, then the disk is full
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="--resume"):
        writer.commit([{**r, "batch": 1} for r in unit])
    monkeypatch.undo()
    writer.close()
    assert path.stat().st_size == size
    assert [r["batch"] for r in read_shard(path)[0]] == [0, 0]


def test_sanity_metric_is_opt_in_and_equals_the_first_cascade_step(lite0):
    # Adebayo et al.'s first step, per image: the map against the map of a copy whose output
    # layer is randomised; computed by hand with xai_helpers.metrics
    assert "sanity" in METRICS and not METRICS["sanity"].default  # it explains twice: opt-in
    assert output_layer(lite0.model) == "classifier"
    toy = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    assert output_layer(toy) == "0"
    x = lite0.preprocess([sample_path("chelsea"), sample_path("coffee")])
    out = evaluate_batch(lite0, x, [282, 967], "grad_cam", ["sanity"])
    maps = explain(lite0, x, "grad_cam", [282, 967])
    random_copy = M.randomize_layers(lite0.model, ["classifier"], seed=0)
    again = explain(dataclasses.replace(lite0, model=random_copy), x, "grad_cam", [282, 967])
    expected = M.spearman_rank(maps, again).tolist()
    assert out["sanity"][1] is None
    np.testing.assert_allclose(out["sanity"][0], expected, atol=1e-9)
    # the cat's Grad-CAM changes (-0.35, as in notebook 08); the espresso's, filling the frame,
    # hardly does: one image decides nothing, which is why the batch job reports every image
    assert out["sanity"][0][0] < 0.0 < 0.5 < out["sanity"][0][1]
    assert lite0.model.classifier.weight.requires_grad  # the model itself is untouched
