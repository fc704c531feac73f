"""`clipjax.load(PATH)`: any checkpoint clipjax reads (clipjax.convert.formats tells the
formats apart) wrapped in the inference object of its family."""

from __future__ import annotations

import dataclasses
from typing import Optional

from clipjax.convert.formats import read_model
from clipjax.inference.clip import LoadedCLIP
from clipjax.inference.clipseg import LoadedCLIPSeg
from clipjax.inference.tag2text import LoadedTag2Text
from clipjax.models.clipseg import CLIPSegConfig
from clipjax.models.tag2text import Tag2TextConfig


def load(path: str, dtype: Optional[str] = None, arch: Optional[str] = None):
    """Load a clipjax checkpoint (or a training workdir: its latest step), a transformers CLIP
    directory, or an OpenAI / open_clip layout state-dict file -> LoadedCLIP; a CLIPSeg
    checkpoint or transformers CLIPSeg directory -> LoadedCLIPSeg; a Tag2Text training run ->
    LoadedTag2Text. `dtype` sets compute dtype. `arch`, for an OpenAI / open_clip state-dict
    file: open_clip's model name (ViT-B-32, ViT-H-14, RN50-quickgelu, ...), which the weights
    alone cannot tell (activation, heads); without it OpenAI's rules are assumed, with a warning."""
    cfg, variables = read_model(path, arch)
    if isinstance(cfg, Tag2TextConfig):
        if dtype is not None:
            cfg = cfg.replace(dtype=dtype)
        return LoadedTag2Text.from_run(path, cfg, variables)
    if isinstance(cfg, CLIPSegConfig):
        if dtype is not None:
            cfg = dataclasses.replace(cfg, clip=cfg.clip.replace(dtype=dtype))
        return LoadedCLIPSeg(cfg, variables)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    return LoadedCLIP(cfg, variables)
