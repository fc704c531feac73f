"""The image-tag recognition head of Tag2Text and RAM (Query2Label), plus what feeds and reads it.

One query per tag attends to the image tokens through a short stack of BERT layers that have
*no self-attention* (the original deletes it, following Query2Label: the tags do not look at
each other). Each layer is post-LN BERT: x = LN(x + cross_attn(x, image)); x = LN(x + FFN(x)),
exact GELU, LayerNorm eps 1e-12. The queries enter the first layer as they are: no embedding
LayerNorm, no positions (the original bypasses `BertModel.embeddings` with `encoder_embeds`).

The two models differ at both ends (recognize-anything `ram/models/tag2text.py`, `ram.py`):

| | queries | classifier |
|---|---|---|
| Tag2Text ("learned") | a trained table `label_embed` (num_tags, width) | GroupWiseLinear: logit[c] = <W[c], h[c]> + b[c] |
| RAM ("clip") | relu(wordvec_proj(E)), E = frozen CLIP text embeddings of tag names (num_tags, 512) | one Linear(width, 1) shared by all tags |

RAM's shared classifier is what makes it open-vocabulary: any (C', 512) table of CLIP text
embeddings can be passed as `label_embed` at call time (see `build_label_embeddings`). The
frozen table RAM ships with lives in the "constants" collection, not in "params", so no
optimizer (nor its weight decay) touches it, as RAM's pretrain.py freezes it.

Upstream of the head, RAM projects every image token (Swin's average-pooled [CLS] and the
patch tokens) with `image_proj` Linear(vision_width, 512) and feeds those; Tag2Text feeds
the raw image tokens. That projection belongs to the full model (it also feeds the tag
encoder and the CLIP distillation loss), not to this head.

Also here: tag lists / per-class threshold files (`load_tag_list`, `load_thresholds`), turning
logits into tags, RAM's open-set label embeddings from prompt ensembles, and RAM++'s
per-image reweighting of several descriptions per tag.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.bert import padding_mask
from clipjax.models.config import DictConfig
from clipjax.models.layers import Transformer, constrain, dense, dtype_of, logical

LABEL_SOURCES = ("learned", "clip")
CLASSIFIERS = ("groupwise", "shared")
CONSTANTS = "constants"  # variable collection of RAM's frozen CLIP label table

DEFAULT_THRESHOLD = 0.68  # Tag2Text and RAM default (tag2text.py / ram.py `threshold=0.68`)
OPENSET_THRESHOLD = 0.5  # inference_ram_openset.py: "the threshold for unseen categories is often lower"
# tag2text.py: person / man / woman need 0.7 (indices into tag2text_ori_tag_list.txt)
TAG2TEXT_THRESHOLD_OVERRIDES = {2701: 0.7, 2828: 0.7, 1167: 0.7}
# tag2text.py: tags kept out of the caption prompt ("quarter", "back", "two", "three", "four",
# "five", "one"); RAM's default list is empty
TAG2TEXT_DELETE_TAG_INDEX = (127, 2961, 3351, 3265, 3338, 3355, 3359)

ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tags")


@dataclasses.dataclass(frozen=True)
class TaggingConfig(DictConfig):
    """Shape of a tagging head. Defaults are RAM's (q2l_config.json with encoder_width 512)."""

    num_tags: int = 4585
    width: int = 768  # q2l hidden_size
    layers: int = 2
    heads: int = 4
    mlp_dim: int = 3072
    act: str = "gelu"  # exact erf GELU, as BERT
    ln_eps: float = 1e-12
    encoder_width: int = 512  # width of the image tokens (RAM: after image_proj; Tag2Text: vision width)
    label_source: str = "clip"  # "clip" (RAM) | "learned" (Tag2Text)
    label_dim: int = 512  # width of the CLIP label embeddings ("clip" only)
    classifier: str = "shared"  # "shared" (RAM) | "groupwise" (Tag2Text)
    # RAM++: K CLIP embeddings of LLM-written descriptions per tag (51), mixed per image
    descriptions_per_tag: int = 1
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self):
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.descriptions_per_tag < 1 or (self.descriptions_per_tag > 1 and self.label_source != "clip"):
            raise ValueError("descriptions_per_tag > 1 (RAM++) needs label_source='clip'")
        if self.descriptions_per_tag > 1 and self.encoder_width != self.label_dim:
            # RAM++ compares the projected image [CLS] token with the description embeddings
            raise ValueError(f"RAM++ needs encoder_width == label_dim, got {self.encoder_width} and {self.label_dim}")

    @property
    def has_wordvec_proj(self) -> bool:
        # RAM: nn.Linear(512, hidden) unless hidden == 512, where it is nn.Identity
        return self.label_source == "clip" and self.label_dim != self.width


