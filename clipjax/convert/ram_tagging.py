"""recognize-anything (Tag2Text / RAM / RAM++) tagging-head weights <-> clipjax `TaggingHead`.

Keys of the original layout (its BertModel with the self-attention and embeddings deleted):

    tagging_head.encoder.layer.{i}.crossattention.self.{query,key,value}.{weight,bias}
    tagging_head.encoder.layer.{i}.crossattention.output.{dense,LayerNorm}.{weight,bias}
    tagging_head.encoder.layer.{i}.intermediate.dense.{weight,bias}
    tagging_head.encoder.layer.{i}.output.{dense,LayerNorm}.{weight,bias}
    label_embed.weight (C, 768)            Tag2Text (an nn.Embedding)
    label_embed (C, 512)                   RAM (an nn.Parameter; RAM++: (C * 51, 512))
    wordvec_proj.{weight,bias}             RAM, when the head is not 512 wide
    fc.W (1, C, D), fc.b (1, C)            Tag2Text GroupWiseLinear
    fc.weight (1, D), fc.bias (1,)         RAM shared Linear(D, 1)
    reweight_scale ()                      RAM++ (log scale of the description mixing)

Released Swin checkpoints may spell the head `vision_multi.` (the original's loader renames
it to `tagging_head.`); reading accepts both.

In the original the head's layers are *tied* to the lowest layers of the tag encoder
(`tie_encoder_decoder_weights(tag_encoder, tagging_head, ...)`): tag_encoder.encoder.layer.{0,1}
cross-attention, intermediate and output share the head's tensors, so a full checkpoint holds
them twice. This converter reads and writes the head's copy only; the caller of a full model
decides how to express the tie.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables
from clipjax.convert.common import Rule, block_rules, expected_shapes, linear_rules, torch_to_variables, variables_to_torch
from clipjax.models.tagging import CONSTANTS, TaggingConfig
from clipjax.models.tagging import TaggingHead

TAGGING_LAYER = dict(
    cross_query="crossattention.self.query", cross_key="crossattention.self.key",
    cross_value="crossattention.self.value", cross_out="crossattention.output.dense",
    ln_cross="crossattention.output.LayerNorm",
    fc1="intermediate.dense", fc2="output.dense", ln2="output.LayerNorm",
)
HEAD = "tagging_head."
HEAD_ALIASES = ("vision_multi.",)


def _constants_prefix(jax_prefix: str) -> str:
    first, _, rest = jax_prefix.partition("/")
    if first != "params":
        raise ValueError(f"jax_prefix must start with 'params', got {jax_prefix!r}")
    return CONSTANTS + ("/" + rest if rest else "")


def tagging_rules(cfg: TaggingConfig, jax_prefix: str = "params", torch_prefix: str = "") -> list[Rule]:
    """Rules for a TaggingHead at `jax_prefix` <-> the original's keys under `torch_prefix`."""
    j, t = jax_prefix, torch_prefix
    rules = block_rules(f"{j}/transformer/layers", f"{t}{HEAD}encoder.layer.{{i}}", TAGGING_LAYER)
    if cfg.label_source == "learned":
        rules.append(Rule(f"{j}/label_embed", f"{t}label_embed.weight"))
    else:
        rules.append(Rule(f"{_constants_prefix(j)}/label_embed", f"{t}label_embed"))
        if cfg.has_wordvec_proj:
            rules += linear_rules(f"{j}/wordvec_proj", f"{t}wordvec_proj")
        if cfg.descriptions_per_tag > 1:
            rules.append(Rule(f"{j}/reweight_scale", f"{t}reweight_scale"))
    if cfg.classifier == "groupwise":
        rules += [Rule(f"{j}/W", f"{t}fc.W", torch_shape=(1, cfg.num_tags, cfg.width)),
                  Rule(f"{j}/b", f"{t}fc.b", torch_shape=(1, cfg.num_tags))]
    else:
        rules += linear_rules(f"{j}/fc", f"{t}fc")
    return rules


def tagging_expected_shapes(cfg: TaggingConfig, jax_prefix: str = "params") -> dict[str, tuple]:
    """Variable shapes of a standalone TaggingHead, re-rooted at `jax_prefix` (params) and the
    matching "constants" path."""
    return dict(_head_shapes(cfg, jax_prefix))


