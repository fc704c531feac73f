"""CLIPSeg vs transformers' PyTorch CLIPSegForImageSegmentation (random weights, float32):
text, visual-prompt and raw-vector conditioning, simple and refined heads, interpolated
positions; both checkpoint layouts round-trip bitwise."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from clipjax.convert import hf_clipseg
from clipjax.convert.formats import read_any
from clipjax.variables import CheckpointError, flatten_variables
from clipjax.models.clipseg import CLIPSeg, CLIPSegConfig
from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig
from hf_reference import random_ids, randomize_

TOL = 1e-4


def _cfg(patch=8, clip_size=32, seg_size=48, reduce_dim=16, complex_head=False):
    clip = CLIPConfig(embed_dim=24,
                      vision=VisionConfig(image_size=clip_size, patch_size=patch, width=32, layers=4, heads=4, mlp_dim=64),
                      text=TextConfig(vocab_size=49408, context_length=12, width=32, layers=2, heads=4, mlp_dim=64))
    return CLIPSegConfig(clip=clip, extract_layers=(1, 2, 3), reduce_dim=reduce_dim, decoder_heads=2, decoder_mlp_dim=40,
                         conditional_layer=0, complex_head=complex_head, image_size=seg_size)


def _reference(cfg, seed=0):
    import transformers

    hf = transformers.CLIPSegConfig.from_dict(hf_clipseg.config_to_hf(cfg))
    hf._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPSegForImageSegmentation(hf).eval()
    randomize_(model, seed, std=0.1)
    return model


def _ours(model, cfg):
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return hf_clipseg.from_hf_state_dict(sd, cfg), sd


def _run(cfg, **inputs):
    model = _reference(cfg)
    variables, sd = _ours(model, cfg)
    rng = np.random.default_rng(1)
    b = 2
    px = rng.normal(size=(b, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    ids = random_ids(b, cfg.clip.text.context_length, cfg.clip.text.vocab_size, seed=2)
    # visual prompts at the segmenter's size, as CLIPSegProcessor prepares them (CLIP interpolates)
    cond_px = rng.normal(size=(b, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    emb = rng.normal(size=(b, cfg.clip.embed_dim)).astype(np.float32)
    t_in, j_in = {"pixel_values": torch.from_numpy(px.transpose(0, 3, 1, 2))}, {}
    if inputs.get("text"):
        t_in["input_ids"] = torch.from_numpy(ids)
        j_in["ids"] = ids.astype(np.int32)
    if inputs.get("visual"):
        t_in["conditional_pixel_values"] = torch.from_numpy(cond_px.transpose(0, 3, 1, 2))
        j_in["conditional_images"] = cond_px
    if inputs.get("vector"):
        t_in["conditional_embeddings"] = torch.from_numpy(emb)
        j_in["conditional_embeddings"] = emb
    with torch.no_grad():
        ref = model(**t_in).logits.numpy()
    got = np.asarray(CLIPSeg(cfg).apply(variables, px, **j_in))
    return ref, got, variables, sd


@pytest.mark.parametrize("name,cfg,inputs", [
    ("text, simple head, 48px over 32px CLIP", _cfg(), {"text": True}),
    ("visual prompt", _cfg(), {"visual": True}),
    ("raw vector", _cfg(), {"vector": True}),
    ("rd64-refined head, patch 16, 64px over 32px", _cfg(patch=16, seg_size=64, reduce_dim=64, complex_head=True),
     {"text": True}),
    ("96px over a 64px table (4x4 -> 6x6)", _cfg(patch=16, clip_size=64, seg_size=96), {"text": True}),
    ("352px over a 224px table (14x14 -> 22x22), refined head",
     _cfg(patch=16, clip_size=224, seg_size=352, reduce_dim=64, complex_head=True), {"text": True}),
    ("visual prompt at 96px over a 64px table", _cfg(patch=16, clip_size=64, seg_size=96), {"visual": True}),
])
def test_logits_match_transformers(name, cfg, inputs):
    ref, got, _, _ = _run(cfg, **inputs)
    assert got.shape == ref.shape == (2, cfg.image_size, cfg.image_size)
    err = float(np.max(np.abs(got - ref)))
    print(f"CLIPSeg {name}: max abs diff {err:.2e} (logit scale {np.abs(ref).max():.2f})")
    assert err <= TOL


def test_text_visual_mix_is_linear_in_the_embeddings():
    cfg = _cfg()
    model = _reference(cfg)
    variables, _ = _ours(model, cfg)
    m = CLIPSeg(cfg)
    rng = np.random.default_rng(3)
    px = rng.normal(size=(2, 48, 48, 3)).astype(np.float32)
    cpx = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    ids = random_ids(2, 12, 49408, seed=4).astype(np.int32)
    txt = m.apply(variables, ids, method=CLIPSeg.encode_text)
    img = m.apply(variables, cpx, method=CLIPSeg.encode_image)
    alpha = np.array([0.25, 1.0], np.float32)
    mixed = m.apply(variables, px, ids=ids, conditional_images=cpx, alpha=alpha)
    direct = m.apply(variables, px, conditional_embeddings=alpha[:, None] * txt + (1 - alpha[:, None]) * img)
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(direct), atol=1e-5)


def test_hf_round_trip_is_bitwise(tmp_path):
    cfg = _cfg(patch=16, seg_size=64, reduce_dim=64, complex_head=True)
    model = _reference(cfg)
    variables, sd = _ours(model, cfg)
    hf_clipseg.save_hf_clipseg(variables, cfg, str(tmp_path / "seg"))
    cfg2, back = hf_clipseg.load_hf_clipseg(str(tmp_path / "seg"), image_size=64)
    assert cfg2.clip.vision == cfg.clip.vision and dataclasses.replace(cfg2, clip=cfg.clip) == cfg
    a, b = flatten_variables(variables), flatten_variables(back)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    out = hf_clipseg.to_hf_state_dict(back, cfg)
    ref = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    assert set(out) == set(ref) and all(np.array_equal(out[k], ref[k]) for k in ref)
    import transformers  # the exported directory loads in transformers itself, processor included

    transformers.CLIPSegForImageSegmentation.from_pretrained(str(tmp_path / "seg"))
    proc = transformers.CLIPSegProcessor.from_pretrained(str(tmp_path / "seg"))
    assert dict(proc.image_processor.size) == {"height": 64, "width": 64}
    assert list(proc.image_processor.image_mean) == list(cfg.image_mean) and proc.image_processor.resample == 3
    assert proc.tokenizer("a photo")["input_ids"][0] == 49406
    assert type(transformers.AutoProcessor.from_pretrained(str(tmp_path / "seg"))).__name__ == "CLIPSegProcessor"
    cfg3 = hf_clipseg.load_hf_clipseg(str(tmp_path / "seg"))[0]  # size, mean/std, resample read back
    assert dataclasses.replace(cfg3, clip=cfg.clip) == cfg


@pytest.mark.parametrize("complex_head", [False, True])
def test_original_layout_round_trip(tmp_path, complex_head):
    from clipjax.convert.hf_clip import save_hf_clip
    from clipjax.models.clipseg import clip_variables

    cfg = _cfg(patch=16, seg_size=64, reduce_dim=16, complex_head=complex_head)
    model = _reference(cfg)
    variables, _ = _ours(model, cfg)
    save_hf_clip(clip_variables(variables), cfg.clip, str(tmp_path / "clip"), with_processor=False)
    hf_clipseg.save_original(variables, cfg, str(tmp_path / "rd.pth"))
    sd = torch.load(str(tmp_path / "rd.pth"))
    assert "film_mul.weight" in sd and "blocks.0.self_attn.in_proj_weight" in sd
    assert ("trans_conv.0.weight" in sd) == complex_head
    cfg2, back = hf_clipseg.load_original(str(tmp_path / "rd.pth"), read_any(str(tmp_path / "clip")), extract_layers=(1, 2, 3),
                                          decoder_heads=2, image_size=64)
    # an original decoder file records no preprocessing: the original repository's is assumed
    pre = {k: v for k, v in hf_clipseg.CIDAS_PREPROCESSING.items() if k != "image_size"}
    assert dataclasses.replace(cfg2, clip=cfg.clip) == dataclasses.replace(cfg, **pre)
    a, b = flatten_variables(variables), flatten_variables(back)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    px = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    ids = random_ids(1, 12, 49408).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(CLIPSeg(cfg).apply(variables, px, ids=ids)),
                                  np.asarray(CLIPSeg(cfg2).apply(back, px, ids=ids)))


def test_bad_checkpoint_names_the_key():
    cfg = _cfg()
    model = _reference(cfg)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    del sd["decoder.film_add.bias"]
    sd["decoder.reduces.0.weight"] = sd["decoder.reduces.0.weight"][:, :5]
    with pytest.raises(CheckpointError, match="decoder.film_add.bias") as e:
        hf_clipseg.from_hf_state_dict(sd, cfg)
    assert "decoder.reduces.0.weight" in str(e.value)
    with pytest.raises(ValueError, match="extract_layers"):
        dataclasses.replace(cfg, extract_layers=(1, 9)).validate()


def test_gradients_reach_only_the_decoder():
    cfg = _cfg()
    m = CLIPSeg(cfg)
    from clipjax.models.clipseg import init_inputs

    v = jax.jit(m.init)(jax.random.PRNGKey(0), **init_inputs(cfg, 2))
    import flax.linen as nn

    v = nn.unbox(v)
    ids = random_ids(2, 12, 49408).astype(np.int32)
    g = jax.grad(lambda p: m.apply({"params": p}, np.ones((2, 48, 48, 3), np.float32), ids=ids).sum())(v["params"])
    clip_norm = sum(float(np.abs(x).sum()) for x in jax.tree_util.tree_leaves(g["clip"]))
    dec_norm = sum(float(np.abs(x).sum()) for x in jax.tree_util.tree_leaves(g["decoder"]))
    assert clip_norm == 0.0 and dec_norm > 0


def test_convert_cli_clipseg(tmp_path):
    import convert
    from clipjax.convert.formats import load_clipjax

    cfg = _cfg(patch=16, seg_size=64, reduce_dim=16)
    variables, _ = _ours(_reference(cfg), cfg)
    hf_clipseg.save_hf_clipseg(variables, cfg, str(tmp_path / "hf"))
    assert convert.main(["--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "cj"), "--to", "clipjax",
                         "--image-size", "64"]) == 0
    cfg2, back = load_clipjax(str(tmp_path / "cj"))
    assert cfg2.reduce_dim == 16 and cfg2.image_size == 64
    assert convert.main(["--src", str(tmp_path / "cj"), "--dst", str(tmp_path / "rd.pth"), "--to", "original"]) == 0
    assert convert.main(["--src", str(tmp_path / "rd.pth"), "--clip", str(tmp_path / "rd.pth.clip.pt"),
                         "--extract-layers", "1", "2", "3", "--decoder-heads", "2", "--dst", str(tmp_path / "hf2"),
                         "--to", "hf", "--image-size", "64"]) == 0
    a = flatten_variables(variables)
    b = flatten_variables(hf_clipseg.load_hf_clipseg(str(tmp_path / "hf2"), 64)[1])
    # hf -> clipjax -> original decoder + OpenAI-layout CLIP -> hf: every tensor bitwise
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert convert.main(["--src", str(tmp_path / "cj"), "--dst", str(tmp_path / "x.pt"), "--to", "openai"]) == 2
