"""TFDS builders: clipjax_shapes (procedural), clipjax_fashion_mnist (local IDX files), and the
catalog loader that must never go online by itself."""

import gzip
import hashlib
import os
import pathlib
import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from clipjax.data import catalog, fashion_mnist
from clipjax.data import shapes_dataset as sd

SMALL = {"image_size": 48, "num_train": 300, "num_validation": 60, "num_test": 120, "seed": 3}
FMNIST_DIR = fashion_mnist.DEFAULT_DIR


def _record_hashes(builder):
    root = pathlib.Path(builder.data_dir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob("*.tfrecord*"))}


def _all(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return sd.build_shapes(tmp_path_factory.mktemp("shapes_a"), **SMALL)


# ------------------------------------------------------------------------------ shapes
def test_shapes_deterministic_bytes(shapes, tmp_path):
    again = sd.build_shapes(tmp_path, **SMALL)
    a, b = _record_hashes(shapes), _record_hashes(again)
    assert len(a) == 3 and a == b
    # A different seed gives different examples.
    x = sd.draw_example(SMALL["seed"], "train", 0, 48)["image_array"]
    y = sd.draw_example(SMALL["seed"] + 1, "train", 0, 48)["image_array"]
    assert not np.array_equal(x, y)


def test_shapes_splits_and_config_names(shapes):
    splits = shapes.info.splits
    assert {k: splits[k].num_examples for k in ("train", "validation", "test")} == {
        "train": 300, "validation": 60, "test": 120}
    assert shapes.builder_config.name == "s48_n300-60-120_seed3"
    assert sd.ClipjaxShapes(data_dir=shapes.data_dir_root).builder_config.name == "default"
    assert shapes.info.features["label"].names == list(sd.CLASSNAMES)
    assert len(sd.CLASSNAMES) == 30 and len(sd.HELD_OUT) == 5


def test_shapes_held_out_combinations(shapes):
    held = {f"{c} {s}" for c, s in sd.HELD_OUT}
    feats = shapes.info.features["objects"]

    def pairs(split):
        out = []
        for ex in _all(shapes, split):
            o = ex["objects"]
            out += [f"{feats['color'].int2str(c)} {feats['shape'].int2str(s)}"
                    for c, s in zip(o["color"], o["shape"])]
        return out

    train, test = pairs("train"), pairs("test")
    assert not held & set(train)
    assert len(set(train)) == 25  # every other pair is seen in training
    assert held <= set(test)
    test_labels = {sd.CLASSNAMES[ex["label"]] for ex in _all(shapes, "test")}
    assert test_labels & held


def test_shapes_masks_phrases_tags_labels(shapes):
    f = shapes.info.features["objects"]
    n_checked_colour = 0
    for ex in _all(shapes, "validation"):
        o = ex["objects"]
        masks = o["mask"][..., 0]
        assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        assert 1 <= len(masks) <= 3
        assert masks.sum(axis=0).max() <= 1  # objects never overlap
        areas = masks.reshape(len(masks), -1).sum(-1)
        assert (areas > 0).all()
        tags = set()
        for i in range(len(masks)):
            color, shape = f["color"].int2str(o["color"][i]), f["shape"].int2str(o["shape"][i])
            size, pos = f["size"].int2str(o["size"][i]), f["position"].int2str(o["position"][i])
            texture = f["texture"].int2str(o["texture"][i])
            tags |= {color, shape, size, texture}
            phrase = o["phrase"][i].decode()
            assert phrase.startswith(f"the {size} {color} {shape} ")
            assert phrase.endswith(sd.POSITION_PHRASES[pos])
            ys, xs = np.nonzero(masks[i])
            cy, cx = ys.mean() / 48, xs.mean() / 48
            expect = {"left": cx < 1 / 3, "right": cx > 2 / 3, "top": cy < 1 / 3,
                      "bottom": cy > 2 / 3, "center": 1 / 3 < cx < 2 / 3 and 1 / 3 < cy < 2 / 3}
            assert expect[pos], (phrase, cy, cx)
            if texture == "solid":  # the mask covers exactly this object's colour
                mean = ex["image"][masks[i] == 1].mean(0)
                assert np.abs(mean - np.array(sd.COLORS[color])).max() < 30, (phrase, mean)
                n_checked_colour += 1
        assert {sd.TAGS[j] for j in np.nonzero(ex["tags"])[0]} == tags
        big = int(np.argmax(areas))
        assert sd.CLASSNAMES[ex["label"]] == (
            f"{f['color'].int2str(o['color'][big])} {f['shape'].int2str(o['shape'][big])}")
        caps = [c.decode() for c in ex["captions"]]
        assert len(caps) == sd.NUM_CAPTIONS and all(caps)
    assert n_checked_colour > 10


# ------------------------------------------------------------------------------ fashion-mnist
needs_fmnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FMNIST_DIR, fashion_mnist.FILES["train_images"])),
    reason="apt-get install dataset-fashion-mnist")