def tag2text_tagging_config(vision_width: int = 1024, num_tags: int = 3429) -> TaggingConfig:
    """Tag2Text: learned queries, GroupWiseLinear, cross-attention straight to the image tokens
    (Swin-B: 1024 wide; ViT-B: 768)."""
    return TaggingConfig(num_tags=num_tags, encoder_width=vision_width, label_source="learned",
                         classifier="groupwise")


def ram_tagging_config(num_tags: int = 4585, descriptions_per_tag: int = 1) -> TaggingConfig:
    """RAM: CLIP label embeddings, shared Linear(768, 1), image tokens projected to 512.
    RAM++: the same with descriptions_per_tag=51."""
    return TaggingConfig(num_tags=num_tags, descriptions_per_tag=descriptions_per_tag)


# ------------------------------------------------------------------------------------ model


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class TaggingHead(nn.Module):
    """image tokens (B, S, encoder_width) -> dict(logits=(B, C) float32, hidden=(B, C, width)).

    `image_mask` (B, S) 1/0 marks valid image tokens (the original passes all ones).
    `label_embed` ("clip" heads only) replaces the stored table: (C', label_dim) shared by the
    batch, or (B, C', label_dim) per image; with the shared classifier C' is free.

    RAM++ (descriptions_per_tag K > 1): the table holds K description embeddings per tag
    (tag-major rows); each image mixes them with `ram_plus_label_embeddings`, using its first
    image token (the projected [CLS]) and the learned `reweight_scale`. A 2-D `label_embed`
    given at call time is such a table too (C' * K rows); a 3-D one is used as it is, e.g.
    RAM++'s image-text alignment, which feeds the batch's caption embeddings broadcast to
    (B, B, d) and scores them with `alignment_targets` (clipjax.losses.tagging).
    """

    cfg: TaggingConfig
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None
    dropout_rate: float = 0.1  # BERT hidden dropout (q2l_config: 0.1); attention dropout not modelled

    @nn.compact
    def __call__(self, image_tokens, image_mask=None, label_embed=None, deterministic: bool = True):
        cfg = self.cfg
        dtype, pdtype = dtype_of(self.dtype), dtype_of(self.param_dtype)
        b = image_tokens.shape[0]
        if image_tokens.shape[-1] != cfg.encoder_width:
            raise ValueError(f"image tokens are {image_tokens.shape[-1]} wide, the head expects {cfg.encoder_width}")

        if cfg.label_source == "learned":
            if label_embed is not None:
                raise ValueError("a Tag2Text ('learned') head has its own label queries; label_embed must be None")
            # nn.Embedding's default init N(0, 1), as the original's label_embed
            queries = self.param("label_embed", logical(nn.initializers.normal(1.0), ("tags", "embed")),
                                 (cfg.num_tags, cfg.width), pdtype).astype(dtype)
        else:
            k = cfg.descriptions_per_tag
            table = self.variable(CONSTANTS, "label_embed",
                                  lambda: jnp.zeros((cfg.num_tags * k, cfg.label_dim), pdtype))
            if label_embed is None:
                label_embed = table.value
            if label_embed.shape[-1] != cfg.label_dim:
                raise ValueError(f"label embeddings are {label_embed.shape[-1]} wide, the head expects {cfg.label_dim}")
            queries = jax.lax.stop_gradient(label_embed).astype(dtype)
            if k > 1:
                scale = self.param("reweight_scale", logical(nn.initializers.constant(math.log(1 / 0.07)), ()),
                                   (), pdtype)
                if queries.ndim == 2:
                    if queries.shape[0] % k:
                        raise ValueError(f"{queries.shape[0]} description embeddings are not {k} per tag")
                    queries = ram_plus_label_embeddings(image_tokens[:, 0].astype(dtype), queries,
                                                        queries.shape[0] // k, scale.astype(dtype))
            if cfg.has_wordvec_proj:
                queries = dense(cfg.width, ("proj", "embed"), dtype, pdtype, name="wordvec_proj")(queries)
            queries = jax.nn.relu(queries)  # applied even where wordvec_proj is the identity
        num = queries.shape[-2]
        if cfg.classifier == "groupwise" and num != cfg.num_tags:
            raise ValueError(f"a group-wise classifier scores exactly {cfg.num_tags} tags, got {num} queries")
        x = jnp.broadcast_to(queries, (b, num, cfg.width)) if queries.ndim == 2 else queries
        if x.shape[0] != b:
            raise ValueError(f"per-image label embeddings have batch {x.shape[0]}, images {b}")

        # BERT layers in the original's 'tagging' mode: cross-attention + FFN, no self-attention
        x, _ = Transformer(depth=cfg.layers, heads=cfg.heads, mlp_dim=cfg.mlp_dim, act=cfg.act, ln_eps=cfg.ln_eps,
                           norm_first=False, cross_attention=True, self_attention=False,
                           dropout_rate=self.dropout_rate, deterministic=deterministic, dtype=dtype,
                           param_dtype=pdtype, remat_policy=self.remat_policy, attention_impl=self.attention_impl,
                           name="transformer")(constrain(x), None, constrain(image_tokens.astype(dtype)),
                                               padding_mask(image_mask))

        if cfg.classifier == "groupwise":
            # GroupWiseLinear: W (1, C, D), b (1, C) in the original, uniform(±1/sqrt(D)) init
            bound = 1.0 / math.sqrt(cfg.width)
            w = self.param("W", logical(_uniform(bound), ("tags", "embed")), (cfg.num_tags, cfg.width), pdtype)
            bias = self.param("b", logical(_uniform(bound), ("tags",)), (cfg.num_tags,), pdtype)
            logits = jnp.einsum("bcd,cd->bc", x, w.astype(dtype)) + bias.astype(dtype)
        else:
            logits = dense(1, ("embed", "proj"), dtype, pdtype, name="fc")(x)[..., 0]
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length"))
        return dict(logits=logits, hidden=x)


# ------------------------------------------------------------------------ predictions / tag files


def predict_tags(logits, thresholds, delete_index: Sequence[int] = ()):
    """Boolean (B, C): sigmoid(logit) strictly above the per-class threshold, as the original's
    `torch.where(sigmoid(logits) > class_threshold, 1, 0)`; `delete_index` columns forced off."""
    hit = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)) > jnp.asarray(thresholds, jnp.float32)
    if len(delete_index):
        hit = hit.at[:, jnp.asarray(delete_index)].set(False)
    return hit


