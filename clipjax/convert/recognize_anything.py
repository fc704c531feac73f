"""Whole Tag2Text / RAM / RAM++ checkpoints of the recognize-anything layout <-> clipjax `Tag2Text`.

A released file (`tag2text_swin_14m.pth`, `ram_swin_large_14m.pth`,
`ram_plus_swin_large_14m.pth`) is a torch.save'd dict, the state dict under "model":

    visual_encoder.*            Swin (original Microsoft layout, clipjax.convert.swin) or
                                BLIP's ViT (cls_token, pos_embed, patch_embed.proj, blocks.{i}.
                                {norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm)
    image_proj.{weight,bias}    RAM / RAM++
    tagging_head.*, label_embed, wordvec_proj.*, fc.*, reweight_scale   (clipjax.convert.ram_tagging)
    tag_encoder.*               BertModel with cross-attention, no pooler (Tag2Text / RAM)
    text_decoder.*              BertLMHeadModel (bert.*, cls.predictions.*) (Tag2Text / RAM)

The tie: tag_encoder.encoder.layer.{0,1}.{crossattention, intermediate, output} are the
tagging head's tensors. Reading checks the two copies agree (a file where they differ was not
written by a tied model and is refused); writing emits both from the tied view.
"""

from __future__ import annotations

import dataclasses
import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables
from clipjax.convert.common import Rule, block_rules, expected_shapes, linear_rules, norm_rules, torch_to_variables, variables_to_torch
from clipjax.convert.hf_bert import _BUFFERS as BERT_BUFFERS
from clipjax.convert.hf_bert import LM_TIED, bert_lm_rules, bert_rules, drop_lm_copies
from clipjax.convert.ram_tagging import tagging_rules
from clipjax.models.tag2text import Tag2Text, Tag2TextConfig, init_inputs, tie_tag_encoder
from clipjax.convert.swin import swin_rules
from clipjax.convert.common import to_torch
from clipjax.convert.common import to_numpy

BLIP_VIT_BLOCK = dict(
    query="attn.qkv.weight|attn.qkv.bias#0/3", key="attn.qkv.weight|attn.qkv.bias#1/3",
    value="attn.qkv.weight|attn.qkv.bias#2/3", out="attn.proj", ln1="norm1", ln2="norm2",
    fc1="mlp.fc1", fc2="mlp.fc2",
)
# tag-encoder sub-modules tied to the tagging head (torch names of TIED)
TIED_TORCH = ("crossattention.", "intermediate.", "output.")


def _vision_rules(cfg: Tag2TextConfig):
    j, t = "params/visual_encoder", "visual_encoder."
    if cfg.vision_kind == "resnet":
        raise ValueError("the recognize-anything layout has no ModifiedResNet image tower: a Tag2Text / RAM "
                         "model with vision_kind 'resnet' stays a clipjax checkpoint")
    if cfg.vision_kind == "swin":
        return swin_rules(cfg.swin_config, "original", j, t)
    v = cfg.vision
    n = v.num_patches + 1
    rules = [
        Rule(f"{j}/cls", f"{t}cls_token", torch_shape=(1, 1, v.width)),
        Rule(f"{j}/pos_embed", f"{t}pos_embed", torch_shape=(1, n, v.width)),
        Rule(f"{j}/patch_embed/kernel", f"{t}patch_embed.proj.weight", "conv"),
        Rule(f"{j}/patch_embed/bias", f"{t}patch_embed.proj.bias"),
        *block_rules(f"{j}/transformer/layers", f"{t}blocks.{{i}}", BLIP_VIT_BLOCK),
        *norm_rules(f"{j}/ln_post", f"{t}norm"),
    ]
    return rules, []


