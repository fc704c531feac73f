"""Localisation (locate.py, clipjax/apps/localisation.py): the MaskCLIP path of the ViT against a
hand computation and against the real block with each token attending only to itself, heatmap
peak and pointing logic on constructed maps, and locate.py end to end with its errors."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import locate
from clipjax.apps.localisation import clipseg_heatmaps, maskclip_grid, peak_of, pointing_hit
from clipjax.inference.clipseg import resize_logits
from clipjax.models.clip import CLIP
from clipjax.models.layers import Block
from clipjax.models.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny-vit")
    v = nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 77), np.int32)))
    # random LayerNorm affine parameters and biases (zeros / ones at init would hide a missing term)
    rng = np.random.default_rng(1)
    v = jax.tree_util.tree_map(lambda x: (np.asarray(x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32), v)
    return cfg, v


def _visual(cfg, v, images, **kw):
    return CLIP(cfg).apply(v, images, method=lambda m, im: m.visual(im, **kw))


def _ln(x, p, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def test_maskclip_path_by_hand_and_default_outputs_unchanged(tiny):
    cfg, v = tiny
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    plain = _visual(cfg, v, images)
    out = _visual(cfg, v, images, dense_embeds=True, return_hidden=True)
    assert "dense_embeds" not in plain and plain["hidden"] is None  # default outputs as before
    for k in ("tokens", "pooled", "embeds"):
        np.testing.assert_array_equal(np.asarray(plain[k]), np.asarray(out[k]))
    dense = np.asarray(out["dense_embeds"])
    assert dense.shape == (2, 16, cfg.embed_dim)

    p = jax.tree_util.tree_map(np.asarray, v["params"]["visual"])
    last = jax.tree_util.tree_map(lambda a: a[-1], p["transformer"]["layers"])
    x = np.asarray(out["hidden"][-2])[:, 1:]  # the last block's input (output of block L-1)
    # by hand: per head, value then output projection; residual; MLP (QuickGELU); ln_post; proj
    h = _ln(x, last["ln1"])
    a = last["attn"]
    y = x + a["out"]["bias"] + sum((h @ a["value"]["kernel"][:, i] + a["value"]["bias"][i]) @ a["out"]["kernel"][i]
                                   for i in range(cfg.vision.heads))
    f = _ln(y, last["ln2"]) @ last["mlp"]["fc1"]["kernel"] + last["mlp"]["fc1"]["bias"]
    y = y + (f / (1 + np.exp(-1.702 * f))) @ last["mlp"]["fc2"]["kernel"] + last["mlp"]["fc2"]["bias"]
    want = _ln(y, p["ln_post"]) @ p["proj"]["kernel"]
    np.testing.assert_allclose(dense, want, rtol=1e-4, atol=1e-4)

    # the same as the model's own last block with attention restricted to the diagonal
    blk = Block(heads=cfg.vision.heads, mlp_dim=cfg.vision.mlp_dim, act=cfg.vision.act, ln_eps=cfg.vision.ln_eps)
    eye = np.eye(16, dtype=bool)[None, None]
    y2, _ = blk.apply({"params": last}, x, mask=eye)
    np.testing.assert_allclose(dense, _ln(np.asarray(y2), p["ln_post"]) @ p["proj"]["kernel"], rtol=1e-4, atol=1e-4)
    # and not what the trained attention gives (the final tokens differ from MaskCLIP's)
    assert np.abs(np.asarray(out["tokens"])[:, 1:] - np.asarray(y2)).max() > 1e-2


def test_heatmap_peak_and_pointing():
    # a 4 x 4 patch grid whose patch (row 2, col 1) points at the text; others are orthogonal-ish
    rng = np.random.default_rng(0)
    text = np.eye(8, dtype=np.float32)[:1]
    dense = rng.normal(size=(4, 4, 8)).astype(np.float32)
    dense[..., 0] = -1.0
    dense[2, 1] = text[0] * 5
    dense /= np.linalg.norm(dense, axis=-1, keepdims=True)
    grid = maskclip_grid(dense, text)
    assert grid.shape == (1, 4, 4) and np.isclose(grid[0, 2, 1], 1.0) and grid[0].argmax() == 2 * 4 + 1
    heat = resize_logits(grid[0], 32, 32)  # patches of 8 x 8 pixels
    y, x = peak_of(heat)
    assert 16 <= y < 24 and 8 <= x < 16
    mask = np.zeros((32, 32), bool)
    mask[16:24, 8:16] = True
    assert pointing_hit(heat, mask) and not pointing_hit(heat, ~mask)
    assert peak_of(np.zeros((3, 5))) == (0, 0)  # ties: the first in row-major order

    class FakeSeg:  # CLIPSeg's interface: logits at the image's size
        def segment(self, images, prompts):
            lg = np.full((len(prompts), 10, 12), -5.0)
            lg[0, 7, 3] = 4.0
            return lg

    m = clipseg_heatmaps(FakeSeg(), np.zeros((10, 12, 3), np.uint8), ["a"])[0]
    assert m.peak == (7, 3) and np.isclose(m.peak_score, 1 / (1 + np.exp(-4.0))) and m.method == "clipseg"
    assert m.as_json()["peak"] == {"x": 3, "y": 7}


def test_locate_cli(tmp_path, tiny, capsys):
    from PIL import Image

    from clipjax.convert.formats import save_clipjax

    cfg, v = tiny
    ckpt = str(tmp_path / "tiny")
    save_clipjax(ckpt, v, cfg)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = locate.main(["--checkpoint", ckpt, "--image", str(img), "--text", "the red star", "--text", "a blue circle",
                      "--output", str(out)])
    assert rc == 0
    rep = json.load(open(out / "locate.json"))
    assert (rep["height"], rep["width"]) == (40, 56) and len(rep["results"]) == 2
    for r in rep["results"]:
        assert r["method"] == "maskclip" and 0 <= r["peak"]["x"] < 56 and 0 <= r["peak"]["y"] < 40
        assert -1 <= r["min_score"] <= r["peak_score"] == r["max_score"] <= 1
    assert (out / "overlay.png").stat().st_size > 0
    capsys.readouterr()

    def err(*args):
        rc = locate.main(["--checkpoint", ckpt, "--image", str(img), "--output", str(out), *args])
        e = capsys.readouterr().err
        assert rc == 2 and e.startswith("locate.py: error:") and "Traceback" not in e, e
        return e

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert "bad.png" in err("--image", str(bad), "--text", "x")
    assert "empty" in err("--text", " ")
    assert "error" in err("--checkpoint", str(tmp_path / "missing"), "--text", "x")
