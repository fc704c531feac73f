"""CLIPSeg data (referring phrases, negatives, crops keeping the target, visual prompts) and the
paper's segmentation metrics."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from clipjax.data import segmentation as seg  # noqa: E402
from clipjax.data.shapes_dataset import build_shapes  # noqa: E402
from clipjax.evaluation.segmentation_metrics import THRESHOLDS, SegmentationMetrics  # noqa: E402

KW = dict(image_size=32, num_train=24, num_validation=8, num_test=8)


@pytest.fixture(scope="module")
def builder():
    return build_shapes(None, **KW)


def test_training_examples(builder):
    ds = builder.as_dataset(split="train", shuffle_files=False)
    negatives = 0
    for i, ex in enumerate(ds.take(24)):
        img, phrase, mask, vp, alpha = seg.segmentation_example(ex, tf.constant(i, tf.int64), 0, 48, 0.3, 0.5)
        assert img.shape == (48, 48, 3) and mask.shape == (48, 48) and vp.shape == (48, 48, 3)
        assert 0.0 <= float(alpha) <= 1.0
        phrase = phrase.numpy().decode()
        assert phrase.startswith("the ")
        real = [p.decode() for p in ex["objects"]["phrase"].numpy()]
        if float(tf.reduce_sum(mask)) == 0.0:
            negatives += 1
            assert phrase not in real and float(alpha) == 1.0  # negatives: absent object, text only
        else:
            assert phrase in real
            assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    assert 0 < negatives < 24


def test_crop_keeps_the_target():
    mask = np.zeros((64, 64), np.float32)
    mask[2:10, 50:60] = 1  # a small object in a corner
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    for k in range(10):
        _, m = seg.crop_keeping(img, mask, tf.constant([k, 1], tf.int64), 32, (0.6, 0.8))
        assert float(tf.reduce_sum(m)) >= 0.8 * mask.sum() * (32 / 64) ** 2 / 0.8 ** 2 * 0.5


def test_eval_examples(builder):
    ev = seg.eval_examples(builder, "test", 8)
    n = len(ev["phrases"])
    assert ev["images"].shape == (n, 32, 32, 3) and ev["masks"].shape == (n, 32, 32) and n >= 8
    assert ev["masks"].reshape(n, -1).sum(1).min() > 0


def test_metrics_perfect_and_chance():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 16, 16)) > 0.7).astype(np.uint8)
    m = SegmentationMetrics()
    m.add(masks * 0.5 + 0.45 * rng.random(masks.shape), masks, classes=[0, 0, 1, 1, 2, 2])  # separable scores
    v = m.value()
    fg = masks.sum()
    assert v["iou_fg"] == pytest.approx(fg / (1 + fg)) and v["miou"] > 0.95 and v["ap"] > 0.9
    chance = SegmentationMetrics()
    chance.add(rng.random((6, 16, 16)), masks, classes=[0, 0, 1, 1, 2, 2])
    c = chance.value()
    assert c["iou_fg"] < 0.5 and c["ap"] < 0.5
    assert len(THRESHOLDS) == 49 and THRESHOLDS[0] == pytest.approx(0.02)
    with pytest.raises(ValueError):
        SegmentationMetrics().value()


def test_train_stream_global_batches_and_resume(builder):
    import ml_collections

    from clipjax import sharding as shd
    from clipjax.tokenizer import tokenize

    c = ml_collections.ConfigDict(dict(batch_size=8, data=dict(name="clipjax_shapes", data_dir="", seed=3,
                                                                 shuffle_buffer=16, builder_kwargs=KW)))
    mesh = shd.make_mesh({"data": -1})
    tok = lambda t: tokenize(t, context_length=16)  # noqa: E731
    a = seg.SegmentationTrainData(c.data, c.batch_size, 40, tok, mesh, shd.DEFAULT_RULES)
    batches = [next(a) for _ in range(3)]
    img, ids, mask, vp, alpha = batches[0]
    assert img.shape == (8, 40, 40, 3) and ids.shape == (8, 16) and mask.shape == (8, 40, 40)
    assert vp.shape == (8, 40, 40, 3) and alpha.shape == (8,) and len(img.sharding.device_set) == 8
    b = seg.SegmentationTrainData(c.data, c.batch_size, 40, tok, mesh, shd.DEFAULT_RULES, position=16)  # resume after 2 batches
    for x, y in zip(next(b), batches[2]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