def ram_rules(cfg: Tag2TextConfig):
    """(rules, constants) for the whole model."""
    rules, constants = _vision_rules(cfg)
    rules, constants = list(rules), list(constants)
    if cfg.image_proj_dim:
        rules += linear_rules("params/image_proj", "image_proj")
    rules += tagging_rules(cfg.tagging, "params/tagging_head", "")
    if cfg.captioning:
        text = dataclasses.replace(cfg.text, pool="cls")
        enc_rules, _ = bert_rules(text, "params/tag_encoder", "tag_encoder.")
        rules += enc_rules + bert_lm_rules(text, "params/text_decoder", "text_decoder.")
    if cfg.alignment_dim:  # BLIP's names (blip_pretrain.py); the released files have none
        for name in ("vision_proj", "text_proj", "itm_head"):
            rules += linear_rules(f"params/{name}", name)
        rules.append(Rule("params/temp", "temp"))
    return rules, constants


def _expected(cfg: Tag2TextConfig) -> dict[str, tuple]:
    return expected_shapes(Tag2Text(cfg), *init_inputs(cfg))


def _strip_model(sd: dict) -> dict:
    if "model" in sd and isinstance(sd["model"], dict):  # torch.save({"model": state_dict, ...})
        sd = sd["model"]
    # the release's loader renames an old spelling of the head
    return {("tagging_head." + k[len("vision_multi."):] if k.startswith("vision_multi.") else k): v
            for k, v in sd.items()}


def _check_tie(sd: dict, cfg: Tag2TextConfig, what: str) -> None:
    for i in range(cfg.tagging.layers):
        for sub in TIED_TORCH:
            enc = f"tag_encoder.encoder.layer.{i}.{sub}"
            for k in [k for k in sd if k.startswith(enc)]:
                head = f"tagging_head.encoder.layer.{i}.{sub}" + k[len(enc):]
                if head in sd and not np.array_equal(np.asarray(sd[k]), np.asarray(sd[head])):
                    raise CheckpointError(f"{what}: {k} differs from {head}; recognize-anything ties them, "
                                          "so this file was not written by a tied Tag2Text / RAM")


def ram_from_state_dict(sd: dict, cfg: Tag2TextConfig, what: str = "recognize-anything checkpoint") -> dict:
    """A recognize-anything state dict (or {"model": state dict}) -> clipjax variables
    {"params", "constants"} for `Tag2Text(cfg)`. Every key must be used."""
    sd = _strip_model(dict(sd))
    if cfg.captioning:
        _check_tie(sd, cfg, what)
        sd = drop_lm_copies(sd, "text_decoder.", what)
        sd = {k: v for k, v in sd.items() if k not in {"tag_encoder." + b for b in BERT_BUFFERS}}
    rules, constants = ram_rules(cfg)
    return torch_to_variables(sd, rules, _expected(cfg), constants, what=what, dtype=np.float32)


def ram_to_state_dict(variables: dict, cfg: Tag2TextConfig) -> dict[str, np.ndarray]:
    """clipjax variables -> the recognize-anything state dict (strict-loadable there: tied
    copies and the LM head's decoder weight/bias included, Swin buffers written)."""
    params = tie_tag_encoder(variables["params"])
    flat = flatten_variables({**variables, "params": params})
    rules, constants = ram_rules(cfg)
    sd = variables_to_torch(unflatten_variables(flat), rules, constants)
    if cfg.captioning:
        sd["text_decoder." + LM_TIED[0]] = sd["text_decoder.bert.embeddings.word_embeddings.weight"].copy()
        sd["text_decoder." + LM_TIED[1]] = sd["text_decoder.cls.predictions.bias"].copy()
    return sd


def save_ram_checkpoint(variables: dict, cfg: Tag2TextConfig, path: str) -> None:
    """Write a torch.save file {"model": state dict} as the release's loader reads it."""
    import torch

    sd = ram_to_state_dict(variables, cfg)
    torch.save({"model": {k: to_torch(v) for k, v in sd.items()}}, path)


def load_ram_checkpoint(path: str, cfg: Tag2TextConfig) -> dict:
    """Read a recognize-anything .pth (weights only; pickled code is refused)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    sd = _strip_model(obj)
    return ram_from_state_dict({k: to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")}, cfg,
                               what=f"recognize-anything checkpoint {path}")
