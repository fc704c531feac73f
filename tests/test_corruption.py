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