def tags_to_strings(hits, tag_list: Sequence[str], sep: str = " | ") -> list[str]:
    """Boolean (B, C) -> one string per image, tags in list order joined by " | " (the original's
    output and the tag encoder's input format)."""
    hits = np.asarray(hits)
    if hits.shape[-1] != len(tag_list):
        raise ValueError(f"{hits.shape[-1]} tag columns but {len(tag_list)} tag names")
    return [sep.join(tag_list[i] for i in np.flatnonzero(row)) for row in hits]


def _read_lines(path: str, what: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines only
        lines.pop()
    if not lines:
        raise ValueError(f"{what} file {path} is empty")
    return lines


def load_tag_list(path: str) -> list[str]:
    """One tag per line (UTF-8). Surrounding whitespace is stripped (RAM's Chinese list has
    trailing spaces); a blank line inside the list is an error, since it would shift every
    later tag's index. Duplicates are allowed: Tag2Text's own list has 116."""
    tags = [line.strip() for line in _read_lines(path, "tag list")]
    blank = [i + 1 for i, t in enumerate(tags) if not t]
    if blank:
        raise ValueError(f"tag list {path} has blank lines at {blank[:10]}")
    return tags


def load_thresholds(path: str, num_tags: Optional[int] = None) -> np.ndarray:
    """One float in [0, 1] per line, aligned with the tag list -> float32 (C,)."""
    values = []
    for i, line in enumerate(_read_lines(path, "threshold"), start=1):
        try:
            v = float(line.strip())
        except ValueError:
            raise ValueError(f"threshold file {path}, line {i}: {line!r} is not a number") from None
        if not 0.0 <= v <= 1.0:  # also rejects nan
            raise ValueError(f"threshold file {path}, line {i}: {v} is not a probability in [0, 1]")
        values.append(v)
    if num_tags is not None and len(values) != num_tags:
        raise ValueError(f"threshold file {path} has {len(values)} values for {num_tags} tags")
    return np.asarray(values, np.float32)


def class_thresholds(num_tags: int, default: float = DEFAULT_THRESHOLD, overrides: Optional[dict] = None) -> np.ndarray:
    """(C,) thresholds: `default` everywhere, `overrides` {index: value} on top (Tag2Text's way)."""
    t = np.full((num_tags,), default, np.float32)
    for i, v in (overrides or {}).items():
        if not 0 <= i < num_tags:
            raise ValueError(f"threshold override for tag {i}, but there are {num_tags} tags")
        t[i] = v
    return t


def asset_path(name: str) -> str:
    return os.path.join(ASSET_DIR, name)


def load_ram_tags(chinese: bool = False) -> tuple[list[str], np.ndarray]:
    """RAM's 4585 tags and per-class thresholds, shipped in clipjax/assets/tags."""
    tags = load_tag_list(asset_path("ram_tag_list_chinese.txt" if chinese else "ram_tag_list.txt"))
    return tags, load_thresholds(asset_path("ram_tag_list_threshold.txt"), len(tags))


def load_tag2text_tags() -> tuple[list[str], np.ndarray]:
    """Tag2Text's 3429 tags; thresholds 0.68 with person / man / woman at 0.7."""
    tags = load_tag_list(asset_path("tag2text_ori_tag_list.txt"))
    return tags, class_thresholds(len(tags), DEFAULT_THRESHOLD, TAG2TEXT_THRESHOLD_OVERRIDES)


# ------------------------------------------------------------------------ open vocabulary (RAM)

# The prompt ensemble of recognize-anything `ram/utils/openset_utils.py` (`multiple_templates`).
OPENSET_TEMPLATES = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)


