"""evaluate.py: metric definitions on hand-made cases, the three tasks end to end on a tiny random
CLIP and the built-in dataset, the classifier cache, and bad input."""

import json
import os

import jax
import numpy as np
import pytest

import evaluate
from clipjax.evaluation.linear_probe import linear_probe
from clipjax.evaluation.retrieval import retrieval_metrics
from clipjax.evaluation.templates import prompts_for, read_lines
from clipjax.evaluation.zeroshot import classification_metrics

SHAPES = json.dumps(dict(image_size=32, num_train=48, num_validation=24, num_test=32))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import flax.linen as nn

    from clipjax.convert.formats import save_clipjax
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-vit")
    v = nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 77), np.int32)))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_clipjax(path, v, cfg)
    return path


def _run(tmp_path, *args):
    out = str(tmp_path / "r.json")
    rc = evaluate.main(["--builder-kwargs", SHAPES, "--no-progress", "--output", out, *args])
    return rc, (json.load(open(out)) if rc == 0 else None)


def test_metric_definitions():
    logits = np.array([[3, 2, 1], [1, 3, 2], [3, 1, 2], [1, 2, 3]], np.float32)
    m = classification_metrics(logits, np.array([0, 0, 2, 2]))
    assert m["top1"] == 0.5 and m["mean_per_class_recall"] == 0.5
    # 2 images, 2 captions each: each image's nearest text is one of its captions, but text 0
    # (of image 0) is nearer image 1 and text 2 (of image 1) nearer image 0
    img = np.eye(3, dtype=np.float32)[:2]
    txt = np.array([[0, 0.5, 0.5], [1, 0.1, 0], [0.8, 0.6, 0], [0, 0.9, 0.1]], np.float32)
    r = retrieval_metrics(img, txt, np.array([0, 0, 1, 1]), ks=(1, 2))
    assert r["image_to_text_R@1"] == 1.0
    assert r["text_to_image_R@1"] == 0.5 and r["text_to_image_R@2"] == 1.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    p = linear_probe(x[:60], y[:60], x[60:90], y[60:90], x[90:], y[90:], cs=(0.1, 100.0))
    assert p["top1"] >= 0.9 and p["best_C"] in (0.1, 100.0)


def test_prompts():
    names, templates = prompts_for("imagenet2012")
    assert len(names) == 1000 and len(templates) == 80
    names, templates = prompts_for("cifar100")
    assert len(names) == 100 and len(templates) == 18
    assert len(prompts_for("fashion_mnist")[0]) == 10 and len(prompts_for("clipjax_shapes")[0]) == 30
    assert prompts_for("some_unknown_dataset") is None


def test_zeroshot_retrieval_probe(tmp_path, ckpt):
    rc, res = _run(tmp_path, "--checkpoint", ckpt, "--task", "zeroshot", "--dataset", "clipjax_shapes")
    assert rc == 0 and 0 <= res["top1"] <= res["top5"] <= 1 and "heldout_top1" in res
    s = res["settings"]
    assert s["num_classes"] == 30 and s["devices"] == 8 and not s["classifier_cached"]
    assert os.path.exists(tmp_path / "r_confusion.png")
    rc, res = _run(tmp_path, "--checkpoint", ckpt, "--task", "zeroshot", "--dataset", "clipjax_shapes")
    assert rc == 0 and res["settings"]["classifier_cached"]  # text classifier reused from disk
    rc, res = _run(tmp_path, "--checkpoint", ckpt, "--task", "retrieval", "--dataset", "clipjax_shapes",
                   "--examples", "20")
    assert rc == 0 and res["settings"]["texts"] == 100 and 0 <= res["image_to_text_R@1"] <= res["image_to_text_R@10"]
    rc, res = _run(tmp_path, "--checkpoint", ckpt, "--task", "linear_probe", "--dataset", "clipjax_shapes")
    assert rc == 0 and 0 <= res["top1"] <= 1 and res["settings"]["validation_split"] == "validation"


def test_bad_input(tmp_path, ckpt, capsys):
    def err(*args, kwargs=SHAPES):
        rc = evaluate.main(["--builder-kwargs", kwargs, "--no-progress", *args])
        e = capsys.readouterr().err
        assert rc == 2 and "evaluate.py: error:" in e and "Traceback" not in e, e
        return e

    assert "unknown dataset" in err("--checkpoint", ckpt, "--dataset", "no_such_dataset_xyz")
    assert "not prepared" in err("--checkpoint", ckpt, "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"),
                                 kwargs="")
    assert "builder kwargs" in err("--checkpoint", ckpt, "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n\nc\n")
    assert "line 3 is empty" in err("--checkpoint", ckpt, "--classnames", str(names))
    names.write_text("a\nb\na\n")
    assert "line 3 repeats line 1" in err("--checkpoint", ckpt, "--classnames", str(names))
    assert "no split" in err("--checkpoint", ckpt, "--split", "nope")
    not_clip = tmp_path / "notclip"
    not_clip.mkdir()
    (not_clip / "config.json").write_text('{"model_type": "bert"}')
    assert "error" in err("--checkpoint", str(not_clip))
    with pytest.raises(SystemExit):  # argparse: unknown task
        evaluate.main(["--checkpoint", ckpt, "--task", "nope"])
    with pytest.raises(ValueError, match="empty"):
        read_lines(_empty(tmp_path), "class-name")


def _empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    return str(p)


def test_collection_counts_and_column_flags(tmp_path, ckpt, capsys):
    """A collection with other column names (--image-key / --caption-key) and bad rows: the rows
    used and skipped (and why) are in the table and the JSON, never dropped silently."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.fromarray((rng.integers(0, 65535, (40, 40)) ).astype(np.uint16)).save(tmp_path / "deep.png")
    rows = [f"{i}.png,photo number {i}" for i in range(4)] + ["bad.jpg,a broken file", "gone.png,a missing file",
                                                             "deep.png,a 16-bit photo", "1.png,"]
    (tmp_path / "pairs.csv").write_text("img,text\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "c.json")
    base = ["--checkpoint", ckpt, "--task", "retrieval", "--dataset", "collection", "--no-progress",
            "--source", str(tmp_path / "pairs.csv"), "--output", out]
    assert evaluate.main(base) == 2
    assert "--image-key" in capsys.readouterr().err  # the columns are not the defaults: the flags are named
    assert evaluate.main(base + ["--image-key", "img", "--caption-key", "text"]) == 0
    printed = capsys.readouterr().out
    counts = json.load(open(out))["settings"]["data_counts"]
    assert counts["decoded"] == 5 and counts["skipped"] == 3 and counts["converted"] == 1
    assert counts["skipped_corrupt"] == 1 and counts["skipped_missing"] == 1 and counts["skipped_empty_caption"] == 1
    assert "data: 5 examples used, 3 skipped" in printed and "skipped_corrupt=1" in printed
