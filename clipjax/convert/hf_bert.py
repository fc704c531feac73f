"""transformers `BertModel` / `DistilBertModel` weights <-> clipjax `BertEncoder`.

The rules serve a standalone tower (jax prefix "params", torch prefix "") and a tower nested
in a bigger model, e.g. `bert_rules(cfg, "params/text", "text_model.")` for a
VisionTextDualEncoder checkpoint.

Names are those of the files transformers writes (`save_pretrained`), which for BERT and
DistilBERT equal the in-memory `state_dict()` names. The `position_ids` / `token_type_ids`
buffers are non-persistent in transformers 5; older files may still hold them, so
`bert_from_state_dict` drops them on read (they are never written).

Limits of the transformers side (not of clipjax): transformers 5's `BertModel` only builds
cross-attention layers with `is_decoder=True`, which also makes its self-attention causal,
and its cross-attention key/value take `hidden_size` inputs. A clipjax cross-attention
tower (bidirectional, any encoder width) therefore exports to a BertModel state dict whose
names fit but whose model is only equivalent when encoder width == width and the
self-attention mask is made bidirectional; BLIP / Tag2Text "med" BERT checkpoints (key/value
of encoder width) read with the same rules.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables
from clipjax.convert.common import Constant, Rule, block_rules, expected_shapes, linear_rules, norm_rules, read_state_dict, torch_to_variables, variables_to_torch, write_state_dict
from clipjax.models.config import TextConfig
from clipjax.models.bert import BertEncoder
from clipjax.models.captioning import CaptionDecoder

BERT_BLOCK = dict(
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    out="attention.output.dense", ln1="attention.output.LayerNorm",
    fc1="intermediate.dense", fc2="output.dense", ln2="output.LayerNorm",
)
BERT_CROSS = dict(
    cross_query="crossattention.self.query", cross_key="crossattention.self.key",
    cross_value="crossattention.self.value", cross_out="crossattention.output.dense",
    ln_cross="crossattention.output.LayerNorm",
)
DISTILBERT_BLOCK = dict(
    query="attention.q_lin", key="attention.k_lin", value="attention.v_lin", out="attention.out_lin",
    ln1="sa_layer_norm", fc1="ffn.lin1", fc2="ffn.lin2", ln2="output_layer_norm",
)
DISTILBERT_LN_EPS = 1e-12  # hard-coded in transformers' DistilBERT

# non-persistent buffers older transformers versions wrote into checkpoints
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
        "quick_gelu": "quick_gelu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "quick_gelu": "quick_gelu"}


def _act(name: str) -> str:
    if name not in _ACT:
        raise CheckpointError(f"unsupported activation {name!r} in config.json")
    return _ACT[name]


def bert_rules(cfg: TextConfig, jax_prefix: str = "params", torch_prefix: str = "") -> tuple[list[Rule], list[Constant]]:
    """Rules for a BertEncoder at `jax_prefix` <-> a (Distil)BertModel whose keys start with
    `torch_prefix` (include the trailing dot, e.g. "text_model." or "bert.")."""
    j, t = jax_prefix, torch_prefix
    if cfg.kind == "bert":
        names = dict(BERT_BLOCK, **(BERT_CROSS if cfg.cross_attention else {}))
        rules = [
            Rule(f"{j}/token_embed/embedding", f"{t}embeddings.word_embeddings.weight"),
            Rule(f"{j}/pos_embed", f"{t}embeddings.position_embeddings.weight"),
            Rule(f"{j}/type_embed/embedding", f"{t}embeddings.token_type_embeddings.weight"),
            *norm_rules(f"{j}/ln_embed", f"{t}embeddings.LayerNorm"),
            *block_rules(f"{j}/transformer/layers", f"{t}encoder.layer.{{i}}", names),
        ]
        if cfg.pool == "pooler":
            rules += linear_rules(f"{j}/pooler", f"{t}pooler.dense")
    elif cfg.kind == "distilbert":
        if cfg.cross_attention:
            raise CheckpointError("DistilBERT has no cross-attention layers")
        if cfg.pool == "pooler":
            raise CheckpointError("DistilBERT has no pooler")
        rules = [
            Rule(f"{j}/token_embed/embedding", f"{t}embeddings.word_embeddings.weight"),
            Rule(f"{j}/pos_embed", f"{t}embeddings.position_embeddings.weight"),
            *norm_rules(f"{j}/ln_embed", f"{t}embeddings.LayerNorm"),
            *block_rules(f"{j}/transformer/layers", f"{t}transformer.layer.{{i}}", DISTILBERT_BLOCK),
        ]
    else:
        raise CheckpointError(f"not a BERT-family text config (kind={cfg.kind!r})")
    return rules, []


def bert_config_from_hf(hf: dict, pool: Optional[str] = None) -> TextConfig:
    """A transformers BertConfig / DistilBertConfig dict -> TextConfig.

    `pool` defaults to "pooler" for BERT (BertModel's pooler_output, what
    VisionTextDualEncoder projects) and "cls" for DistilBERT; pass "cls" / "mean" for a
    BERT checkpoint saved without a pooler (`add_pooling_layer=False`)."""
    mt = hf.get("model_type")
    if mt == "bert":
        from transformers import BertConfig

        c = {**BertConfig().to_dict(), **hf}
        pe = c.get("position_embedding_type", "absolute")
        if pe not in (None, "absolute"):
            raise CheckpointError(f"position_embedding_type={pe!r} is not supported (absolute only)")
        return TextConfig(
            kind="bert", vocab_size=c["vocab_size"], context_length=c["max_position_embeddings"],
            width=c["hidden_size"], layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
            mlp_dim=c["intermediate_size"], act=_act(c["hidden_act"]), ln_eps=c["layer_norm_eps"],
            eos_token_id=None, pad_token_id=c.get("pad_token_id") or 0, type_vocab_size=c["type_vocab_size"],
            pool=pool or "pooler", cross_attention=bool(c.get("add_cross_attention", False)),
        )
    if mt == "distilbert":
        from transformers import DistilBertConfig

        c = {**DistilBertConfig().to_dict(), **hf}
        return TextConfig(
            kind="distilbert", vocab_size=c["vocab_size"], context_length=c["max_position_embeddings"],
            width=c["dim"], layers=c["n_layers"], heads=c["n_heads"], mlp_dim=c["hidden_dim"],
            act=_act(c["activation"]), ln_eps=DISTILBERT_LN_EPS, eos_token_id=None,
            pad_token_id=c.get("pad_token_id") or 0, type_vocab_size=0, pool=pool or "cls",
            cross_attention=False,
        )
    raise CheckpointError(f"config.json describes a {mt!r} model, not BERT or DistilBERT")


def bert_config_to_hf(cfg: TextConfig) -> dict:
    if cfg.act not in _ACT_TO_HF:
        raise CheckpointError(f"activation {cfg.act!r} has no transformers name")
    if cfg.kind == "bert":
        return dict(
            model_type="bert", architectures=["BertModel"], vocab_size=cfg.vocab_size,
            hidden_size=cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.mlp_dim, hidden_act=_ACT_TO_HF[cfg.act],
            max_position_embeddings=cfg.context_length, type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.ln_eps, pad_token_id=cfg.pad_token_id,
            position_embedding_type="absolute",
            # transformers 5 builds cross-attention only for decoders (see the module docstring)
            is_decoder=bool(cfg.cross_attention), add_cross_attention=bool(cfg.cross_attention),
        )
    if cfg.kind == "distilbert":
        if cfg.ln_eps != DISTILBERT_LN_EPS:
            raise CheckpointError(f"DistilBERT's LayerNorm eps is fixed at 1e-12, this config has {cfg.ln_eps}")
        return dict(
            model_type="distilbert", architectures=["DistilBertModel"], vocab_size=cfg.vocab_size,
            dim=cfg.width, n_layers=cfg.layers, n_heads=cfg.heads, hidden_dim=cfg.mlp_dim,
            activation=_ACT_TO_HF[cfg.act], max_position_embeddings=cfg.context_length,
            pad_token_id=cfg.pad_token_id, sinusoidal_pos_embds=False,
        )
    raise CheckpointError(f"not a BERT-family text config (kind={cfg.kind!r})")


def bert_expected_shapes(cfg: TextConfig, jax_prefix: str = "params", embed_dim: Optional[int] = None,
                         encoder_width: Optional[int] = None) -> dict[str, tuple]:
    """Variable shapes of a standalone BertEncoder, re-rooted at `jax_prefix`."""
    import jax.numpy as jnp

    shapes = expected_shapes(BertEncoder(cfg, embed_dim, encoder_width=encoder_width),
                             jnp.zeros((1, min(cfg.context_length, 8)), jnp.int32))
    return {jax_prefix + k[len("params"):]: v for k, v in shapes.items() if k.startswith("params/")}


def infer_encoder_width(sd: dict, torch_prefix: str = "") -> Optional[int]:
    """Cross-attention key input width from a BERT state dict (None without cross-attention)."""
    w = sd.get(f"{torch_prefix}encoder.layer.0.crossattention.self.key.weight")
    return None if w is None else int(w.shape[1])


def bert_from_state_dict(sd: dict, cfg: TextConfig, jax_prefix: str = "params", torch_prefix: str = "",
                         encoder_width: Optional[int] = None, what: str = "BERT checkpoint") -> dict:
    """A (Distil)BertModel state dict -> clipjax variables {"params": ...} (float32 numpy).
    Every key under `torch_prefix` must be used; keys outside it are an error too, so pass
    only the tower's part of a bigger checkpoint."""
    drop = {torch_prefix + b for b in _BUFFERS}
    sd = {k: v for k, v in sd.items() if k not in drop}
    if encoder_width is None and cfg.cross_attention:
        encoder_width = infer_encoder_width(sd, torch_prefix)
    rules, constants = bert_rules(cfg, jax_prefix, torch_prefix)
    expected = bert_expected_shapes(cfg, jax_prefix, encoder_width=encoder_width)
    return torch_to_variables(sd, rules, expected, constants, what=what, dtype=np.float32)


