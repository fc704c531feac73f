"""Model shapes as frozen dataclasses, and the to_dict / from_dict every model config shares.

A checkpoint stores `cfg.to_dict()` beside its params (with "model_type" naming the family, so
clipjax.models.registry decodes it by name), so `clipjax.load(path)` needs nothing else. Runtime-only knobs (dtype, remat, attention implementation) live here too so
one object describes how to build the module; `dataclasses.replace` overrides them on load.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional, Tuple


class DictConfig:
    """to_dict / from_dict / replace for a frozen config dataclass.

    NESTED maps fields holding another config to its class (built from a dict on the way in);
    list values become tuples (JSON has no tuples); unknown fields are refused, naming the
    class. MODEL_TYPE, where set, is written as "model_type" and checked on the way back."""

    NESTED: ClassVar[dict] = {}
    MODEL_TYPE: ClassVar[Optional[str]] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.MODEL_TYPE:
            d["model_type"] = self.MODEL_TYPE
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        kind = d.pop("model_type", None)
        if kind is not None and kind != cls.MODEL_TYPE:
            raise ValueError(f"a {kind!r} config is not a {cls.__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields: {sorted(unknown)}")
        out = {}
        for k, v in d.items():
            sub = cls.NESTED.get(k)
            if sub is not None and not isinstance(v, sub):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            out[k] = v
        return cls(**out)

    def replace(self, **kw: Any):
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class VisionConfig(DictConfig):
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
class TextConfig(DictConfig):
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
class CLIPConfig(DictConfig):
    NESTED: ClassVar[dict] = {"vision": VisionConfig, "text": TextConfig}
    MODEL_TYPE: ClassVar[str] = "clip"

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