@functools.lru_cache(maxsize=32)
def _head_shapes(cfg: TaggingConfig, jax_prefix: str) -> tuple:
    import jax.numpy as jnp

    shapes = expected_shapes(TaggingHead(cfg), jnp.zeros((1, 2, cfg.encoder_width), jnp.float32))
    out = {}
    for k, v in shapes.items():
        col, _, rest = k.partition("/")
        base = jax_prefix if col == "params" else _constants_prefix(jax_prefix)
        out[f"{base}/{rest}"] = v
    return tuple(out.items())  # immutable: the cache hands out copies via dict()


def _owned(key: str, t: str) -> bool:
    if not key.startswith(t):
        return False
    k = key[len(t):]
    return (k.startswith(HEAD) or any(k.startswith(a) for a in HEAD_ALIASES) or k.split(".")[0] in
            ("label_embed", "wordvec_proj", "fc", "reweight_scale"))


def tagging_from_state_dict(sd: dict, cfg: TaggingConfig, jax_prefix: str = "params", torch_prefix: str = "",
                            what: str = "tagging head checkpoint", dtype=np.float32) -> dict:
    """The head's part of a recognize-anything state dict -> clipjax variables
    ({"params": ..., "constants": ...} re-rooted at `jax_prefix`). Keys of other parts of the
    model (visual_encoder, tag_encoder, ...) are left alone; every head key must be used."""
    t = torch_prefix
    sub = {}
    for k, v in sd.items():
        if not _owned(k, t):
            continue
        for alias in HEAD_ALIASES:
            if k.startswith(t + alias):
                k = t + HEAD + k[len(t + alias):]
        if k in sub:
            raise CheckpointError(f"{what} holds the tagging head twice (as {HEAD} and an alias)")
        sub[k] = v
    return torch_to_variables(sub, tagging_rules(cfg, jax_prefix, t), tagging_expected_shapes(cfg, jax_prefix),
                              what=what, dtype=dtype)


def tagging_to_state_dict(variables: dict, cfg: TaggingConfig, jax_prefix: str = "params",
                          torch_prefix: str = "") -> dict[str, np.ndarray]:
    """clipjax variables -> the head's keys in the original layout (only the head's variables
    under `jax_prefix` and its "constants" twin are written)."""
    const = _constants_prefix(jax_prefix)
    flat = {k: v for k, v in flatten_variables(variables).items()
            if k.startswith(jax_prefix + "/") or k.startswith(const + "/")}
    return variables_to_torch(unflatten_variables(flat), tagging_rules(cfg, jax_prefix, torch_prefix))


def infer_tagging_config(sd: dict, torch_prefix: str = "", heads: int = 4,
                         base: Optional[TaggingConfig] = None) -> TaggingConfig:
    """Read the head's shapes off a state dict (head count is not stored: q2l_config says 4)."""
    t = torch_prefix
    head = HEAD if f"{t}{HEAD}encoder.layer.0.intermediate.dense.weight" in sd else HEAD_ALIASES[0]
    layer = f"{t}{head}encoder.layer."
    try:
        fc1 = sd[f"{layer}0.intermediate.dense.weight"]
        key = sd[f"{layer}0.crossattention.self.key.weight"]
    except KeyError as e:
        raise CheckpointError(f"no tagging head in this state dict (missing {e.args[0]})") from None
    layers = len({k[len(layer):].split(".")[0] for k in sd if k.startswith(layer)})
    groupwise = f"{t}fc.W" in sd
    learned = f"{t}label_embed.weight" in sd
    if learned:
        num_tags, label_dim = sd[f"{t}label_embed.weight"].shape[0], (base.label_dim if base else 512)
    else:
        if f"{t}label_embed" not in sd:
            raise CheckpointError("no label_embed / label_embed.weight in this state dict")
        num_tags, label_dim = sd[f"{t}label_embed"].shape
    per_tag = 1
    if groupwise:
        num_tags = sd[f"{t}fc.W"].shape[1]
    elif f"{t}reweight_scale" in sd:  # RAM++: K descriptions per tag, so the row count is not C
        if base is None:
            raise CheckpointError("a RAM++ state dict does not tell the tag count; pass base= with num_tags")
        if num_tags % base.num_tags:
            raise CheckpointError(f"{num_tags} label embeddings do not split over {base.num_tags} tags")
        num_tags, per_tag = base.num_tags, num_tags // base.num_tags
    fields = dict(num_tags=int(num_tags), descriptions_per_tag=int(per_tag), width=int(fc1.shape[1]), layers=layers, heads=heads,
                  mlp_dim=int(fc1.shape[0]), encoder_width=int(key.shape[1]),
                  label_source="learned" if learned else "clip", label_dim=int(label_dim),
                  classifier="groupwise" if groupwise else "shared")
    return TaggingConfig(**{**(base.to_dict() if base else {}), **fields})