def openset_prompts(name: str, templates: Sequence[str] = OPENSET_TEMPLATES) -> list[str]:
    """RAM's prompts for one category name, quirks kept so embeddings match the original:
    the article comes from the *raw* name's first character ("an" only for a lowercase vowel,
    so "Aerial photography" gets "a"); the name is lowercased, "_" -> " ", "/" -> " or ",
    trailing dots removed; prompts starting with "a" or "the" get "This is " in front."""
    article = "an" if name[:1] in ("a", "e", "i", "o", "u") else "a"
    clean = name.replace("_", " ").replace("/", " or ").lower().rstrip(".")
    out = []
    for t in templates:
        text = t.format(clean, article=article)
        out.append("This is " + text if text.startswith("a") or text.startswith("the") else text)
    return out


def build_label_embeddings(names: Sequence[str], encode_text: Callable[[list[str]], object],
                           templates: Sequence[str] = OPENSET_TEMPLATES, batch_size: int = 256) -> np.ndarray:
    """(C, d) float32 label embeddings for `names`, as RAM's `build_openset_label_embedding`:
    every prompt embedded by `encode_text` (a list of strings -> (n, d) CLIP text embeddings,
    RAM uses OpenAI ViT-B/16), each L2-normalised, averaged over the prompts of a name, and the
    mean normalised again. Prompts are sent to `encode_text` in chunks of `batch_size`."""
    if not len(names):
        raise ValueError("no category names")
    prompts = [p for n in names for p in openset_prompts(n, templates)]
    chunks = [np.asarray(encode_text(prompts[i:i + batch_size]), np.float32) for i in range(0, len(prompts), batch_size)]
    emb = np.concatenate(chunks, axis=0)
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise ValueError(f"encode_text returned {emb.shape} for {len(prompts)} prompts; expected (n, d)")
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.reshape(len(names), len(templates), -1).mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def ram_plus_label_embeddings(image_cls, label_embed, num_tags: int, reweight_scale):
    """RAM++: each tag has K = rows / num_tags description embeddings (rows ordered tag-major);
    per image they are mixed with weights softmax_K(exp(reweight_scale) * <cls/|cls|, e_k>),
    where cls is the image_proj'd [CLS] token. Returns (B, num_tags, d) for `TaggingHead`."""
    rows, d = label_embed.shape
    if rows % num_tags:
        raise ValueError(f"{rows} description embeddings do not split evenly over {num_tags} tags")
    cls = image_cls / jnp.linalg.norm(image_cls, axis=-1, keepdims=True)
    logits = jnp.exp(reweight_scale) * cls @ label_embed.T  # (B, C*K)
    weights = jax.nn.softmax(logits.reshape(cls.shape[0], num_tags, -1), axis=-1)
    return jnp.einsum("bck,ckd->bcd", weights, label_embed.reshape(num_tags, -1, d))
