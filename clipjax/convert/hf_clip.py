"""transformers `CLIPModel` directories (config.json + safetensors / .bin) <-> clipjax.

Only the ViT image tower and the causal text tower exist in transformers' CLIPModel.
An exported directory is self-contained: config.json, model.safetensors, the tokenizer files
and preprocessor_config.json, so `pipeline("zero-shot-image-classification", model=DIR)` works
from it alone.
"""

from __future__ import annotations

import json
import os

import numpy as np

from clipjax.variables import CheckpointError
from clipjax.convert.common import Rule, block_rules, hf_model_type, linear_rules, norm_rules, read_state_dict, torch_to_variables, variables_to_torch, write_state_dict
from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig
from clipjax.convert.common import expected_shapes
from clipjax.models.clip import CLIP
from clipjax.preprocess import hf_image_processor
from clipjax.tokenizer import clip_tokenizer

HF_BLOCK = dict(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                out="self_attn.out_proj", ln1="layer_norm1", ln2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2")

# transformers' legacy configs say eos_token_id=2 and then pool at argmax(ids); clipjax spells
# that rule eos_token_id=None.
_LEGACY_EOS = 2


def rules(cfg: CLIPConfig) -> list[Rule]:
    if cfg.vision.kind != "vit" or cfg.text.kind != "causal":
        raise CheckpointError(
            f"transformers' CLIPModel holds a ViT image tower and a causal text tower; this model has "
            f"vision={cfg.vision.kind!r}, text={cfg.text.kind!r} (use --to openai for ResNet towers)")
    v, t = "params/visual", "params/text"
    r = [
        Rule(f"{v}/cls", "vision_model.embeddings.class_embedding"),
        Rule(f"{v}/patch_embed/kernel", "vision_model.embeddings.patch_embedding.weight", "conv"),
        Rule(f"{v}/pos_embed", "vision_model.embeddings.position_embedding.weight"),
        *norm_rules(f"{v}/ln_pre", "vision_model.pre_layrnorm"),
        *block_rules(f"{v}/transformer/layers", "vision_model.encoder.layers.{i}", HF_BLOCK),
        *norm_rules(f"{v}/ln_post", "vision_model.post_layernorm"),
        *linear_rules(f"{v}/proj", "visual_projection", bias=False),
        Rule(f"{t}/token_embed/embedding", "text_model.embeddings.token_embedding.weight"),
        Rule(f"{t}/pos_embed", "text_model.embeddings.position_embedding.weight"),
        *block_rules(f"{t}/transformer/layers", "text_model.encoder.layers.{i}", HF_BLOCK),
        *norm_rules(f"{t}/ln_final", "text_model.final_layer_norm"),
        *linear_rules(f"{t}/proj", "text_projection", bias=False),
        Rule("params/logit_scale", "logit_scale"),
    ]
    return r


def config_from_hf(hf: dict) -> CLIPConfig:
    if hf.get("model_type") not in (None, "clip"):
        raise CheckpointError(f"config.json describes a {hf.get('model_type')!r} model, not CLIP")
    vc, tc = hf.get("vision_config", {}) or {}, hf.get("text_config", {}) or {}
    # transformers fills defaults for keys a config.json leaves out; mirror them.
    from transformers import CLIPTextConfig, CLIPVisionConfig

    vc = {**CLIPVisionConfig().to_dict(), **vc}
    tc = {**CLIPTextConfig().to_dict(), **tc}
    img = vc["image_size"]
    patch = vc["patch_size"]
    if isinstance(img, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise CheckpointError("non-square image_size / patch_size is not supported")
    eos = tc.get("eos_token_id")
    return CLIPConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=VisionConfig(kind="vit", image_size=img, patch_size=patch, width=vc["hidden_size"],
                            layers=vc["num_hidden_layers"], heads=vc["num_attention_heads"],
                            mlp_dim=vc["intermediate_size"], act=_act(vc["hidden_act"]), ln_eps=vc["layer_norm_eps"]),
        text=TextConfig(kind="causal", vocab_size=tc["vocab_size"], context_length=tc["max_position_embeddings"],
                        width=tc["hidden_size"], layers=tc["num_hidden_layers"], heads=tc["num_attention_heads"],
                        mlp_dim=tc["intermediate_size"], act=_act(tc["hidden_act"]), ln_eps=tc["layer_norm_eps"],
                        eos_token_id=None if eos == _LEGACY_EOS else eos,
                        pad_token_id=tc.get("pad_token_id", 1) or 0),
        logit_scale_init=hf.get("logit_scale_init_value", 2.6592),
    )


def _act(name: str) -> str:
    mapping = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu"}
    if name not in mapping:
        raise CheckpointError(f"unsupported activation {name!r} in config.json")
    return mapping[name]


def _act_to_hf(name: str) -> str:
    return {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}[name]


def config_to_hf(cfg: CLIPConfig) -> dict:
    v, t = cfg.vision, cfg.text
    return dict(
        model_type="clip",
        architectures=["CLIPModel"],
        projection_dim=cfg.embed_dim,
        logit_scale_init_value=cfg.logit_scale_init,
        vision_config=dict(hidden_size=v.width, intermediate_size=v.mlp_dim, projection_dim=cfg.embed_dim,
                           num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
                           patch_size=v.patch_size, hidden_act=_act_to_hf(v.act), layer_norm_eps=v.ln_eps),
        text_config=dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
                         projection_dim=cfg.embed_dim, num_hidden_layers=t.layers, num_attention_heads=t.heads,
                         max_position_embeddings=t.context_length, hidden_act=_act_to_hf(t.act),
                         layer_norm_eps=t.ln_eps,
                         eos_token_id=_LEGACY_EOS if t.eos_token_id is None else t.eos_token_id,
                         bos_token_id=49406, pad_token_id=1),
    )


def is_hf_clip_dir(path: str) -> bool:
    return hf_model_type(path) == "clip"


def expected_clip_shapes(cfg: CLIPConfig) -> dict[str, tuple]:
    import jax.numpy as jnp

    s = cfg.vision.image_size
    return expected_shapes(CLIP(cfg), jnp.zeros((1, s, s, 3)), jnp.zeros((1, cfg.text.context_length), jnp.int32))


def from_state_dict(sd: dict, cfg: CLIPConfig, what: str = "transformers CLIP checkpoint") -> dict:
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # old non-persistent buffers
    return torch_to_variables(sd, rules(cfg), expected_clip_shapes(cfg), what=what, dtype=np.float32)


def load_hf_clip(path: str) -> tuple[CLIPConfig, dict]:
    """Read a transformers CLIPModel directory -> (config, variables as float32 numpy)."""
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} has no config.json; not a transformers model directory")
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    cfg = config_from_hf(hf)
    return cfg, from_state_dict(read_state_dict(path), cfg, what=f"transformers CLIP checkpoint {path}")


def to_state_dict(variables: dict, cfg: CLIPConfig) -> dict[str, np.ndarray]:
    return variables_to_torch(variables, rules(cfg))


def save_hf_clip(variables: dict, cfg: CLIPConfig, path: str, with_processor: bool = True) -> None:
    """Write a self-contained transformers CLIPModel directory."""
    os.makedirs(path, exist_ok=True)
    from transformers import CLIPConfig as HFConfig

    HFConfig.from_dict(config_to_hf(cfg)).save_pretrained(path)
    write_state_dict(to_state_dict(variables, cfg), os.path.join(path, "model.safetensors"))
    if with_processor:
        tok = clip_tokenizer()
        tok.model_max_length = cfg.text.context_length
        tok.save_pretrained(path)
        hf_image_processor(cfg.vision.image_size).save_pretrained(path)
