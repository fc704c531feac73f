"""CLIPSeg end to end: train.py's clipseg task over a frozen CLIP checkpoint, the workdir loads as
a segmenter, evaluate.py --task segmentation, and segment.py's masks and overlay."""

import json
import os

import jax
import numpy as np
from PIL import Image

import clipjax
from test_train_smoke import TINY_SHAPES, _config


def _clip_checkpoint(path):
    import flax.linen as nn

    from clipjax.convert.formats import save_clipjax
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-vit").replace(text=get_preset("tiny-vit").text.__class__(
        vocab_size=49408, context_length=16, width=64, layers=2, heads=4, mlp_dim=128))
    v = nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 16), np.int32)))
    save_clipjax(path, v, cfg)
    return v


def test_clipseg_trains_evaluates_and_predicts(tmp_path):
    import ml_collections

    import evaluate
    import segment
    from clipjax.convert.formats import load_clipjax
    from clipjax.tasks import train

    clip_path = str(tmp_path / "clip")
    clip_vars = _clip_checkpoint(clip_path)
    c = _config(total_steps=3)
    c.task = "clipseg"
    c.init_from = clip_path
    c.clipseg = ml_collections.ConfigDict(dict(extract_layers=(0, 1), reduce_dim=16, decoder_heads=2,
                                               decoder_mlp_dim=32, image_size=32))
    c.batch_size = 8
    c.eval_every = 3
    c.eval_examples = 8
    wd = str(tmp_path / "seg")
    final = train(c, wd)
    assert np.isfinite(final["loss"]) and 0 <= final["seg_miou"] <= 1 and "seg_ap" in final

    cfg, variables = load_clipjax(os.path.join(wd, "checkpoints"))
    assert cfg.__class__.__name__ == "CLIPSegConfig"
    for a, b in zip(jax.tree_util.tree_leaves(variables["params"]["clip"]), jax.tree_util.tree_leaves(clip_vars["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # CLIP stayed frozen

    seg = clipjax.load(wd)
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    logits = seg.segment([img], ["the red circle", "the blue square", img])  # one image, three prompts
    assert logits.shape == (3, 40, 48) and np.isfinite(logits).all()  # masks at the image's own size

    out = str(tmp_path / "eval" / "seg.json")
    rc = evaluate.main(["--checkpoint", wd, "--task", "segmentation", "--dataset", "clipjax_shapes", "--examples", "6",
                        "--builder-kwargs", json.dumps(TINY_SHAPES), "--output", out, "--overlays", "2", "--no-progress"])
    res = json.load(open(out))
    assert rc == 0 and {"miou", "iou_fg", "ap"} <= set(res) and os.path.exists(out.replace(".json", "_overlay_1.png"))
    assert evaluate.main(["--checkpoint", wd, "--task", "zeroshot", "--builder-kwargs", json.dumps(TINY_SHAPES),
                          "--no-progress"]) == 2  # a segmenter is not a CLIP classifier

    path = str(tmp_path / "photo.png")
    Image.fromarray(img).save(path)
    assert segment.main(["--checkpoint", wd, "--image", path, "--prompt", "a red circle", "--prompt", path,
                         "--output", str(tmp_path / "pred")]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "mask_1.png"))
    assert mask.shape == (40, 48) and os.path.exists(tmp_path / "pred" / "overlay.png")
    assert segment.main(["--checkpoint", clip_path, "--image", path, "--prompt", "x", "--output", str(tmp_path)]) == 2
    # a misspelled example image is an error naming it, not the text prompt "exmaple.png"
    assert segment.main(["--checkpoint", wd, "--image", path, "--prompt", str(tmp_path / "exmaple.png"),
                         "--output", str(tmp_path / "typo")]) == 2
    assert not os.path.exists(tmp_path / "typo")
