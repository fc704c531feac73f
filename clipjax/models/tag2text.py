"""Tag2Text and RAM as one Flax module: image tower -> tagging head (tags), tag encoder
(tags as text cross-attending the image) -> caption decoder (cross-attending the tag
encoding); RAM adds `image_proj` (every image token to the CLIP width, which the head, the
tag encoder and the CLIP distillation loss read) and CLIP-text tag queries.

| | Tag2Text | RAM |
|---|---|---|
| tag queries | learned `label_embed`, GroupWiseLinear | frozen CLIP text embeddings, shared Linear(768, 1) |
| image tokens into head / tag encoder | vision tokens (width of the tower) | image_proj(vision tokens) (512) |
| losses | ASL + captioning LM | ASL + captioning LM + L1 to CLIP image features |

Weight tying (recognize-anything `tie_encoder_decoder_weights(tag_encoder, tagging_head)`):
the tag encoder's lowest layers share the tagging head's cross-attention, FFN and their
LayerNorms. Flax has no shared parameters across differently-shaped modules, so the tie is
functional: `tie_tag_encoder(params)` overwrites those slices of the tag encoder's stacked
layers with the head's, and every entry point (training loss, inference, export) applies it
first. Gradients then reach the head's tensors through both paths, exactly as with shared
PyTorch Parameters; the tag encoder's own copies of those slices are dead (never read).

Image-text alignment (`alignment_dim` > 0; off in the released checkpoints, whose code trains
no alignment loss): BLIP's ITC and ITM, which the Tag2Text paper trains alongside tagging and
captioning. The tag encoder doubles as BLIP's text encoder: without cross-attention on
[CLS] + caption for ITC (`text_proj` of its first token, L2-normalised, against `vision_proj`
of the image's first token, over the global batch, learnable temperature clamped to
[0.001, 0.5]); with cross-attention to the image on [ENC] + caption for ITM (`itm_head`, 2-way),
on the positive pairs plus one hard negative text per image and one hard negative image per
text, drawn from the ITC similarities. BLIP's momentum encoders and queues are not built: ITC
uses in-batch negatives of the global batch.

Vision towers: "swin" (clipjax.models.swin, the released checkpoints' Swin-B/Swin-L: average-
pooled token + patch tokens) or "vit" (BLIP's / timm's ViT: pre-LN, final LayerNorm on every
token; the released Tag2Text code's `vit='base'` option, used here for models trained from
scratch) or "resnet" (CLIP's ModifiedResNet, clipjax.models.resnet: the attention-pooled
embedding + the final feature map's tokens; BatchNorm statistics in "batch_stats", updated when
deterministic=False. Not a released Tag2Text tower: for small models trained from scratch, where
convolutions learn object shape far sooner than a ViT does — see docs/results.md).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.alignment import itc_similarities, itm_pairs, sample_hard_negatives, TEMP_INIT, TEMP_RANGE
from clipjax.models.bert import BertEncoder
from clipjax.models.captioning import CaptionDecoder
from clipjax.models.clip import l2_normalize
from clipjax.models.config import DictConfig, TextConfig, VisionConfig
from clipjax.models.layers import dense, dtype_of
from clipjax.models.resnet import ModifiedResNet
from clipjax.models.swin import swin_b_384, swin_l_384, SwinConfig, SwinTransformer
from clipjax.models.tagging import ram_tagging_config, tag2text_tagging_config, TaggingConfig, TaggingHead
from clipjax.models.vit import VisionTransformer

VARIANTS = ("tag2text", "ram")
VISION_KINDS = ("vit", "swin", "resnet")
PROMPT = "a picture of "  # Tag2Text / RAM caption prompt (BLIP's trick)


@dataclasses.dataclass(frozen=True)
class Tag2TextConfig(DictConfig):
    NESTED: ClassVar[dict] = {"vision": VisionConfig, "text": TextConfig, "tagging": TaggingConfig}
    MODEL_TYPE: ClassVar[str] = "tag2text"

    variant: str = "tag2text"
    vision_kind: str = "vit"
    vision: VisionConfig = VisionConfig(kind="vit", act="gelu", ln_pre=False, patch_bias=True, ln_eps=1e-6)
    swin: Optional[dict] = None  # clipjax.models.swin.SwinConfig fields when vision_kind == "swin"
    tagging: TaggingConfig = TaggingConfig(label_source="learned", classifier="groupwise", encoder_width=768)
    # the "med" BERT shared by the tag encoder and the caption decoder (BLIP's med_config.json)
    text: TextConfig = TextConfig(kind="bert", vocab_size=30524, context_length=512, width=768, layers=12,
                                  heads=12, mlp_dim=3072, act="gelu", ln_eps=1e-12, eos_token_id=None,
                                  pad_token_id=0, pool="cls", cross_attention=True)
    image_proj_dim: Optional[int] = None  # RAM: 512 (CLIP ViT-B/16's embedding width)
    captioning: bool = True  # tag encoder + caption decoder (RAM++ has neither)
    alignment_dim: int = 0  # > 0: BLIP ITC / ITM branch with this projection width (BLIP: 256)
    # token ids of the tokenizer the model was trained with (bert-base-uncased + [DEC], [ENC])
    bos_token_id: int = 30522  # [DEC]
    enc_token_id: int = 30523  # [ENC]
    sep_token_id: int = 102  # [SEP]: end of a caption
    prompt: str = PROMPT
    tag_max_length: int = 40
    caption_max_length: int = 40
    # runtime
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Optional[str] = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.vision_kind not in VISION_KINDS:
            raise ValueError(f"vision_kind must be one of {VISION_KINDS}, got {self.vision_kind!r}")
        if self.vision_kind == "swin" and not self.swin:
            raise ValueError("vision_kind 'swin' needs the swin config")
        if (self.vision_kind == "resnet") != (self.vision.kind == "resnet"):
            raise ValueError(f"vision_kind {self.vision_kind!r} needs vision.kind "
                             f"{'resnet' if self.vision_kind == 'resnet' else 'vit'}, got {self.vision.kind!r}")
        if self.text.kind != "bert" or not self.text.cross_attention:
            raise ValueError("the tag encoder / caption decoder need a 'bert' TextConfig with cross_attention")
        want = self.image_proj_dim or self.vision_width
        if self.tagging.encoder_width != want:
            raise ValueError(f"the tagging head reads {self.tagging.encoder_width}-wide image tokens, the model "
                             f"gives {want} ({'image_proj' if self.image_proj_dim else 'vision width'})")
        t, h = self.text, self.tagging
        if self.captioning and (h.width != t.width or h.mlp_dim != t.mlp_dim or h.layers > t.layers):
            raise ValueError(f"the tie shares the tagging head's {h.layers} layers with the tag encoder's lowest: "
                             f"they need equal width / mlp_dim (head {h.width}/{h.mlp_dim}, text {t.width}/{t.mlp_dim}) "
                             f"and head layers <= text layers ({h.layers} > {t.layers})")
        if self.alignment_dim and not self.captioning:
            raise ValueError("ITC / ITM (alignment_dim) use the tag encoder as the text encoder: needs captioning")
        if self.variant == "ram" and not self.image_proj_dim:
            raise ValueError("RAM needs image_proj_dim (the CLIP embedding width, 512 in the release)")

    @property
    def swin_config(self):
        return SwinConfig.from_dict(self.swin)

    @property
    def vision_width(self) -> int:
        if self.vision_kind == "swin":
            return self.swin_config.width
        if self.vision_kind == "resnet":  # the attention pool maps back to the feature width
            return 32 * self.vision.resnet_width
        return self.vision.width

    @property
    def image_size(self) -> int:
        return self.swin_config.image_size if self.vision_kind == "swin" else self.vision.image_size

    @property
    def image_width(self) -> int:
        """Width of the image tokens the head and the tag encoder read."""
        return self.image_proj_dim or self.vision_width


class Tag2Text(nn.Module):
    """Tag2Text / RAM. `__call__` runs every part (training); the methods run one each
    (inference): `image_tokens`, `tag_logits`, `encode_tags`, `decode`.

    Tag and caption ids come from the tokenizer the model uses: tags joined " | " with [ENC]
    in place of [CLS]; captions as `prompt + caption` with [DEC] in place of [CLS].
    Apply the tie first: `model.apply({"params": tie_tag_encoder(params), ...}, ...)`.
    """

    cfg: Tag2TextConfig
    dropout_rate: float = 0.0  # BERT hidden dropout (0.1 in the release's med config) for training

    def setup(self):
        cfg = self.cfg
        rt = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat_policy=cfg.remat_policy,
                  attention_impl=cfg.attention_impl)
        if cfg.vision_kind == "swin":
            self.visual_encoder = SwinTransformer(cfg.swin_config, **rt)
        elif cfg.vision_kind == "resnet":
            self.visual_encoder = ModifiedResNet(cfg.vision, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        else:
            self.visual_encoder = VisionTransformer(cfg.vision, norm_all_tokens=True, **rt)
        if cfg.image_proj_dim:
            self.image_proj = dense(cfg.image_proj_dim, ("embed", "proj"), dtype_of(cfg.dtype),
                                    dtype_of(cfg.param_dtype))
        self.tagging_head = TaggingHead(cfg.tagging, dropout_rate=self.dropout_rate, **rt)
        if cfg.captioning:
            self.tag_encoder = BertEncoder(cfg.text, dropout_rate=self.dropout_rate, encoder_width=cfg.image_width,
                                           **rt)
            self.text_decoder = CaptionDecoder(cfg.text, dropout_rate=self.dropout_rate,
                                               encoder_width=cfg.text.width, **rt)
        if cfg.alignment_dim:
            dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
            self.vision_proj = dense(cfg.alignment_dim, ("embed", "proj"), dt, pdt)
            self.text_proj = dense(cfg.alignment_dim, ("embed", "proj"), dt, pdt)
            self.itm_head = dense(2, ("embed", None), dt, pdt)
            self.temp = self.param("temp", nn.initializers.constant(TEMP_INIT), (), jnp.float32)

    def image_tokens(self, images, deterministic: bool = True):
        """NHWC images (normalised) -> (B, 1+L, image_width): the pooled/[CLS] token first."""
        if self.cfg.vision_kind == "swin":
            x = self.visual_encoder(images)["tokens"]
        elif self.cfg.vision_kind == "resnet":  # BatchNorm: batch statistics while training
            out = self.visual_encoder(images, train=not deterministic)
            x = jnp.concatenate([out["pooled"][:, None].astype(out["tokens"].dtype), out["tokens"]], axis=1)
        else:
            x = self.visual_encoder(images, deterministic=deterministic)["tokens"]
        if self.cfg.image_proj_dim:
            x = self.image_proj(x)
        return x

    def tag_logits(self, image_tokens, label_embed=None, deterministic: bool = True):
        return self.tagging_head(image_tokens, label_embed=label_embed, deterministic=deterministic)["logits"]

    def encode_tags(self, tag_ids, image_tokens, deterministic: bool = True):
        mask = (tag_ids != self.cfg.text.pad_token_id).astype(jnp.int32)
        return self.tag_encoder(tag_ids, mask, encoder_hidden_states=image_tokens,
                                deterministic=deterministic)["tokens"]

    def decode(self, caption_ids, tag_states, caption_mask=None, tag_mask=None, deterministic: bool = True):
        """Next-token logits (B, T, vocab). The release passes no mask over the tag states
        (encoder_attention_mask=None: padded tag positions are attended too); pass `tag_mask`
        to mask them."""
        if caption_mask is None:
            caption_mask = (caption_ids != self.cfg.text.pad_token_id).astype(jnp.int32)
        return self.text_decoder(caption_ids, caption_mask, tag_states, tag_mask,
                                 deterministic=deterministic)["logits"]

    # ------------------------------------------------------------- ITC / ITM (BLIP)
    def image_feat(self, image_tokens):
        """(B, 1+L, W) image tokens -> (B, alignment_dim) L2-normalised ITC feature."""
        return l2_normalize(self.vision_proj(image_tokens[:, 0]).astype(jnp.float32))

    def text_feat(self, text_ids, deterministic: bool = True):
        """[CLS] + caption ids -> (B, alignment_dim) L2-normalised ITC feature (the tag
        encoder in text mode: no cross-attention)."""
        mask = (text_ids != self.cfg.text.pad_token_id).astype(jnp.int32)
        x = self.tag_encoder(text_ids, mask, deterministic=deterministic)["tokens"][:, 0]
        return l2_normalize(self.text_proj(x).astype(jnp.float32))

    def itm_logits(self, text_ids, image_tokens, deterministic: bool = True):
        """(B, 2) match / no-match logits of caption ids (first token set to [ENC]) against
        the image tokens (B, 1+L, W); index 1 = match."""
        ids = text_ids.at[:, 0].set(self.cfg.enc_token_id)
        mask = (ids != self.cfg.text.pad_token_id).astype(jnp.int32)
        x = self.tag_encoder(ids, mask, encoder_hidden_states=image_tokens, deterministic=deterministic)["tokens"]
        return self.itm_head(x[:, 0]).astype(jnp.float32)

    def temperature(self):
        """BLIP clamps `temp` in place to [0.001, 0.5] after each step; here the clamp is in the
        forward with a straight-through gradient, so the value used is always in range."""
        return self.temp + jax.lax.stop_gradient(jnp.clip(self.temp, *TEMP_RANGE) - self.temp)

    def align(self, image_tokens, text_ids, key=None, deterministic: bool = True):
        """BLIP's ITC + ITM on aligned pairs (row i of each). `key`: PRNG key for drawing the
        hard negatives (training); None takes the most similar non-matching one instead.
        Returns the ITC similarities sim_i2t / sim_t2i (B, B, over the temperature), itm_logits
        (3B, 2) and itm_labels (3B,); the losses are clipjax.losses.tagging's
        itc_loss_from_similarities and itm_loss."""
        img, txt = self.image_feat(image_tokens), self.text_feat(text_ids, deterministic)
        sim_i2t, sim_t2i = itc_similarities(img, txt, self.temperature())
        if key is None:
            eye = jnp.eye(sim_i2t.shape[0], dtype=bool)
            neg_t = jnp.argmax(jnp.where(eye, -jnp.inf, jax.lax.stop_gradient(sim_i2t)), axis=1)
            neg_i = jnp.argmax(jnp.where(eye, -jnp.inf, jax.lax.stop_gradient(sim_t2i)), axis=1)
        else:
            neg_t, neg_i = sample_hard_negatives(key, sim_i2t, sim_t2i)
        image_index, text_index, labels = itm_pairs(neg_t, neg_i)
        logits = self.itm_logits(text_ids[text_index], image_tokens[image_index], deterministic)
        return dict(itm_logits=logits, itm_labels=labels, sim_i2t=sim_i2t, sim_t2i=sim_t2i)

    def __call__(self, images, tag_ids=None, caption_ids=None, text_ids=None, label_embed=None, align_key=None,
                 deterministic: bool = True):
        """Every part. `text_ids` ([CLS] + caption, needed with `alignment_dim`) add the ITC /
        ITM outputs (see `align`); `align_key` draws its hard negatives."""
        tokens = self.image_tokens(images, deterministic)
        tag_logits = self.tag_logits(tokens, label_embed, deterministic)
        logits = None
        out = {}
        if self.cfg.captioning:
            states = self.encode_tags(tag_ids, tokens, deterministic)
            logits = self.decode(caption_ids, states, deterministic=deterministic)
        if self.cfg.alignment_dim and text_ids is not None:
            out = self.align(tokens, text_ids, align_key, deterministic)
        return dict(tag_logits=tag_logits, caption_logits=logits, image_cls=tokens[:, 0], **out)


# -------------------------------------------------------------------------------- tying

TIED = ("cross_attn", "ln_cross", "mlp", "ln2")  # the head's whole layer (it has no self-attention)


def tie_tag_encoder(params: dict) -> dict:
    """params with tag_encoder/transformer/layers/{cross_attn, ln_cross, mlp, ln2}[:n] replaced
    by the tagging head's n layers (recognize-anything's tie). Identity without a tag encoder."""
    if "tag_encoder" not in params:
        return params
    head = params["tagging_head"]["transformer"]["layers"]
    enc = params["tag_encoder"]["transformer"]["layers"]
    new_enc = dict(enc)
    for name in TIED:
        # the head may split the same Linear into other head counts (4 vs 12): reshape, as
        # torch's shared (out, in) weight is the same tensor whatever the head split
        new_enc[name] = jax.tree.map(
            lambda e, h: jnp.asarray(e).at[: h.shape[0]].set(jnp.reshape(h, (h.shape[0],) + e.shape[1:]).astype(e.dtype)),
            enc[name], head[name])
    tag_encoder = dict(params["tag_encoder"])
    tag_encoder["transformer"] = {**params["tag_encoder"]["transformer"], "layers": new_enc}
    return {**params, "tag_encoder": tag_encoder}


def init_inputs(cfg: Tag2TextConfig, batch: int = 1):
    """Positional inputs of `Tag2Text.__call__` that create every parameter."""
    s = cfg.image_size
    if cfg.alignment_dim:  # + [CLS] + caption ids; ITM's negatives need two pairs at least
        batch = max(batch, 2)
    ids = jnp.zeros((batch, 4), jnp.int32)
    return (jnp.zeros((batch, s, s, 3), jnp.float32), ids, ids) + ((ids,) if cfg.alignment_dim else ())


# ------------------------------------------------------------------- the released models


def released_config(name: str) -> Tag2TextConfig:
    """Configs of recognize-anything's released checkpoints (384 px Swin towers, med BERT with
    bert-base-uncased + [DEC] / [ENC]): "tag2text_swin_14m", "ram_swin_large_14m",
    "ram_plus_swin_large_14m". Load the weights with
    clipjax.convert.recognize_anything.load_ram_checkpoint(path, released_config(name))."""
    if name == "tag2text_swin_14m":
        swin = swin_b_384()
        return Tag2TextConfig(variant="tag2text", vision_kind="swin", swin=swin.to_dict(),
                              tagging=tag2text_tagging_config(swin.width, 3429))
    if name in ("ram_swin_large_14m", "ram_plus_swin_large_14m"):
        plus = name.startswith("ram_plus")
        return Tag2TextConfig(variant="ram", vision_kind="swin", swin=swin_l_384().to_dict(),
                              tagging=ram_tagging_config(4585, 51 if plus else 1), image_proj_dim=512,
                              captioning=not plus)
    raise ValueError(f"unknown released model {name!r}; choose tag2text_swin_14m, ram_swin_large_14m or "
                     "ram_plus_swin_large_14m")
