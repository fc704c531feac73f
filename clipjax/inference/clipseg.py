"""CLIPSeg at inference: `LoadedCLIPSeg` (what clipjax.load returns for a CLIPSeg checkpoint).

An image is prepared as transformers' CLIPSegProcessor prepares it (its ViTImageProcessor, PIL
backend): the WHOLE image resized to cfg.image_size x cfg.image_size -- no crop, the aspect ratio
not kept -- with the PIL filter cfg.resample, x/255, (x - cfg.image_mean) / cfg.image_std. Those
settings live in the CLIPSegConfig, so a converted checkpoint keeps its directory's
preprocessor_config.json (clipjax.convert.hf_clipseg; the CIDAS checkpoints: 352 px, bilinear,
ImageNet mean/std). Visual prompts are prepared the same way (CLIPSegProcessor does so) and
run through CLIP at that size, its positions interpolated.

`segment` returns the logits at each input image's own size: the (S, S) logits resized to H x W
bilinearly with half-pixel centres, exactly `torch.nn.functional.interpolate(logits[:, None],
(H, W), mode="bilinear", align_corners=False)` (no antialiasing). `output_size="model"` gives
the (B, S, S) logits transformers' CLIPSegForImageSegmentation returns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.clipseg import CLIPSeg
from clipjax.preprocess import image_list, resize_images, to_rgb
from clipjax.tokenizer import tokenize


@functools.lru_cache(maxsize=64)
def torch_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix M with M @ x == F.interpolate(x, out, mode="bilinear", align_corners=False)
    along one axis: half-pixel centres, source positions below 0 clamped to 0, the last index
    clamped (PyTorch's upsample_bilinear2d, no antialiasing). Positions and weights in float32 as
    PyTorch's x86 CPU kernel computes them for float32 (scale = in/out, scale * (o + 0.5) - 0.5 in
    one fused multiply-add); in float64 the result moves by up to ~5e-5 of the logits' local
    step at photo sizes."""
    f = np.float32
    m = np.zeros((out_size, in_size), np.float64)
    scale = f(in_size) / f(out_size)
    for o in range(out_size):
        src = max(f(np.float64(scale) * np.float64(f(o) + f(0.5)) - 0.5), f(0))  # one rounding: the kernel's FMA
        i0 = min(int(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = min(max(src - f(i0), f(0)), f(1))
        m[o, i0] += float(f(1) - w1)
        m[o, i1] += float(w1)
    return m


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., h, w) -> (..., height, width) float32, as PyTorch's bilinear F.interpolate (above)."""
    logits = np.asarray(logits, np.float32)
    h, w = logits.shape[-2:]
    if (h, w) == (height, width):
        return logits
    mh, mw = torch_bilinear_matrix(h, height), torch_bilinear_matrix(w, width)
    # two matmuls: one einsum over all three operands runs as a naive 4-deep loop (70 s at photo size)
    return ((mh @ logits.astype(np.float64)) @ mw.T).astype(np.float32)


class LoadedCLIPSeg:
    """A CLIPSeg model ready for inference: `segment(images, prompts)` -> mask logits at each
    image's own size (see the module docstring for the preprocessing and the resize)."""

    def __init__(self, cfg, variables: dict):
        self.cfg, self.variables = cfg, variables
        model = CLIPSeg(cfg)
        self._seg = jax.jit(lambda v, x, c: model.apply(v, x, conditional_embeddings=c))
        self._txt = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_text))
        self._img = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_image))

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def preprocess(self, images) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """images (PIL / paths / arrays, one or a list) -> ((B, S, S, 3) float32 pixels, each
        image's (height, width))."""
        rgb = [to_rgb(im) for im in image_list(images)]
        s, c = self.image_size, self.cfg
        return resize_images(rgb, s, s, c.resample, c.image_mean, c.image_std), [(im.height, im.width) for im in rgb]

    def conditional_embeddings(self, prompts) -> np.ndarray:
        """One vector per prompt: a string (text prompt) or an image (visual prompt, prepared
        like the query images)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = []
        for p in prompts:
            if isinstance(p, str):
                ids = tokenize([p], context_length=self.cfg.clip.text.context_length)
                out.append(np.asarray(self._txt(self.variables, jnp.asarray(ids)))[0])
            else:
                x, _ = self.preprocess([p])
                out.append(np.asarray(self._img(self.variables, jnp.asarray(x)))[0])
        return np.stack(out)

    def segment(self, images, prompts, preprocessed: bool = False, output_size: str = "image"):
        """Mask logits (apply a sigmoid for probabilities).

        images: PIL / paths / arrays (or, with `preprocessed`, pixels (B, S, S, 3) as
        `preprocess` makes them); prompts: strings or images, one per image, or several prompts
        for a single image. output_size="image" (the default): each image's logits at its own
        H x W -- an array (B, H, W) when every image has the same size, else a list of (H_i, W_i)
        arrays; "model": (B, S, S) at the model's resolution, as transformers returns them
        (always so for preprocessed pixels, whose original size is unknown)."""
        if output_size not in ("image", "model"):
            raise ValueError(f"output_size must be 'image' or 'model', got {output_size!r}")
        if preprocessed:
            x, sizes = np.asarray(images, np.float32), None
        else:
            x, sizes = self.preprocess(images)
        cond = self.conditional_embeddings(prompts)
        if len(x) == 1 and len(cond) > 1:
            x = np.repeat(x, len(cond), axis=0)
            sizes = None if sizes is None else sizes * len(cond)
        if len(x) != len(cond):
            raise ValueError(f"{len(x)} images but {len(cond)} prompts")
        logits = np.asarray(self._seg(self.variables, jnp.asarray(x), jnp.asarray(cond)))
        if output_size == "model" or sizes is None:
            return logits
        masks = [resize_logits(lg, h, w) for lg, (h, w) in zip(logits, sizes)]
        return np.stack(masks) if len(set(sizes)) == 1 else masks