def bert_to_state_dict(variables: dict, cfg: TextConfig, jax_prefix: str = "params",
                       torch_prefix: str = "") -> dict[str, np.ndarray]:
    """clipjax variables -> a (Distil)BertModel state dict. Only the tower's variables under
    `jax_prefix` are written; its projection (`proj`, if any) is not part of BertModel and is
    left to the caller (e.g. a dual encoder's `text_projection`)."""
    rules, constants = bert_rules(cfg, jax_prefix, torch_prefix)
    flat = flatten_variables(variables)
    flat = {k: v for k, v in flat.items() if k.startswith(jax_prefix + "/") and not k.startswith(f"{jax_prefix}/proj/")}
    return variables_to_torch(unflatten_variables(flat), rules, constants)


def load_hf_bert(path: str, pool: Optional[str] = None) -> tuple[TextConfig, dict]:
    """A transformers BertModel / DistilBertModel directory -> (TextConfig, variables).
    Without `pool`, a BERT file with pooler weights pools with them, one without by "cls"."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path} has no config.json; not a transformers model directory")
    with open(cfg_path) as f:
        hf = json.load(f)
    sd = read_state_dict(path)
    if pool is None and hf.get("model_type") == "bert" and "pooler.dense.weight" not in sd:
        pool = "cls"
    cfg = bert_config_from_hf(hf, pool)
    return cfg, bert_from_state_dict(sd, cfg, what=f"transformers {hf.get('model_type')} checkpoint {path}")


def save_hf_bert(variables: dict, cfg: TextConfig, path: str) -> None:
    """Write config.json + model.safetensors that `BertModel` / `DistilBertModel.from_pretrained` read."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(bert_config_to_hf(cfg), f, indent=2)
    write_state_dict(bert_to_state_dict(variables, cfg), os.path.join(path, "model.safetensors"))


