"""Parity with OpenAI's reference `clip/model.py` (random weights, ViT and ModifiedResNet towers),
bitwise round trips of the OpenAI / open_clip state-dict layout, and its error messages."""

import dataclasses
import importlib.util
import os
import re
import time

import numpy as np
import pytest
import torch

from clipjax.variables import CheckpointError
from clipjax.convert.common import read_state_dict
from clipjax.convert.openai_clip import (
    config_from_state_dict,
    load_openai,
    save_openai,
    to_openai_state_dict,
)
from clipjax.models.clip import CLIP

_OPENAI = None


def openai_model_module():
    """OpenAI's clip/model.py, loaded by path (`import clip` needs torchvision)."""
    global _OPENAI
    if _OPENAI is None:
        spec = importlib.util.find_spec("clip")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("OpenAI's clip package is not installed")
        path = os.path.join(list(spec.submodule_search_locations)[0], "model.py")
        s = importlib.util.spec_from_file_location("openai_clip_reference_model", path)
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
        _OPENAI = mod
    return _OPENAI


# name -> OpenAI CLIP constructor arguments (embed_dim, image_resolution, vision_layers,
# vision_width, vision_patch_size, context_length, vocab_size, transformer_width,
# transformer_heads, transformer_layers)
SPECS = {
    # the shapes of the tiny-vit preset; OpenAI's build_model would say 1 head (width // 64),
    # so this one is loaded with an explicit config
    "vit": (32, 32, 2, 64, 8, 77, 49408, 64, 4, 2),
    # heads follow OpenAI's rule (width // 64 = 2): config inferred from the weights
    "vit-inferred": (32, 32, 2, 128, 8, 77, 49408, 128, 2, 2),
    "rn": (32, 64, (1, 1, 1, 1), 16, None, 77, 49408, 64, 1, 2),
    "rn-deeper": (32, 64, (2, 1, 1, 1), 32, None, 77, 49408, 64, 1, 2),
}


def _randomize(model, seed: int, images=None):
    """Every parameter random at a scale that keeps activations O(1); BatchNorm running
    statistics calibrated on a random batch and then perturbed, so nothing is trivially 0/1."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(float(np.log(1 / 0.07)) + 0.1 * float(randn(())))
            elif name.endswith(("embedding", "embedding.weight")):
                p.copy_(0.5 * randn(p.shape))
            elif p.ndim >= 2:
                in_out = name in ("visual.proj", "text_projection")  # stored (in, out)
                fan_in = p.shape[0] if in_out else int(np.prod(p.shape[1:]))
                p.copy_(randn(p.shape) / fan_in**0.5)
            elif re.search(r"layer\d\.\d+\.bn3\.weight$", name):
                # the residual branch's last BN scale small (OpenAI zero-inits it), else the
                # residual stream of a deep ResNet grows into the hundreds
                p.copy_(0.15 + 0.03 * randn(p.shape))
            elif name.endswith("weight"):  # LayerNorm / BatchNorm scales
                p.copy_(1.0 + 0.2 * randn(p.shape))
            else:  # biases, class embedding
                p.copy_(0.1 * randn(p.shape))
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: running stats = this batch's
            model.train()
            model.encode_image(images)
            for m in bns:
                m.momentum = 0.1
                m.num_batches_tracked.zero_()
                m.running_mean.add_(0.1 * randn(m.running_mean.shape))
                m.running_var.mul_(0.75 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def _images(batch, size, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _ids(batch, length, seed):
    """sot, random tokens, eot (the largest id: OpenAI pools at argmax) at varied positions, 0s."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int64)
    for b in range(batch):
        n = int(rng.integers(2, length - 1))
        ids[b, 0] = 49406
        ids[b, 1:n] = rng.integers(1, 49405, n - 1)
        ids[b, n] = 49407
    return ids


def reference(name: str, seed: int = 0):
    args = SPECS[name]
    model = openai_model_module().CLIP(*args)
    return _randomize(model, seed, torch.from_numpy(_images(4, args[1], seed + 100)))


def _cfg_for(name, sd):
    cfg = config_from_state_dict(sd)
    if name == "vit":
        cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, heads=1),
                          text=dataclasses.replace(cfg.text, heads=SPECS[name][8]))
    return cfg


