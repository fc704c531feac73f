"""Parity with transformers' PyTorch CLIPModel (random weights) and bitwise HF round trips."""

import os

import numpy as np
import pytest
import torch

from clipjax.variables import CheckpointError
from clipjax.convert.common import read_state_dict, write_state_dict
from clipjax.convert.hf_clip import load_hf_clip, save_hf_clip
from clipjax.models.clip import CLIP
from clipjax.models.presets import get_preset
from hf_reference import hf_clip_model, random_ids


def _features(out):
    # transformers 5 returns a ModelOutput from get_*_features; 4.x returned the tensor
    return out if torch.is_tensor(out) else out.pooler_output


def _compare(cfg, tmp_path, batch=2, image_size=None, seed=0):
    model = hf_clip_model(cfg, seed)
    d = str(tmp_path / "hf")
    model.save_pretrained(d)
    jcfg, variables = load_hf_clip(d)
    size = image_size or cfg.vision.image_size
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    ids = random_ids(batch, cfg.text.context_length, cfg.text.vocab_size, seed)
    with torch.no_grad():
        kw = {"interpolate_pos_encoding": True} if image_size else {}
        ref_img = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels), **kw)).numpy()
        ref_txt = _features(model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()
        ref_logits = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels),
                           **kw).logits_per_image.numpy()
    m = CLIP(jcfg)
    img = np.asarray(m.apply(variables, pixels.transpose(0, 2, 3, 1), method=CLIP.encode_image))
    txt = np.asarray(m.apply(variables, ids.astype(np.int32), method=CLIP.encode_text))
    logits = np.asarray(m.apply(variables, pixels.transpose(0, 2, 3, 1), ids.astype(np.int32))["logits_per_image"])
    errs = dict(image=np.abs(img - ref_img).max(), text=np.abs(txt - ref_txt).max(),
                logits=np.abs(logits - ref_logits).max())
    print(f"\nparity vs transformers CLIPModel ({cfg.vision.width}w, {size}px): "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    return errs


def test_tiny_parity(tmp_path):
    errs = _compare(get_preset("tiny-vit"), tmp_path)
    assert max(errs.values()) <= 1e-4, errs


def test_tiny_parity_interpolated_positions(tmp_path):
    # 48px into a model trained at 32px: position grid resized by PyTorch-exact bicubic
    errs = _compare(get_preset("tiny-vit"), tmp_path, image_size=48)
    assert max(errs.values()) <= 1e-4, errs


def test_vit_b32_full_size_parity(tmp_path):
    errs = _compare(get_preset("ViT-B/32"), tmp_path, batch=2)
    assert errs["image"] <= 1e-4 and errs["text"] <= 1e-4, errs
    assert errs["logits"] <= 1e-3, errs  # logits are scaled by exp(logit_scale) ~ 16


def test_round_trip_bitwise(tmp_path):
    cfg = get_preset("tiny-vit")
    model = hf_clip_model(cfg, seed=3)
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    model.save_pretrained(src)
    jcfg, variables = load_hf_clip(src)
    save_hf_clip(variables, jcfg, dst)
    a, b = read_state_dict(src), read_state_dict(dst)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


def _saved(tmp_path, mutate):
    cfg = get_preset("tiny-vit")
    d = str(tmp_path / "hf")
    hf_clip_model(cfg).save_pretrained(d)
    path = os.path.join(d, "model.safetensors")
    sd = read_state_dict(path)
    mutate(sd)
    write_state_dict(sd, path)
    return d


def test_missing_key_is_named(tmp_path):
    d = _saved(tmp_path, lambda sd: sd.pop("text_projection.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys.*text_projection\.weight"):
        load_hf_clip(d)


def test_unexpected_key_is_named(tmp_path):
    d = _saved(tmp_path, lambda sd: sd.__setitem__("extra.head.weight", np.zeros((3, 3), np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.head\.weight \(3, 3\)"):
        load_hf_clip(d)


def test_shape_mismatch_is_named(tmp_path):
    def shrink(sd):
        sd["visual_projection.weight"] = sd["visual_projection.weight"][:, :10]

    d = _saved(tmp_path, shrink)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*visual_projection\.weight"):
        load_hf_clip(d)


def test_truncated_file(tmp_path):
    d = _saved(tmp_path, lambda sd: None)
    path = os.path.join(d, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        load_hf_clip(d)


def test_other_architecture(tmp_path):
    import transformers

    d = str(tmp_path / "bert")
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64, vocab_size=100)).save_pretrained(d)
    with pytest.raises(CheckpointError, match="'bert' model, not CLIP"):
        load_hf_clip(d)