# ------------------------------------------------------------------ BertLMHeadModel (decoder)

# The prediction head's decoder is tied to the word embeddings (weight) and to
# cls.predictions.bias (bias): `state_dict()` (and recognize-anything's torch.save files)
# hold both copies, `save_pretrained` files only one.
LM_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def drop_lm_copies(sd: dict, torch_prefix: str = "", what: str = "checkpoint") -> dict:
    """`sd` without a BertLMHeadModel's tied decoder copies and old buffers (under
    `torch_prefix`). A copy that differs from what it is tied to is refused: clipjax's decoder
    ties them (tie_word_embeddings=True) and cannot hold an untied head."""
    t = torch_prefix
    sd = {k: v for k, v in sd.items() if k not in {f"{t}bert.{b}" for b in _BUFFERS}}
    for key, twin in zip(LM_TIED, (f"{t}bert.embeddings.word_embeddings.weight", f"{t}cls.predictions.bias")):
        if t + key in sd:
            copy = sd.pop(t + key)
            if twin in sd and not np.array_equal(np.asarray(copy), np.asarray(sd[twin])):
                raise CheckpointError(f"{what}: {t + key} differs from {twin}; clipjax's decoder ties them "
                                      "(tie_word_embeddings=True) and cannot load an untied head")
    return sd


