"""Model shapes as frozen dataclasses.

A checkpoint stores `CLIPConfig.to_dict()` beside its params, so `clipjax.load(path)` needs
nothing else. Runtime-only knobs (dtype, remat, attention implementation) live here too so
one object describes how to build the module; `dataclasses.replace` overrides them on load.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Image tower. `kind` is "vit" (CLIP / HF ViTModel layout) or "resnet" (ModifiedResNet)."""

    kind: str = "vit"
    image_size: int = 224
    # ViT
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    act: str = "quick_gelu"  # "quick_gelu" | "gelu" (exact erf)
    ln_eps: float = 1e-5
    ln_pre: bool = True  # CLIP: LN after embeddings; HF ViTModel: none
    patch_bias: bool = False  # CLIP conv has no bias; HF ViTModel's has
    pooler: bool = False  # HF ViTModel: dense + tanh on the CLS token after the final LN
    # ModifiedResNet: stage depths and stem width; heads of the attention pool
    resnet_layers: Tuple[int, ...] = (3, 4, 6, 3)
    resnet_width: int = 64

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text tower. `kind` is "causal" (CLIP), "bert" or "distilbert" (bidirectional encoders)."""

    kind: str = "causal"
    vocab_size: int = 49408
    context_length: int = 77  # number of learned positions
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: str = "quick_gelu"
    ln_eps: float = 1e-5
    # Causal CLIP pools at the first `eos_token_id`; None pools at argmax(ids) as OpenAI does
    # (the end-of-text token has the largest id in OpenAI's vocabulary).
    eos_token_id: Optional[int] = 49407
    # BERT family
    pad_token_id: int = 0
    type_vocab_size: int = 2  # BERT token types; DistilBERT has none
    pool: str = "eos"  # "eos" (causal) | "cls" | "mean" | "pooler" (BERT dense+tanh on CLS)
    cross_attention: bool = False  # BERT layers with cross-attention (Tag2Text / RAM)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: Optional[float] = None  # set for sigmoid (SigLIP-style) models
    # runtime
    dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"  # see clipjax.models.layers.REMAT_POLICIES
    attention_impl: Optional[str] = None  # None (XLA picks) | "xla" | "cudnn"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown CLIPConfig fields: {sorted(unknown)}")
        vision = _build(VisionConfig, d.pop("vision", {}))
        text = _build(TextConfig, d.pop("text", {}))
        return cls(vision=vision, text=text, **d)

    def replace(self, **kw: Any) -> "CLIPConfig":
        return dataclasses.replace(self, **kw)


def _build(cls, d):
    if isinstance(d, cls):
        return d
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} fields: {sorted(unknown)}")
    d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**d)
