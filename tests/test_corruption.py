"""clipjax.apps.corruption: each corruption leaves the image alone at level 0 and degrades it
more at each higher level; bad --corruption specs are one line, exit 2; evaluate.py's
zero-shot robustness curve end to end on a tiny random CLIP."""

import os

import numpy as np
import pytest

from clipjax.apps.corruption import (CORRUPTIONS, corrupt, curve_png, degraded_templates, parse_corruption,
                                     robustness_curve, template_sets)

LEVELS = {"blur": [0, 1, 2, 4], "downscale": [0, 2, 4, 8], "jpeg": [0, 50, 80, 95], "noise": [0, 8, 32, 96]}


def _image():
    # a textured image: edges and gradients every corruption visibly changes
    y, x = np.mgrid[:48, :48]
    img = np.stack([(x * 5) % 256, (y * 7) % 256, ((x // 6 + y // 6) % 2) * 255], -1)
    return img.astype(np.uint8)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_levels_identity_and_monotone(kind):
    img = _image()
    outs = [corrupt(img, kind, level, index=3) for level in LEVELS[kind]]
    assert np.array_equal(outs[0], img)
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    errors = [float(np.abs(o.astype(np.float32) - img).mean()) for o in outs]
    assert all(a < b for a, b in zip(errors, errors[1:])), (kind, errors)
    # pure: the same call gives the same image (noise is seeded by the image index)
    assert np.array_equal(corrupt(img, kind, LEVELS[kind][2], index=3), outs[2])


def test_parse_and_templates():
    assert parse_corruption("blur:0,1,2.5") == ("blur", [0, 1, 2.5])
    for bad, word in [("fog:1", "unknown corruption"), ("blur", "levels after the colon"), ("blur:1,x", "not a number"),
                      ("jpeg:0,100", "must lie in"), ("noise:-1", "must lie in"), ("blur:1,1", "repeated")]:
        with pytest.raises(ValueError, match=word):
            parse_corruption(bad)
    assert "a blurry photo of a {}." in degraded_templates() and len(degraded_templates()) == 8
    sets = template_sets(["a photo of a {}.", "a blurry photo of a {}."])
    assert sets["dataset+degraded"].count("a blurry photo of a {}.") == 1 and len(sets["dataset+degraded"]) == 9


def test_robustness_curve_and_png(tmp_path):
    # features that get worse with the level: the curve records each classifier's top-1 per level
    labels = np.array([0, 1, 0, 1])
    cls = {"a": np.eye(2), "b": np.eye(2)[::-1]}
    feats = {0: np.eye(2)[labels], 4: np.eye(2)[[0, 0, 0, 0]]}
    m = robustness_curve(lambda level: feats[level], cls, labels, "blur", [0, 4])
    assert m["levels"] == [0, 4] and m["top1"] == {"a": [1.0, 0.5], "b": [0.0, 0.5]}
    assert m["top1/blur=4/a"] == 0.5
    curve_png(m, str(tmp_path / "c.png"))
    assert os.path.getsize(tmp_path / "c.png") > 1000


class _ColourEncoders:
    """Encoders without a model: an image's feature is its mean colour, a text's a fixed
    random vector; enough to run the corruption runners on a real (tiny) dataset quickly."""

    batch, image_size = 16, 32

    def bind(self, variables):
        rng = np.random.default_rng(0)
        table = {}

        def texts(ts):
            return np.stack([table.setdefault(t, rng.normal(size=3)) for t in ts])

        return (lambda pixels: np.asarray(pixels).mean(axis=(1, 2)), texts)


def test_runners_on_a_dataset():
    from clipjax.apps.corruption import linear_probe_under_corruption, zeroshot_under_corruption
    from clipjax.evaluation.datasets import tfds_builder
    from clipjax.evaluation.templates import zeroshot_prompts

    builder = tfds_builder("clipjax_shapes", None, dict(image_size=32, num_train=48, num_validation=24, num_test=32))
    names, templates = zeroshot_prompts("clipjax_shapes", builder)
    m, extra = zeroshot_under_corruption(_ColourEncoders(), None, builder, "test", 0, names, templates, "noise",
                                         [0, 64])
    assert m["levels"] == [0, 64] and extra["examples_used"] == 32 and len(m["top1"]["dataset+degraded"]) == 2
    m, extra = linear_probe_under_corruption(_ColourEncoders(), None, builder, "train", "", "test", 0, 0, "blur", [0, 2])
    # colour is what the probe reads: a blur keeps the mean colour, so the probe barely moves
    assert extra["validation_split"] == "validation" and 0 <= m["top1"]["linear_probe"][0] <= 1
    assert abs(m["top1"]["linear_probe"][1] - m["top1"]["linear_probe"][0]) <= 0.1