def bert_lm_rules(cfg: TextConfig, jax_prefix: str = "params", torch_prefix: str = "") -> list[Rule]:
    """Rules for a clipjax CaptionDecoder at `jax_prefix` <-> a BertLMHeadModel under `torch_prefix`."""
    import dataclasses

    j, t = jax_prefix, torch_prefix
    rules, _ = bert_rules(dataclasses.replace(cfg, pool="cls"), f"{j}/bert", f"{t}bert.")
    return rules + [
        *linear_rules(f"{j}/transform", f"{t}cls.predictions.transform.dense"),
        *norm_rules(f"{j}/transform_ln", f"{t}cls.predictions.transform.LayerNorm"),
        Rule(f"{j}/lm_bias", f"{t}cls.predictions.bias"),
    ]


def bert_lm_expected_shapes(cfg: TextConfig, jax_prefix: str = "params",
                            encoder_width: Optional[int] = None) -> dict[str, tuple]:
    import jax.numpy as jnp

    shapes = expected_shapes(CaptionDecoder(cfg, encoder_width=encoder_width),
                             jnp.zeros((1, min(cfg.context_length, 8)), jnp.int32))
    return {jax_prefix + k[len("params"):]: v for k, v in shapes.items() if k.startswith("params/")}


def bert_lm_from_state_dict(sd: dict, cfg: TextConfig, jax_prefix: str = "params", torch_prefix: str = "",
                            encoder_width: Optional[int] = None, what: str = "BertLMHeadModel checkpoint") -> dict:
    """A BertLMHeadModel state dict (with or without the tied decoder copies) -> variables.
    Tied copies must equal what they are tied to: an untied head is refused, not dropped."""
    t = torch_prefix
    sd = drop_lm_copies(sd, t, what)
    if encoder_width is None and cfg.cross_attention:
        encoder_width = infer_encoder_width(sd, t + "bert.")
    expected = bert_lm_expected_shapes(cfg, jax_prefix, encoder_width)
    return torch_to_variables(sd, bert_lm_rules(cfg, jax_prefix, t), expected, what=what, dtype=np.float32)


def bert_lm_to_state_dict(variables: dict, cfg: TextConfig, jax_prefix: str = "params", torch_prefix: str = "",
                          tied_copies: bool = True) -> dict[str, np.ndarray]:
    """variables -> a BertLMHeadModel state dict; `tied_copies` also writes the decoder's tied
    weight and bias, as `state_dict()` has them (False: as `save_pretrained` files)."""
    t = torch_prefix
    flat = {k: v for k, v in flatten_variables(variables).items() if k.startswith(jax_prefix + "/")}
    sd = variables_to_torch(unflatten_variables(flat), bert_lm_rules(cfg, jax_prefix, t))
    if tied_copies:
        sd[t + LM_TIED[0]] = sd[f"{t}bert.embeddings.word_embeddings.weight"].copy()
        sd[t + LM_TIED[1]] = sd[f"{t}cls.predictions.bias"].copy()
    return sd
