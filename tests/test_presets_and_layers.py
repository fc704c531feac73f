"""Presets have the exact shapes of the OpenAI zoo; remat and bf16 behave."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from clipjax.convert.hf_clip import expected_clip_shapes
from clipjax.convert.openai_clip import config_from_state_dict
from clipjax.models.clip import CLIP
from clipjax.models.presets import get_preset
from test_openai_layout import openai_model_module

# OpenAI's released models: CLIP(embed_dim, image_resolution, vision_layers, vision_width,
# vision_patch_size, context_length, vocab_size, transformer_width, heads, layers)
ZOO = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_preset_matches_openai_architecture(name):
    """The reference model on the meta device (no memory): same inferred config, same number of
    parameters, as OpenAI's build_model would see."""
    with torch.device("meta"):
        ref = openai_model_module().CLIP(*ZOO[name])
    sd = ref.state_dict()
    preset = get_preset(name)
    inferred = config_from_state_dict(sd)
    assert inferred.vision == preset.vision
    assert (inferred.embed_dim, inferred.text.width, inferred.text.layers, inferred.text.heads,
            inferred.text.context_length, inferred.text.vocab_size) == (
        preset.embed_dim, preset.text.width, preset.text.layers, preset.text.heads,
        preset.text.context_length, preset.text.vocab_size)
    ours = sum(int(np.prod(s)) for k, s in expected_clip_shapes(preset).items() if k.startswith("params/"))
    theirs = sum(p.numel() for p in ref.parameters())
    assert ours == theirs, (name, ours, theirs)


def _grads(cfg, images, ids):
    model = CLIP(cfg)
    variables = model.init(jax.random.PRNGKey(0), images, ids)

    def loss(params):
        out = model.apply({**variables, "params": params}, images, ids)
        return jnp.sum(out["logits_per_image"] ** 2)

    return jax.grad(loss)(variables["params"])


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_keep_gradients(policy):
    cfg = get_preset("tiny-vit")
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    ids = jnp.asarray(np.tile(np.arange(1, 11, dtype=np.int32), (2, 1)))
    ref = _grads(cfg, images, ids)
    got = _grads(cfg.replace(remat_policy=policy), images, ids)
    err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)))
    assert err <= 1e-6


def test_bf16_compute_with_fp32_params():
    cfg = get_preset("tiny-vit")
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    ids = jnp.asarray(np.tile(np.arange(1, 11, dtype=np.int32), (2, 1)))
    variables = CLIP(cfg).init(jax.random.PRNGKey(0), images, ids)
    bf = CLIP(cfg.replace(dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf.init(jax.random.PRNGKey(0), images, ids)))
    enc = functools.partial(CLIP.encode_image, normalize=True)
    a = CLIP(cfg).apply(variables, images, method=enc)
    b = bf.apply(variables, images, method=enc)
    assert b.dtype == jnp.float32  # normalised embeddings come back in fp32
    assert float(jnp.abs(a - b).max()) < 5e-2  # bf16 rounding, not a wrong computation
