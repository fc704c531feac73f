"""Swin Transformer weights <-> clipjax `SwinTransformer` (clipjax/models/swin.py).

Three layouts (`layout=`):
  * "hf": transformers' file layout (what `save_pretrained` writes and the Hub holds):
    `embeddings.patch_embeddings.projection`, `embeddings.norm`,
    `encoder.layers.{s}.blocks.{b}.layernorm_before`, `attention.self.query/key/value`,
    `attention.self.relative_position_bias_table`, `attention.output.dense`, `layernorm_after`,
    `intermediate.dense`, `output.dense`, `encoder.layers.{s}.downsample.reduction/norm`,
    `layernorm`. Old files also hold `attention.self.relative_position_index`: ignored.
  * "hf_native": transformers 5's in-memory `SwinModel.state_dict()` names:
    `attention.q_proj/k_proj/v_proj/o_proj`,
    `attention.relative_position_bias.relative_position_bias_table`, `mlp.fc1/fc2`.
  * "original": Microsoft's Swin code, as recognize-anything's `ram/models/swin_transformer.py`
    (RAM / Tag2Text `visual_encoder.`): `patch_embed.proj/norm`, `layers.{s}.blocks.{b}.norm1`,
    `attn.qkv` (fused q|k|v rows), `attn.proj`, `attn.relative_position_bias_table`, `norm2`,
    `mlp.fc1/fc2`, `layers.{s}.downsample.norm/reduction`, `norm`; buffers
    `attn.relative_position_index` (int64) on every block and `attn_mask` (float32) on the
    shifted ones. Buffers are ignored when read (RAM's own loader deletes them) and written
    so the state dict loads strictly into that model.

transformers sizes every bias table from `window_size`, so it cannot run a config where a
stage's resolution is below the window (its forward fails); the "hf" layouts refuse such
configs. When `torch_prefix` is not empty, only keys under it are read (a whole RAM
checkpoint can be passed).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables
from clipjax.convert.common import Constant, Rule, expected_shapes, linear_rules, norm_rules, torch_to_variables, variables_to_torch
from clipjax.models.swin import SwinConfig, relative_position_index, shift_attention_mask
from clipjax.models.swin import SwinTransformer

LAYOUTS = ("hf", "hf_native", "original")
DEFAULT_TORCH_PREFIX = {"hf": "", "hf_native": "", "original": "visual_encoder."}

_HF_NAMES = {
    "hf": dict(query="attention.self.query", key="attention.self.key", value="attention.self.value",
               out="attention.output.dense", table="attention.self.relative_position_bias_table",
               ln1="layernorm_before", ln2="layernorm_after", fc1="intermediate.dense", fc2="output.dense"),
    "hf_native": dict(query="attention.q_proj", key="attention.k_proj", value="attention.v_proj",
                      out="attention.o_proj", table="attention.relative_position_bias.relative_position_bias_table",
                      ln1="layernorm_before", ln2="layernorm_after", fc1="mlp.fc1", fc2="mlp.fc2"),
}


def _check(cfg: SwinConfig, layout: str) -> None:
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown Swin layout {layout!r}; choose from {LAYOUTS}")
    if layout.startswith("hf"):
        bad = [s for s in range(cfg.num_stages) if cfg.stage_window(s) != cfg.window_size]
        if bad:
            raise CheckpointError(
                f"transformers' SwinModel cannot hold this config: stage(s) {bad} have a resolution below "
                f"window_size={cfg.window_size} (their window shrinks, transformers' bias table does not)")
    if layout == "original":
        bad = [s for s in range(cfg.num_stages) if cfg.stage_resolution(s) % cfg.stage_window(s)
               or (s < cfg.num_stages - 1 and cfg.stage_resolution(s) % 2)]
        if cfg.image_size % cfg.patch_size or bad:
            raise CheckpointError(
                f"the original Swin code cannot hold this config: it pads nothing, but image_size={cfg.image_size} "
                f"gives stage resolutions {[cfg.stage_resolution(s) for s in range(cfg.num_stages)]} that are not "
                "multiples of their windows / even at a patch merge")


def _prefix(layout: str, torch_prefix: Optional[str]) -> str:
    return DEFAULT_TORCH_PREFIX[layout] if torch_prefix is None else torch_prefix


def swin_rules(cfg: SwinConfig, layout: str = "hf", jax_prefix: str = "params",
               torch_prefix: Optional[str] = None) -> tuple[list[Rule], list[Constant]]:
    """Rules (and buffers to write) for a SwinTransformer at `jax_prefix` <-> a `layout` state
    dict whose keys start with `torch_prefix` (with its trailing dot; None: "" for the hf
    layouts, "visual_encoder." for "original")."""
    _check(cfg, layout)
    j, t = jax_prefix, _prefix(layout, torch_prefix)
    rules: list[Rule] = []
    constants: list[Constant] = []
    if layout == "original":
        rules += [Rule(f"{j}/patch_embed/kernel", f"{t}patch_embed.proj.weight", "conv"),
                  Rule(f"{j}/patch_embed/bias", f"{t}patch_embed.proj.bias"),
                  *norm_rules(f"{j}/patch_norm", f"{t}patch_embed.norm")]
    else:
        rules += [Rule(f"{j}/patch_embed/kernel", f"{t}embeddings.patch_embeddings.projection.weight", "conv"),
                  Rule(f"{j}/patch_embed/bias", f"{t}embeddings.patch_embeddings.projection.bias"),
                  *norm_rules(f"{j}/patch_norm", f"{t}embeddings.norm")]
    stages = "layers" if layout == "original" else "encoder.layers"
    for s in range(cfg.num_stages):
        window, shift, res = cfg.stage_window(s), cfg.stage_shift(s), cfg.stage_resolution(s)
        for i in range(cfg.depths[s]):
            jb, tb = f"{j}/stage{s}_block{i}", f"{t}{stages}.{s}.blocks.{i}"
            if layout == "original":
                for k, part in enumerate(("query", "key", "value")):
                    rules.append(Rule(f"{jb}/attn/{part}/kernel", f"{tb}.attn.qkv.weight#{k}/3", "linear"))
                    if cfg.qkv_bias:
                        rules.append(Rule(f"{jb}/attn/{part}/bias", f"{tb}.attn.qkv.bias#{k}/3", "bias"))
                rules += linear_rules(f"{jb}/attn/out", f"{tb}.attn.proj", n_in=2)
                rules.append(Rule(f"{jb}/attn/rel_pos_table", f"{tb}.attn.relative_position_bias_table"))
                rules += norm_rules(f"{jb}/ln1", f"{tb}.norm1") + norm_rules(f"{jb}/ln2", f"{tb}.norm2")
                rules += linear_rules(f"{jb}/mlp/fc1", f"{tb}.mlp.fc1") + linear_rules(f"{jb}/mlp/fc2", f"{tb}.mlp.fc2")
                constants.append(Constant(f"{tb}.attn.relative_position_index",
                                          lambda w=window: relative_position_index(w).copy()))
                if i % 2 and shift:
                    constants.append(Constant(f"{tb}.attn_mask",
                                              lambda r=res, w=window, sh=shift: shift_attention_mask(r, r, w, sh).copy()))
            else:
                n = _HF_NAMES[layout]
                for part in ("query", "key", "value"):
                    rules += linear_rules(f"{jb}/attn/{part}", f"{tb}.{n[part]}", bias=cfg.qkv_bias)
                rules += linear_rules(f"{jb}/attn/out", f"{tb}.{n['out']}", n_in=2)
                rules.append(Rule(f"{jb}/attn/rel_pos_table", f"{tb}.{n['table']}"))
                rules += norm_rules(f"{jb}/ln1", f"{tb}.{n['ln1']}") + norm_rules(f"{jb}/ln2", f"{tb}.{n['ln2']}")
                rules += linear_rules(f"{jb}/mlp/fc1", f"{tb}.{n['fc1']}") + linear_rules(f"{jb}/mlp/fc2", f"{tb}.{n['fc2']}")
        if s < cfg.num_stages - 1:
            rules += norm_rules(f"{j}/stage{s}_merge/norm", f"{t}{stages}.{s}.downsample.norm")
            rules += linear_rules(f"{j}/stage{s}_merge/reduction", f"{t}{stages}.{s}.downsample.reduction", bias=False)
    rules += norm_rules(f"{j}/norm", f"{t}norm" if layout == "original" else f"{t}layernorm")
    return rules, constants


def swin_expected_shapes(cfg: SwinConfig, jax_prefix: str = "params") -> dict:
    import jax.numpy as jnp

    shapes = expected_shapes(SwinTransformer(cfg), jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_chans)))
    return {jax_prefix + k[len("params"):]: v for k, v in shapes.items() if k.startswith("params/")}


_MARKERS = (("original", "patch_embed.proj.weight"), ("hf", "embeddings.patch_embeddings.projection.weight"))


def detect_layout(sd: dict, torch_prefix: Optional[str] = None) -> str:
    """"original", "hf_native" or "hf" from the keys of a state dict."""
    return _detect(sd, torch_prefix)[0]


def _detect(sd: dict, torch_prefix: Optional[str]) -> tuple[str, str]:
    """(layout, torch prefix): the prefix is found from the patch-embedding key unless given."""
    found = []
    for layout, marker in _MARKERS:
        for k in sd:
            if k.endswith(marker) and (torch_prefix is None or k == torch_prefix + marker):
                found.append((layout, k[: len(k) - len(marker)]))
    if not found:
        raise CheckpointError(
            "cannot tell the Swin layout: no key ends with patch_embed.proj.weight (original) or "
            f"embeddings.patch_embeddings.projection.weight (transformers){'' if torch_prefix is None else f' under prefix {torch_prefix!r}'}")
    if len(found) > 1:
        raise CheckpointError(f"several Swin towers in one state dict ({found}); pass layout= and torch_prefix=")
    layout, prefix = found[0]
    if layout == "hf" and any(k.startswith(prefix) and ".attention.q_proj." in k for k in sd):
        layout = "hf_native"
    return layout, prefix


def swin_from_state_dict(sd: dict, cfg: SwinConfig, layout: Optional[str] = None, jax_prefix: str = "params",
                         torch_prefix: Optional[str] = None, what: str = "Swin checkpoint") -> dict:
    """A state dict in `layout` -> clipjax variables (float32 numpy). With layout=None the
    layout, and the prefix unless given, are detected from the keys."""
    if layout is None:
        layout, torch_prefix = _detect(sd, torch_prefix)
    t = _prefix(layout, torch_prefix)
    rules, constants = swin_rules(cfg, layout, jax_prefix, t)
    sd = {k: v for k, v in sd.items() if k.startswith(t)}
    if layout.startswith("hf"):  # transformers ignores (and no longer saves) these buffers
        sd = {k: v for k, v in sd.items() if not k.endswith(".relative_position_index")}
    return torch_to_variables(sd, rules, swin_expected_shapes(cfg, jax_prefix), constants, what=what,
                              dtype=np.float32)


def swin_to_state_dict(variables: dict, cfg: SwinConfig, layout: str = "hf", jax_prefix: str = "params",
                       torch_prefix: Optional[str] = None) -> dict[str, np.ndarray]:
    """clipjax variables (those under `jax_prefix`) -> a `layout` state dict; "original" also
    gets its buffers (relative_position_index int64, attn_mask float32)."""
    rules, constants = swin_rules(cfg, layout, jax_prefix, torch_prefix)
    flat = {k: v for k, v in flatten_variables(variables).items() if k.startswith(jax_prefix + "/")}
    return variables_to_torch(unflatten_variables(flat), rules, constants)


def swin_config_from_hf(hf: dict, image_size: Optional[int] = None) -> SwinConfig:
    """A transformers SwinConfig dict -> SwinConfig (refuses what the tower does not have)."""
    if hf.get("model_type") not in (None, "swin"):
        raise CheckpointError(f"config describes a {hf.get('model_type')!r} model, not Swin")
    from transformers import SwinConfig as HFSwinConfig

    c = {**HFSwinConfig().to_dict(), **hf}
    if c.get("use_absolute_embeddings"):
        raise CheckpointError("use_absolute_embeddings=True is not supported")
    if c.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act={c['hidden_act']!r} is not supported (exact gelu only)")
    img, patch = c["image_size"], c["patch_size"]
    if isinstance(img, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise CheckpointError("non-square image_size / patch_size is not supported")
    return SwinConfig(image_size=image_size or img, patch_size=patch, in_chans=c["num_channels"],
                      embed_dim=c["embed_dim"], depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]),
                      window_size=c["window_size"], mlp_ratio=c["mlp_ratio"], qkv_bias=c["qkv_bias"],
                      ln_eps=c["layer_norm_eps"])


def swin_config_to_hf(cfg: SwinConfig) -> dict:
    _check(cfg, "hf")
    return dict(model_type="swin", architectures=["SwinModel"], image_size=cfg.image_size,
                patch_size=cfg.patch_size, num_channels=cfg.in_chans, embed_dim=cfg.embed_dim,
                depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=cfg.window_size,
                mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, hidden_act="gelu", layer_norm_eps=cfg.ln_eps,
                use_absolute_embeddings=False)