def _parity(name, batch=2, seed=0):
    model = reference(name, seed)
    sd = model.state_dict()
    explicit = name == "vit"
    cfg, variables = load_openai(sd, cfg=_cfg_for(name, sd) if explicit else None)
    size = SPECS[name][1]
    pixels = _images(batch, size, seed + 1)
    ids = _ids(batch, 77, seed + 2)
    with torch.no_grad():
        ref_img = model.encode_image(torch.from_numpy(pixels)).numpy()
        ref_txt = model.encode_text(torch.from_numpy(ids)).numpy()
        ref_logits = model(torch.from_numpy(pixels), torch.from_numpy(ids))[0].numpy()
    m = CLIP(cfg)
    nhwc = pixels.transpose(0, 2, 3, 1)
    img = np.asarray(m.apply(variables, nhwc, method=CLIP.encode_image))
    txt = np.asarray(m.apply(variables, ids.astype(np.int32), method=CLIP.encode_text))
    logits = np.asarray(m.apply(variables, nhwc, ids.astype(np.int32))["logits_per_image"])
    errs = dict(image=float(np.abs(img - ref_img).max()), text=float(np.abs(txt - ref_txt).max()),
                logits=float(np.abs(logits - ref_logits).max()))
    print(f"\nparity vs OpenAI clip/model.py [{name}] (|image| max {np.abs(ref_img).max():.2f}, "
          f"|text| max {np.abs(ref_txt).max():.2f}): " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    return cfg, errs


@pytest.mark.parametrize("name", list(SPECS))
def test_tiny_parity(name):
    cfg, errs = _parity(name)
    assert cfg.vision.kind == ("resnet" if name.startswith("rn") else "vit")
    assert cfg.text.eos_token_id is None
    assert max(errs.values()) <= 1e-4, errs


def test_config_inferred_like_build_model():
    sd = reference("rn-deeper").state_dict()
    cfg = config_from_state_dict(sd)
    v = cfg.vision
    assert (v.kind, v.image_size, v.resnet_layers, v.resnet_width, v.heads) == ("resnet", 64, (2, 1, 1, 1), 32, 16)
    assert (cfg.embed_dim, cfg.text.width, cfg.text.layers, cfg.text.heads, cfg.text.mlp_dim) == (32, 64, 2, 1, 256)
    sd = reference("vit-inferred").state_dict()
    v = config_from_state_dict(sd).vision
    assert (v.kind, v.image_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_dim) == ("vit", 32, 8, 128, 2, 2, 512)


def test_resnet_other_image_size_interpolates_attnpool_positions():
    # OpenAI cannot run another size; the reference here is OpenAI's model built for 96 px with
    # the attention-pool position grid resized by torch's bicubic F.interpolate (2x2 -> 3x3).
    mod = openai_model_module()
    model = reference("rn")
    sd = model.state_dict()
    cfg, variables = load_openai(sd)
    args = list(SPECS["rn"])
    args[1] = 96
    big = mod.CLIP(*args).eval()
    sd96 = dict(sd)
    pos = sd["visual.attnpool.positional_embedding"]
    c = pos.shape[1]
    grid = torch.nn.functional.interpolate(pos[1:].reshape(1, 2, 2, c).permute(0, 3, 1, 2), size=(3, 3),
                                           mode="bicubic", align_corners=False)
    sd96["visual.attnpool.positional_embedding"] = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(9, c)])
    big.load_state_dict(sd96)
    pixels = _images(2, 96, 5)
    with torch.no_grad():
        ref = big.encode_image(torch.from_numpy(pixels)).numpy()
    out = np.asarray(CLIP(cfg).apply(variables, pixels.transpose(0, 2, 3, 1), method=CLIP.encode_image))
    err = float(np.abs(out - ref).max())
    print(f"\nRN tiny at 96 px (positions interpolated): image {err:.2e}")
    assert err <= 1e-4


def test_resnet_train_mode_uses_batch_statistics():
    model = reference("rn")
    cfg, variables = load_openai(model.state_dict())
    before = variables["batch_stats"]["visual"]["bn1"]["mean"].copy()
    pixels = _images(4, 64, 7)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    with torch.no_grad():
        ref = model.encode_image(torch.from_numpy(pixels)).numpy()
    out, updates = CLIP(cfg).apply(variables, pixels.transpose(0, 2, 3, 1), train=True,
                                   method=CLIP.encode_image, mutable=["batch_stats"])
    err = float(np.abs(np.asarray(out) - ref).max())
    # running mean follows PyTorch's momentum 0.1 (the variance update differs: biased vs unbiased)
    mean_err = float(np.abs(np.asarray(updates["batch_stats"]["visual"]["bn1"]["mean"])
                            - model.visual.bn1.running_mean.numpy()).max())
    print(f"\nRN tiny train-mode BatchNorm: image {err:.2e}, running mean {mean_err:.2e}")
    assert err <= 1e-4 and mean_err <= 1e-5
    assert np.abs(np.asarray(updates["batch_stats"]["visual"]["bn1"]["mean"]) - before).max() > 1e-3  # it moved


def test_rn50_visual_full_size_parity():
    # RN50's image tower at full width (224 px); a 1-layer tiny text tower keeps it cheap
    mod = openai_model_module()
    model = mod.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 64, 1, 1)
    pixels = _images(2, 224, 11)
    model = _randomize(model, 4, torch.from_numpy(_images(4, 224, 12)))
    t0 = time.time()
    cfg, variables = load_openai(model.state_dict())
    assert (cfg.vision.resnet_layers, cfg.vision.resnet_width, cfg.vision.heads, cfg.embed_dim) == ((3, 4, 6, 3), 64, 32, 1024)
    with torch.no_grad():
        ref = model.encode_image(torch.from_numpy(pixels)).numpy()
        ref64 = model.visual.double()(torch.from_numpy(pixels).double()).numpy()  # float64 ground truth
    m = CLIP(cfg)
    out = m.apply(variables, pixels.transpose(0, 2, 3, 1), method=CLIP.encode_image)
    out = np.asarray(out)
    tokens = m.apply(variables, pixels.transpose(0, 2, 3, 1), method=lambda mm, x: mm.visual(x)["tokens"])
    assert out.shape == (2, 1024) and tokens.shape == (2, 49, 2048)
    err = float(np.abs(out - ref).max())
    print(f"\nRN50 visual tower, 224 px, batch 2 (|image| max {np.abs(ref).max():.2f}): image {err:.2e}; "
          f"vs float64: clipjax {np.abs(out - ref64).max():.2e}, torch float32 {np.abs(ref - ref64).max():.2e} "
          f"({time.time() - t0:.0f} s)")
    assert err <= 1e-4


