"""Model configs by family name: a checkpoint's stored config dict names its family in
"model_type", and `config_from_dict` builds the right class from it."""

from __future__ import annotations

from clipjax.models.clipseg import CLIPSegConfig
from clipjax.models.config import CLIPConfig
from clipjax.models.tag2text import Tag2TextConfig

MODEL_CONFIGS = {c.MODEL_TYPE: c for c in (CLIPConfig, CLIPSegConfig, Tag2TextConfig)}


def model_type_of(d: dict) -> str:
    """The family of a stored config dict. Checkpoints written before "model_type" was stored
    for every family name none: a Tag2Text config is then told by its tagging head and
    variant, anything else is a CLIP."""
    kind = d.get("model_type")
    if kind is None:
        kind = "tag2text" if "tagging" in d and "variant" in d else "clip"
    if kind not in MODEL_CONFIGS:
        raise ValueError(f"unknown model_type {kind!r}; known: {', '.join(MODEL_CONFIGS)}")
    return kind


def config_from_dict(d: dict):
    """CLIPConfig, CLIPSegConfig or Tag2TextConfig from its to_dict()."""
    kind = model_type_of(d)
    return MODEL_CONFIGS[kind].from_dict({k: v for k, v in d.items() if k != "model_type"})