def _idx_labels(name):
    with gzip.open(os.path.join(FMNIST_DIR, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8)


@needs_fmnist
def test_fashion_mnist_builder(tmp_path):
    b = fashion_mnist.build_fashion_mnist(tmp_path)
    assert {k: b.info.splits[k].num_examples for k in ("train", "validation", "test")} == {
        "train": 55000, "validation": 5000, "test": 10000}
    assert b.info.features["label"].names == list(fashion_mnist.CLASSNAMES)
    train_labels = _idx_labels(fashion_mnist.FILES["train_labels"])
    test_labels = _idx_labels(fashion_mnist.FILES["test_labels"])
    assert train_labels[0] == 9  # the first training image is an ankle boot
    first = next(iter(tfds.as_numpy(b.as_dataset(split="train", shuffle_files=False))))
    assert first["label"] == 9 and first["image"].shape == (28, 28, 1)
    assert first["caption"].decode() == "a photo of a ankle boot."
    with gzip.open(os.path.join(FMNIST_DIR, fashion_mnist.FILES["train_images"])) as f:
        img0 = np.frombuffer(f.read(16 + 784), np.uint8, offset=16).reshape(28, 28)
    np.testing.assert_array_equal(first["image"][..., 0], img0)
    val = next(iter(tfds.as_numpy(b.as_dataset(split="validation", shuffle_files=False))))
    assert val["label"] == train_labels[55000]
    labels = np.concatenate([x["label"] for x in tfds.as_numpy(
        b.as_dataset(split="test", shuffle_files=False).batch(2000))])
    np.testing.assert_array_equal(labels, test_labels)
    assert labels.min() >= 0 and labels.max() <= 9


def test_fashion_mnist_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        fashion_mnist.load_arrays(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(e.value)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x04" + b"\x00" * 20)
    with pytest.raises(fashion_mnist.IdxFormatError, match="magic"):
        fashion_mnist.read_idx(str(bad))
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01" * 5)
    with pytest.raises(fashion_mnist.IdxFormatError, match="10"):
        fashion_mnist.read_idx(str(short))


# ------------------------------------------------------------------------------ catalog
def test_catalog_unprepared_fails_fast_without_network(tmp_path):
    t = time.time()
    with pytest.raises(catalog.DatasetNotPreparedError, match="not prepared") as e:
        catalog.load_tfds("cifar10", "train", tmp_path)
    assert time.time() - t < 30
    # the hint is a command a CLI user can run, not a Python keyword
    assert str(tmp_path) in str(e.value) and f"tfds build cifar10 --data_dir={tmp_path}" in str(e.value)
    assert "download=True" not in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing written, nothing fetched


def test_catalog_reads_prepared_and_local(shapes):
    ds = catalog.load_tfds("clipjax_shapes", "test[:5]", shapes.data_dir_root,
                           builder_kwargs=SMALL)
    assert len(list(ds)) == 5
