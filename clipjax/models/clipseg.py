"""CLIPSeg (Lüddecke & Ecker, 2022): a small FiLM-conditioned decoder over the activations of a
frozen CLIP ViT, predicting a mask for whatever a text or image prompt refers to.

    activations after CLIP layers `extract_layers` (deepest first)
      -> per layer: reduce (Dense to reduce_dim) + the previous decoder output
      -> at `conditional_layer`: FiLM, x * film_mul(c) + film_add(c)
      -> a post-LN transformer block (ReLU MLP)
    class token dropped -> (grid, grid, reduce_dim) -> head -> logits (B, H, W)

Head: one transposed conv (kernel = stride = patch size), or the refined head
(`complex_head`): 3x3 conv, ReLU, two transposed convs of kernel = stride = patch/4.

The conditioning vector c is a projected (un-normalised) CLIP embedding, as transformers'
`get_text_features` / `get_image_features` return it: of a text prompt, of a visual prompt
image, a raw vector, or alpha * text + (1 - alpha) * visual. CLIP is frozen: its outputs are
wrapped in stop_gradient (training also freezes its parameters in the optimizer).
Images at another size than CLIP's (352 px for the released models) interpolate CLIP's
position embeddings with PyTorch's bicubic kernel (clipjax.models.vit.resize_pos_grid), as
transformers' CLIPSegVisionEmbeddings does (align_corners=False, no antialiasing, the class
token's position kept); the rest of the model is size-independent.

The config also says how an image is prepared for the model (`LoadedCLIPSeg` follows it): the
whole image resized to image_size x image_size, no crop, with the PIL filter `resample`, then
x/255 and (x - image_mean) / image_std. The dataclass defaults (CLIP's mean/std, bicubic) are
what clipjax's own CLIPSeg training and evaluation normalise with; a transformers directory is
read with its preprocessor_config.json (the CIDAS checkpoints: bilinear, ImageNet mean/std), and
an original decoder file with the original repository's ImageNet mean/std and bilinear resize
(clipjax.convert.hf_clipseg).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Tuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from clipjax.models.clip import CLIP
from clipjax.models.config import CLIPConfig, DictConfig
from clipjax.models.layers import Block, dense, dtype_of, logical
from clipjax.preprocess import CLIP_MEAN, CLIP_STD, RESAMPLE


@dataclasses.dataclass(frozen=True)
class CLIPSegConfig(DictConfig):
    NESTED: ClassVar[dict] = {"clip": CLIPConfig}
    MODEL_TYPE: ClassVar[str] = "clipseg"

    clip: CLIPConfig = CLIPConfig()
    extract_layers: Tuple[int, ...] = (3, 6, 9)
    reduce_dim: int = 64
    decoder_heads: int = 4
    decoder_mlp_dim: int = 2048
    conditional_layer: int = 0
    complex_head: bool = False  # the "refined" transposed-conv head
    image_size: int = 352  # input resolution of the segmenter (CLIP's positions are interpolated)
    # preprocessing (see the module docstring): defaults are clipjax training's, NOT the CIDAS
    # checkpoints' (those are set by the converters from preprocessor_config.json)
    image_mean: Tuple[float, ...] = CLIP_MEAN
    image_std: Tuple[float, ...] = CLIP_STD
    resample: str = "bicubic"  # a PIL filter name: nearest, lanczos, bilinear, bicubic, box, hamming

    def validate(self) -> None:
        depth = self.clip.vision.layers
        if self.clip.vision.kind != "vit":
            raise ValueError("CLIPSeg needs a ViT image tower")
        if not self.extract_layers or max(self.extract_layers) >= depth or min(self.extract_layers) < 0:
            raise ValueError(f"extract_layers {self.extract_layers} must lie in [0, {depth}) for a {depth}-layer ViT")
        if not 0 <= self.conditional_layer < len(self.extract_layers):
            raise ValueError(f"conditional_layer {self.conditional_layer} must be < {len(self.extract_layers)}")
        if self.complex_head and self.clip.vision.patch_size % 4:
            raise ValueError("the refined head needs a patch size divisible by 4")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean / image_std need 3 values (std > 0), got {self.image_mean} / {self.image_std}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample {self.resample!r} is not one of {sorted(RESAMPLE)}")



class CLIPSegDecoder(nn.Module):
    cfg: CLIPSegConfig

    @nn.compact
    def __call__(self, activations, cond):
        cfg = self.cfg
        vis = cfg.clip.vision
        dtype, pdtype = dtype_of(cfg.clip.dtype), dtype_of(cfg.clip.param_dtype)
        r = cfg.reduce_dim
        cond = cond.astype(dtype)
        out = None
        for i, act in enumerate(activations[::-1]):  # deepest first
            red = dense(r, ("embed", "mlp"), dtype, pdtype, name=f"reduces_{i}")(act)
            out = red if out is None else red + out
            if i == cfg.conditional_layer:
                mul = dense(r, ("embed", "mlp"), dtype, pdtype, name="film_mul")(cond)
                add = dense(r, ("embed", "mlp"), dtype, pdtype, name="film_add")(cond)
                out = mul[:, None, :] * out + add[:, None, :]
            out, _ = Block(cfg.decoder_heads, cfg.decoder_mlp_dim, act="relu", ln_eps=vis.ln_eps, norm_first=False,
                           dtype=dtype, param_dtype=pdtype, attention_impl=cfg.clip.attention_impl,
                           name=f"layers_{i}")(out)
        b, t, _ = out.shape
        g = int(math.isqrt(t - 1))
        x = out[:, 1:, :].reshape(b, g, g, r)  # class token dropped; row-major patch grid
        p = vis.patch_size

        def convt(features, k, name):
            return nn.ConvTranspose(features, (k, k), strides=(k, k), padding="VALID", dtype=dtype, param_dtype=pdtype,
                                    kernel_init=logical(nn.initializers.lecun_normal(), (None, None, "mlp", None)),
                                    name=name)

        if cfg.complex_head:
            k = p // 4
            x = nn.Conv(r, (3, 3), padding=1, dtype=dtype, param_dtype=pdtype,
                        kernel_init=logical(nn.initializers.lecun_normal(), (None, None, None, "mlp")),
                        name="head_conv")(x)
            x = convt(r // 2, k, "head_up1")(nn.relu(x))
            x = convt(1, k, "head_up2")(nn.relu(x))
        else:
            x = convt(1, p, "head")(x)
        return x[..., 0].astype(jnp.float32)


class CLIPSeg(nn.Module):
    """`__call__(images, ids=None, conditional_images=None, conditional_embeddings=None,
    alpha=None)` -> mask logits (B, H, W) at the input resolution (before the head's
    upsampling rounds it to the patch grid). Conditioning, in order of precedence: a raw
    vector; text ids and prompt images mixed by `alpha` (B,) when both are given; text ids;
    prompt images."""

    cfg: CLIPSegConfig

    def setup(self):
        self.clip = CLIP(self.cfg.clip)
        self.decoder = CLIPSegDecoder(self.cfg)

    def encode_text(self, ids, attention_mask=None):
        return self.clip.encode_text(ids, attention_mask)

    def encode_image(self, images):
        return self.clip.encode_image(images)

    def conditional(self, ids=None, attention_mask=None, conditional_images=None, conditional_embeddings=None,
                    alpha=None):
        if conditional_embeddings is not None:
            return conditional_embeddings
        txt = None if ids is None else self.encode_text(ids, attention_mask)
        img = None if conditional_images is None else self.encode_image(conditional_images)
        if txt is not None and img is not None:
            if alpha is None:
                raise ValueError("both text and image prompts given: pass alpha (weight of the text embedding)")
            a = jnp.asarray(alpha, txt.dtype).reshape(-1, 1)
            return a * txt + (1.0 - a) * img
        if txt is None and img is None:
            raise ValueError("give a prompt: ids, conditional_images or conditional_embeddings")
        return txt if txt is not None else img

    def __call__(self, images, ids=None, attention_mask=None, conditional_images=None,
                 conditional_embeddings=None, alpha=None):
        vis = self.clip.visual(images, return_hidden=True)
        hidden = vis["hidden"]  # (L, B, T, W): output of every layer
        acts = [jax.lax.stop_gradient(hidden[i]) for i in self.cfg.extract_layers]
        cond = jax.lax.stop_gradient(self.conditional(ids, attention_mask, conditional_images,
                                                      conditional_embeddings, alpha))
        return self.decoder(acts, cond)


def init_inputs(cfg: CLIPSegConfig, batch: int = 1):
    """Example inputs that create every parameter (text, visual prompt and mixing)."""
    s = cfg.image_size
    return dict(images=jnp.zeros((batch, s, s, 3)), ids=jnp.zeros((batch, cfg.clip.text.context_length), jnp.int32),
                conditional_images=jnp.zeros((batch, cfg.clip.vision.image_size, cfg.clip.vision.image_size, 3)),
                alpha=jnp.ones((batch,)))


def clip_variables(variables: dict) -> dict:
    """The CLIP part of CLIPSeg variables, as a standalone CLIP's variables."""
    return {col: tree["clip"] for col, tree in variables.items() if "clip" in tree}
