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
    from clipjax.tasks import train

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
    from clipjax.tasks import train

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

    # tags the run says never to report (the released Tag2Text's delete_tag_index)
    with open(os.path.join(wd, "tag2text", "delete_tags.txt"), "w") as f:
        f.write("0\n3\n")
    model = clipjax.load(wd)
    assert model.delete_index == [0, 3]
    probs = np.ones((1, len(model.tag_names)), np.float32)
    assert model.tags(None, probs=probs)[0].split(" | ") == [t for i, t in enumerate(model.tag_names) if i not in (0, 3)]


def test_tag2text_trains_on_a_csv_collection_with_its_own_tag_list(tmp_path):
    """config.data.name="collection": a CSV of (filepath, title, tags) with the user's tag list
    and vocabulary; unknown tag names are counted, not mis-assigned; evaluate.py reads the
    same kind of collection for tagging and captioning."""
    import csv

    import evaluate
    from clipjax.data.shapes_dataset import TAGS, draw_example
    from clipjax.data.tagging import shapes_vocabulary
    from clipjax.tasks import train

    folder = tmp_path / "coll"
    folder.mkdir()
    my_tags = ["Circle", "square", "red", "blue", "large"]  # a subset, other case
    with open(folder / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title", "tags"])
        for i in range(12):
            ex = draw_example(0, "train", i, 40)
            Image.fromarray(ex["image_array"]).save(folder / f"{i}.png")
            names = [TAGS[j] for j in np.flatnonzero(ex["tags"])] + ["not-a-tag"]
            w.writerow([f"{i}.png", ex["captions"][0], " | ".join(names)])
    (tmp_path / "tags.txt").write_text("\n".join(my_tags) + "\n")
    vocab = shapes_vocabulary(str(tmp_path / "vocab.txt"))

    c = _tiny(3)
    c.model.tagging.num_tags = len(my_tags)
    c.data.name = "collection"
    c.data.source = str(folder / "index.csv")
    c.data.tokenizer = vocab
    c.data.shuffle_buffer = 16
    c.tag2text = dict(tag_list=str(tmp_path / "tags.txt"), eval_source=str(folder / "index.csv"))
    wd = str(tmp_path / "run")
    final = train(c, wd)
    assert np.isfinite(final["loss"]) and 0 <= final["tag_mAP"] <= 1
    assert final["data/unknown_tags"] > 0 and final["data/decoded"] > 0
    model = clipjax.load(wd)
    assert model.tag_names == my_tags

    for task in ("tagging", "captioning"):
        out = str(tmp_path / f"{task}.json")
        assert evaluate.main(["--checkpoint", wd, "--task", task, "--dataset", "collection", "--source",
                              str(folder / "index.csv"), "--num-beams", "2", "--no-progress", "--output", out]) == 0
        res = json.load(open(out))
        assert ("mAP" if task == "tagging" else "BLEU_4") in res
    assert res["settings"]["images"] == 12


def test_ram_trains_with_clip_label_queries_and_teacher(tmp_path):
    """variant "ram" with config.ram.clip: a (tiny) CLIP checkpoint gives the frozen label queries
    (prompt-ensembled text embeddings of the tag names) and the distillation target (its image
    embeddings of each batch, on the mesh); the trained RAM tags new names without retraining."""
    import jax

    from clipjax import sharding as shd
    from clipjax.inference.clip import LoadedCLIP
    from clipjax.convert.formats import read_any
    from clipjax.models.tagging import build_label_embeddings
    from clipjax.tasks.ram_teacher import ClipTeacher
    from clipjax.tasks import train

    from test_clipseg_train import _clip_checkpoint

    clip_wd = str(tmp_path / "clip")
    _clip_checkpoint(clip_wd)  # a tiny random CLIP: the task only needs its towers
    clip_cfg, clip_vars = read_any(clip_wd)
    clip = LoadedCLIP(clip_cfg, clip_vars)

    c = _tiny(3)
    c.model.variant = "ram"
    c.ram = dict(clip=clip_wd)
    wd = str(tmp_path / "ram")
    final = train(c, wd)
    assert np.isfinite(final["loss"]) and 0 <= final["tag_mAP"] <= 1

    ram = clipjax.load(wd)
    assert ram.cfg.variant == "ram" and ram.cfg.image_proj_dim == clip_cfg.embed_dim
    want = build_label_embeddings(ram.tag_names, clip.encode_text)
    got = np.asarray(ram.variables["constants"]["tagging_head"]["label_embed"])
    np.testing.assert_allclose(got, want, atol=1e-6)  # frozen: unchanged by training
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    x = ram.preprocess([img, img])
    names = ["rhombus", "red circle"]
    tags = ram.openset_tags(x, names, build_label_embeddings(names, clip.encode_text), threshold=0.0)
    assert tags == ["rhombus | red circle"] * 2  # threshold 0: every name, so the path ran end to end

    mesh = shd.make_mesh({"data": -1})
    teacher = ClipTeacher(clip_cfg, clip_vars, mesh, shd.DEFAULT_RULES)
    px = clip.preprocess([img] * len(mesh.devices.flat))  # a global batch splits over every device
    np.testing.assert_allclose(np.asarray(jax.device_get(teacher(jax.numpy.asarray(px)))),
                               clip.encode_image(px, preprocessed=True, normalize=False), atol=1e-5)


def test_tag2text_with_a_resnet_tower_trains_its_batch_statistics(tmp_path):
    """vision_kind "resnet" (CLIP's ModifiedResNet): BatchNorm statistics are updated by the
    training step, saved and used at inference; the recognize-anything layout refuses it."""
    import pytest
    from clipjax.convert.recognize_anything import ram_rules
    from clipjax.tasks import train

    c = _tiny(2)
    c.model.vision_kind = "resnet"
    c.model.vision = dict(kind="resnet", image_size=32, resnet_layers=(1, 1, 1, 1), resnet_width=8, heads=2)
    c.model.tagging.encoder_width = 32 * 8
    wd = str(tmp_path / "t2t_rn")
    final = train(c, wd)
    assert np.isfinite(final["loss"]) and 0 <= final["tag_mAP"] <= 1

    model = clipjax.load(wd)
    stats = model.variables["batch_stats"]["visual_encoder"]["bn1"]
    assert np.abs(np.asarray(stats["mean"])).max() > 0  # moved from its zero init by training
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    probs = model.tag_probs(model.preprocess([img]))
    assert probs.shape == (1, 16) and np.isfinite(probs).all()
    with pytest.raises(ValueError, match="ModifiedResNet"):
        ram_rules(model.cfg)
