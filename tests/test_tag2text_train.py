"""Tag2Text end to end on a tiny clipjax_shapes: train.py's tag2text task (tie inside the loss,
periodic mAP), the workdir loads with clipjax.load, evaluate.py --task tagging / captioning, and
tag.py's tags and tag-guided captions; resumed training continues from the checkpoint."""

import json
import os

import numpy as np
from PIL import Image

import clipjax
from test_train_smoke import TINY_SHAPES, _config


def _tiny(total_steps):
    import ml_collections

    c = _config(total_steps=total_steps)
    c.task = "tag2text"
    w = 32
    c.model = ml_collections.ConfigDict(dict(
        variant="tag2text", vision_kind="vit",
        vision=dict(kind="vit", image_size=32, patch_size=8, width=w, layers=1, heads=2, mlp_dim=64, act="gelu",
                    ln_eps=1e-6, ln_pre=False, patch_bias=True),
        tagging=dict(width=w, layers=1, heads=2, mlp_dim=64, encoder_width=w, label_source="learned",
                     classifier="groupwise", threshold=0.5),
        text=dict(kind="bert", context_length=40, width=w, layers=2, heads=2, mlp_dim=64),
        tag_max_length=16, caption_max_length=32))
    c.batch_size = 8
    c.eval_every = total_steps
    c.eval_examples = 8
    c.checkpoint_every = total_steps
    return c


def test_tag2text_trains_evaluates_and_predicts(tmp_path):
    import evaluate
    import tag
    from clipjax.train.loop import train

    wd = str(tmp_path / "t2t")
    final = train(_tiny(3), wd)
    assert np.isfinite(final["loss"]) and 0 <= final["tag_mAP"] <= 1 and "tag_F1" in final
    assert os.path.exists(os.path.join(wd, "tag2text", "vocab.txt"))
    final = train(_tiny(5), wd)  # resumes at step 3
    assert final["step"] == 5

    model = clipjax.load(wd)
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    x = model.preprocess([img, img])
    probs = model.tag_probs(x)
    assert probs.shape == (2, 16) and ((probs >= 0) & (probs <= 1)).all()
    caps, used = model.caption(x, ["red | circle", "blue | square"], num_beams=2, max_length=12, min_length=3)
    assert len(caps) == 2 and used == ["red | circle", "blue | square"] and all(isinstance(c, str) for c in caps)
    sampled, _ = model.caption(x, sample=True, max_length=12)
    assert len(sampled) == 2

    kw = ["--builder-kwargs", json.dumps(TINY_SHAPES), "--examples", "8", "--no-progress"]
    out = str(tmp_path / "eval" / "tagging.json")
    assert evaluate.main(["--checkpoint", wd, "--task", "tagging", "--output", out] + kw) == 0
    res = json.load(open(out))
    assert {"mAP", "precision", "recall", "F1", "micro_F1"} <= set(res)
    out = str(tmp_path / "eval" / "captioning.json")
    assert evaluate.main(["--checkpoint", wd, "--task", "captioning", "--num-beams", "2", "--output", out] + kw) == 0
    res = json.load(open(out))
    assert {"BLEU_4", "CIDEr"} <= set(res) and os.path.exists(out.replace(".json", "_samples.jsonl"))
    assert evaluate.main(["--checkpoint", wd, "--task", "zeroshot"] + kw) == 2  # not a CLIP

    path = str(tmp_path / "photo.png")
    Image.fromarray(img).save(path)
    js = str(tmp_path / "tags.jsonl")
    assert tag.main(["--checkpoint", wd, path, "--tags", "red | circle", "--max-length", "12", "--json", js]) == 0
    row = json.loads(open(js).readline())
    assert row["caption_tags"] == "red | circle" and "tags" in row
    assert tag.main(["--checkpoint", wd, path, "--new-tags", "rhombus"]) == 2  # Tag2Text: no open vocabulary


def test_tag2text_with_itc_itm_trains_and_matches(tmp_path):
    """model.alignment_dim adds BLIP's ITC + ITM (hard negatives from the global batch) to the
    loss; the loaded model scores image-text pairs both ways."""
    from clipjax.train.loop import train

    wd = str(tmp_path / "t2t_align")
    c = _tiny(3)
    c.model.alignment_dim = 16
    c.eval_every = 0
    final = train(c, wd)
    assert np.isfinite(final["loss"])
    model = clipjax.load(wd)
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    x = model.preprocess([img, img])
    sim = model.similarity(x, ["a red circle", "a blue square", "two shapes"])
    assert sim.shape == (2, 3) and np.all(np.abs(sim) <= 1 + 1e-5)
    p = model.match_probs(x, ["a red circle", "a blue square"])
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
