"""tf.data training input (clipjax.data.pipeline.TFDataTrainData) on locally built datasets."""

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from clipjax.preprocess import CLIP_MEAN, CLIP_STD

SHAPES_KW = {"image_size": 32, "num_train": 64, "num_validation": 16, "num_test": 16}


def _config(total_steps=3, batch_size=16):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.total_steps = total_steps
    c.batch_size = batch_size
    c.log_every = 1
    c.eval_every = 0
    c.eval_examples = 32
    c.checkpoint_every = 3
    c.optimizer.warmup_steps = 1
    c.tensorboard = False
    return c


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from clipjax.data.shapes_dataset import build_shapes

    d = tmp_path_factory.mktemp("tfds")
    build_shapes(d, **SHAPES_KW)
    return str(d)


def _shapes_config(data_dir, batch_size=16):
    c = _config(batch_size=batch_size)
    c.data.name = "clipjax_shapes"
    c.data.data_dir = data_dir
    c.data.builder_kwargs = dict(SHAPES_KW)
    c.data.shuffle_buffer = 64
    return c


def _data(c, position=0):
    from clipjax import sharding as shd
    from clipjax.data.pipeline import make_train_data
    from clipjax.tasks.clip import model_config

    cfg = model_config(c)
    mesh = shd.make_mesh(dict(c.mesh))
    rules = shd.rules_from_config(c.get("axis_rules"))
    return make_train_data(c, cfg, mesh, rules, position), cfg


def test_shapes_batches_and_exact_resume(shapes_dir):
    from clipjax.data.pipeline import TFDataTrainData

    c = _shapes_config(shapes_dir)
    data, cfg = _data(c)
    assert isinstance(data, TFDataTrainData)
    batches = [next(data) for _ in range(3)]
    assert data.position == 48
    s, L = cfg.vision.image_size, cfg.text.context_length
    lo = (0 - np.max(CLIP_MEAN)) / np.min(CLIP_STD) - 1e-4
    hi = (1 - np.min(CLIP_MEAN)) / np.min(CLIP_STD) + 1e-4
    for imgs, ids in batches:
        assert imgs.shape == (16, s, s, 3) and imgs.dtype == np.float32
        assert ids.shape == (16, L) and ids.dtype == np.int32
        x = np.asarray(imgs)
        assert np.isfinite(x).all() and lo <= x.min() and x.max() <= hi
        assert x.std() > 0.1  # not constant
        t = np.asarray(ids)
        assert (t[:, 0] == 49406).all() and ((t == 49407).sum(1) == 1).all()
    # consecutive batches differ (shuffled, not the same rows twice)
    assert not np.array_equal(np.asarray(batches[0][0]), np.asarray(batches[1][0]))

    resumed, _ = _data(c, position=32)
    imgs, ids = next(resumed)
    np.testing.assert_array_equal(np.asarray(imgs), np.asarray(batches[2][0]))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(batches[2][1]))
    assert resumed.position == 48
    # also across the epoch boundary (64 examples = 4 batches): batch 5 from position 64
    more = [next(data) for _ in range(2)]
    resumed2, _ = _data(c, position=64)
    np.testing.assert_array_equal(np.asarray(next(resumed2)[0]), np.asarray(more[1][0]))


def test_augment_is_stateless_and_eval_matches_preprocess():
    import tensorflow as tf

    from clipjax.data import augment
    from clipjax.preprocess import preprocess_images

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    a = augment.train_transform(tf.constant(img), augment.example_seed(3, 7), 32).numpy()
    b = augment.train_transform(tf.constant(img), augment.example_seed(3, 7), 32).numpy()
    c = augment.train_transform(tf.constant(img), augment.example_seed(3, 8), 32).numpy()
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    for h, w in [(40, 50), (50, 40), (3, 60), (60, 3)]:
        top, left, ch, cw = (int(v) for v in augment.random_resized_crop_window(
            augment.example_seed(0, h * w), h, w))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    e = augment.eval_transform(tf.constant(img), 32).numpy()
    np.testing.assert_array_equal(e, preprocess_images(img, 32)[0])
    gray = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert augment.train_transform(tf.constant(gray), augment.example_seed(0, 0), 32).shape == (32, 32, 3)
    et = augment.eval_transform_tf(tf.constant(img), 32).numpy()
    assert et.shape == (32, 32, 3) and np.abs(et - e).mean() < 0.1


def test_train_runs_on_clipjax_shapes(shapes_dir, tmp_path):
    from clipjax.tasks import train

    c = _shapes_config(shapes_dir)
    final = train(c, str(tmp_path / "run"))
    assert np.isfinite(final["loss"])


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
                    reason="Fashion-MNIST IDX files not installed")
def test_fashion_mnist_batch(tmp_path_factory):
    d = os.environ.get("CLIPJAX_TEST_FMNIST_TFDS") or str(tmp_path_factory.mktemp("fmnist"))
    c = _config(batch_size=8)
    c.data.name = "clipjax_fashion_mnist"
    c.data.data_dir = d
    c.data.shuffle_buffer = 256
    data, cfg = _data(c)
    imgs, ids = next(data)
    s = cfg.vision.image_size
    assert imgs.shape == (8, s, s, 3) and ids.shape == (8, cfg.text.context_length)
    x = np.asarray(imgs)
    # grayscale tiled to RGB: the three channels agree up to the per-channel normalisation
    raw = x * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
    np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-5)
