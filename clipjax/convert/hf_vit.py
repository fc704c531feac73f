"""transformers `ViTModel` weights <-> clipjax `VisionTransformer` with
VisionConfig(kind="vit", ln_pre=False, patch_bias=True, act="gelu", ln_eps=1e-12, pooler=...).

Two spellings of the same weights exist in transformers 5:
  * the file layout (what `save_pretrained` writes and the Hub holds; transformers renames
    on load and back on save): `encoder.layer.{i}.attention.attention.query`,
    `attention.output.dense`, `intermediate.dense`, `output.dense`, `layernorm_before/after`;
  * the in-memory `ViTModel.state_dict()` layout: `layers.{i}.attention.q_proj/k_proj/v_proj/
    o_proj`, `mlp.fc1/fc2`, `layernorm_before/after`.
`vit_rules(..., native=False)` gives the file layout, `native=True` the in-memory one;
`vit_from_state_dict` detects which one it is handed.

HF's cls_token (1, 1, D) and position_embeddings (1, N+1, D) map to clipjax's (D,) and
(N+1, D); the rules carry the torch shape so writing restores it. Position interpolation for
other input sizes (`interpolate_pos_encoding=True` in transformers) is `F.interpolate(...,
size=(h/p, w/p), mode="bicubic", align_corners=False)`, which clipjax's VisionTransformer
does for any input size that is not the configured one.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables
from clipjax.convert.common import Constant, Rule, block_rules, expected_shapes, linear_rules, norm_rules, read_state_dict, torch_to_variables, variables_to_torch, write_state_dict
from clipjax.models.config import VisionConfig
from clipjax.models.vit import VisionTransformer

VIT_BLOCK_FILE = dict(
    query="attention.attention.query", key="attention.attention.key", value="attention.attention.value",
    out="attention.output.dense", ln1="layernorm_before", ln2="layernorm_after",
    fc1="intermediate.dense", fc2="output.dense",
)
VIT_BLOCK_NATIVE = dict(
    query="attention.q_proj", key="attention.k_proj", value="attention.v_proj", out="attention.o_proj",
    ln1="layernorm_before", ln2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2",
)

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
        "quick_gelu": "quick_gelu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "quick_gelu": "quick_gelu"}


def _check_layout(cfg: VisionConfig) -> None:
    if cfg.kind != "vit" or cfg.ln_pre or not cfg.patch_bias:
        raise CheckpointError(
            "transformers' ViTModel layout needs VisionConfig(kind='vit', ln_pre=False, patch_bias=True); "
            f"got kind={cfg.kind!r}, ln_pre={cfg.ln_pre}, patch_bias={cfg.patch_bias}")


def vit_rules(cfg: VisionConfig, jax_prefix: str = "params", torch_prefix: str = "",
              native: bool = False) -> tuple[list[Rule], list[Constant]]:
    """Rules for a VisionTransformer at `jax_prefix` <-> a ViTModel whose keys start with
    `torch_prefix` (with its trailing dot, e.g. "vision_model." or "vit.")."""
    _check_layout(cfg)
    j, t = jax_prefix, torch_prefix
    d = cfg.width
    n = cfg.num_patches + 1
    layers = f"{t}layers.{{i}}" if native else f"{t}encoder.layer.{{i}}"
    rules = [
        Rule(f"{j}/cls", f"{t}embeddings.cls_token", torch_shape=(1, 1, d)),
        Rule(f"{j}/pos_embed", f"{t}embeddings.position_embeddings", torch_shape=(1, n, d)),
        Rule(f"{j}/patch_embed/kernel", f"{t}embeddings.patch_embeddings.projection.weight", "conv"),
        Rule(f"{j}/patch_embed/bias", f"{t}embeddings.patch_embeddings.projection.bias"),
        *block_rules(f"{j}/transformer/layers", layers, VIT_BLOCK_NATIVE if native else VIT_BLOCK_FILE),
        *norm_rules(f"{j}/ln_post", f"{t}layernorm"),
    ]
    if cfg.pooler:
        rules += linear_rules(f"{j}/pooler", f"{t}pooler.dense")
    return rules, []


def vit_config_from_hf(hf: dict, pooler: bool = True) -> VisionConfig:
    """A transformers ViTConfig dict -> VisionConfig. `pooler` is ViTModel's
    `add_pooling_layer` (not part of config.json)."""
    if hf.get("model_type") not in (None, "vit"):
        raise CheckpointError(f"config.json describes a {hf.get('model_type')!r} model, not ViT")
    from transformers import ViTConfig

    c = {**ViTConfig().to_dict(), **hf}
    img, patch = c["image_size"], c["patch_size"]
    if isinstance(img, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise CheckpointError("non-square image_size / patch_size is not supported")
    if c.get("num_channels", 3) != 3:
        raise CheckpointError(f"num_channels={c['num_channels']} is not supported (RGB only)")
    if not c.get("qkv_bias", True):
        raise CheckpointError("qkv_bias=False is not supported")
    if pooler:
        if c.get("pooler_act", "tanh") != "tanh":
            raise CheckpointError(f"pooler_act={c['pooler_act']!r} is not supported (tanh only)")
        if c.get("pooler_output_size") not in (None, c["hidden_size"]):
            raise CheckpointError("pooler_output_size != hidden_size is not supported")
    act = c["hidden_act"]
    if act not in _ACT:
        raise CheckpointError(f"unsupported activation {act!r} in config.json")
    return VisionConfig(
        kind="vit", image_size=img, patch_size=patch, width=c["hidden_size"], layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"], act=_ACT[act], ln_eps=c["layer_norm_eps"],
        ln_pre=False, patch_bias=True, pooler=pooler,
    )


def vit_config_to_hf(cfg: VisionConfig) -> dict:
    _check_layout(cfg)
    return dict(
        model_type="vit", architectures=["ViTModel"], image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=3, hidden_size=cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim, hidden_act=_ACT_TO_HF[cfg.act], layer_norm_eps=cfg.ln_eps, qkv_bias=True,
        pooler_output_size=cfg.width, pooler_act="tanh",
    )


def vit_expected_shapes(cfg: VisionConfig, jax_prefix: str = "params", embed_dim: Optional[int] = None) -> dict:
    import jax.numpy as jnp

    s = cfg.image_size
    shapes = expected_shapes(VisionTransformer(cfg, embed_dim), jnp.zeros((1, s, s, 3)))
    return {jax_prefix + k[len("params"):]: v for k, v in shapes.items() if k.startswith("params/")}


def is_native_layout(sd: dict, torch_prefix: str = "") -> bool:
    """True for transformers 5's in-memory names (`layers.{i}.attention.q_proj`)."""
    return any(k.startswith(f"{torch_prefix}layers.") for k in sd)