# ----------------------------------------------------------------------------- round trips


def _assert_same_sd(a: dict, b: dict):
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert np.array_equal(x, y), k


@pytest.mark.parametrize("name", ["vit", "rn-deeper"])
def test_round_trip_bitwise(name, tmp_path):
    model = reference(name, seed=3)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg, variables = load_openai(sd, cfg=_cfg_for(name, sd))
    if name.startswith("rn"):
        assert set(variables) == {"params", "batch_stats"}
    back = to_openai_state_dict(variables, cfg)
    _assert_same_sd(sd, back)
    for fname in ("w.pt", "w.safetensors"):
        path = str(tmp_path / fname)
        save_openai(variables, cfg, path)
        _assert_same_sd(sd, read_state_dict(path))
        cfg2, v2 = load_openai(path, cfg=_cfg_for(name, sd))
        _assert_same_sd(sd, to_openai_state_dict(v2, cfg2))
    # the written file loads strictly into OpenAI's own model
    fresh = openai_model_module().CLIP(*SPECS[name])
    fresh.load_state_dict(torch.load(str(tmp_path / "w.pt"), weights_only=True), strict=True)


def test_scalar_keys_of_openai_checkpoints_are_consumed():
    sd = dict(reference("rn").state_dict())
    sd.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    cfg, variables = load_openai(sd)
    assert "input_resolution" not in to_openai_state_dict(variables, cfg)


def test_torchscript_archive_refused_unless_allowed(tmp_path):
    model = reference("vit-inferred")
    traced = torch.jit.trace(model, (torch.from_numpy(_images(1, 32, 0)), torch.from_numpy(_ids(1, 77, 0))),
                             check_trace=False)
    path = str(tmp_path / "jit.pt")
    traced.save(path)
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_openai(path)
    cfg, variables = load_openai(path, allow_torchscript=True)
    _assert_same_sd({k: v.numpy() for k, v in model.state_dict().items()}, to_openai_state_dict(variables, cfg))


def test_config_sidecar_restores_heads_outside_openai_rule(tmp_path):
    # tiny-rn has 4 attention-pool heads; OpenAI's rule (width * 32 // 64) would say 8
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from clipjax.convert.openai_clip import config_sidecar
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-rn")
    m = CLIP(cfg)
    variables = nn.unbox(m.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 77), jnp.int32)))
    path = str(tmp_path / "rn.pt")
    save_openai(variables, cfg, path)
    cfg2, v2 = load_openai(path)
    assert cfg2 == cfg
    x = np.asarray(_images(2, 64, 0).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(m.apply(variables, x, method=CLIP.encode_image),
                                  m.apply(v2, x, method=CLIP.encode_image))
    os.remove(config_sidecar(path))
    assert load_openai(path)[0].vision.heads == 8  # without it: OpenAI's build_model rule


# ----------------------------------------------------------------------------- errors


def _mutated(name, mutate):
    sd = {k: v.numpy() for k, v in reference(name).state_dict().items()}
    mutate(sd)
    return sd


@pytest.mark.parametrize("name,key", [("vit-inferred", "visual.ln_post.bias"),
                                      ("rn", "visual.layer2.0.downsample.1.running_var"),
                                      ("rn", "transformer.resblocks.1.attn.in_proj_weight")])
def test_missing_key_is_named(name, key):
    sd = _mutated(name, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=r"missing keys.*" + key.replace(".", r"\.")):
        load_openai(sd)


def test_unexpected_key_is_named():
    sd = _mutated("rn", lambda sd: sd.__setitem__("visual.extra.weight", np.zeros((3, 3), np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*visual\.extra\.weight \(3, 3\)"):
        load_openai(sd)


@pytest.mark.parametrize("name,key", [("vit-inferred", "visual.transformer.resblocks.1.attn.out_proj.weight"),
                                      ("rn", "visual.attnpool.c_proj.weight"),
                                      ("rn", "visual.layer3.0.bn2.running_mean")])
def test_shape_mismatch_is_named(name, key):
    def shrink(sd):
        sd[key] = sd[key][..., :-1] if sd[key].ndim > 1 else sd[key][:-1]

    sd = _mutated(name, shrink)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*" + key.replace(".", r"\.")):
        load_openai(sd)


def test_not_a_clip_state_dict():
    with pytest.raises(CheckpointError, match="not an OpenAI/open_clip CLIP state dict"):
        load_openai({"encoder.weight": np.zeros((2, 2), np.float32)})