def vit_from_state_dict(sd: dict, cfg: VisionConfig, jax_prefix: str = "params", torch_prefix: str = "",
                        native: Optional[bool] = None, what: str = "ViT checkpoint") -> dict:
    """A ViTModel state dict (file or in-memory layout, detected unless `native` is given)
    -> clipjax variables (float32 numpy)."""
    if native is None:
        native = is_native_layout(sd, torch_prefix)
    rules, constants = vit_rules(cfg, jax_prefix, torch_prefix, native=native)
    return torch_to_variables(sd, rules, vit_expected_shapes(cfg, jax_prefix), constants, what=what,
                              dtype=np.float32)


def vit_to_state_dict(variables: dict, cfg: VisionConfig, jax_prefix: str = "params", torch_prefix: str = "",
                      native: bool = False) -> dict[str, np.ndarray]:
    """clipjax variables -> a ViTModel state dict (file layout unless `native`). Only the
    variables under `jax_prefix` are written, less the tower's projection (`proj`)."""
    rules, constants = vit_rules(cfg, jax_prefix, torch_prefix, native=native)
    flat = flatten_variables(variables)
    flat = {k: v for k, v in flat.items() if k.startswith(jax_prefix + "/") and not k.startswith(f"{jax_prefix}/proj/")}
    return variables_to_torch(unflatten_variables(flat), rules, constants)


def load_hf_vit(path: str) -> tuple[VisionConfig, dict]:
    """A transformers ViTModel directory -> (VisionConfig, variables); the pooler is used
    when the file holds its weights."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path} has no config.json; not a transformers model directory")
    with open(cfg_path) as f:
        hf = json.load(f)
    sd = read_state_dict(path)
    cfg = vit_config_from_hf(hf, pooler="pooler.dense.weight" in sd)
    return cfg, vit_from_state_dict(sd, cfg, what=f"transformers ViT checkpoint {path}")


def save_hf_vit(variables: dict, cfg: VisionConfig, path: str) -> None:
    """Write config.json + model.safetensors (file layout) for `ViTModel.from_pretrained`
    (pass `add_pooling_layer=False` there when cfg.pooler is False)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(vit_config_to_hf(cfg), f, indent=2)
    write_state_dict(vit_to_state_dict(variables, cfg), os.path.join(path, "model.safetensors"))
