"""CLIPSeg at inference: `LoadedCLIPSeg` (what clipjax.load returns for a CLIPSeg checkpoint)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.clipseg import CLIPSeg
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import tokenize


class LoadedCLIPSeg:
    """A CLIPSeg model ready for inference: `segment(images, prompts)` -> mask logits
    (B, H, W) at the model's input resolution, as transformers returns them."""

    def __init__(self, cfg, variables: dict):
        self.cfg, self.variables = cfg, variables
        model = CLIPSeg(cfg)
        self._seg = jax.jit(lambda v, x, c: model.apply(v, x, conditional_embeddings=c))
        self._txt = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_text))
        self._img = jax.jit(functools.partial(model.apply, method=CLIPSeg.encode_image))

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def conditional_embeddings(self, prompts) -> np.ndarray:
        """One vector per prompt: a string (text prompt) or an image (visual prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = []
        for p in prompts:
            if isinstance(p, str):
                ids = tokenize([p], context_length=self.cfg.clip.text.context_length)
                out.append(np.asarray(self._txt(self.variables, jnp.asarray(ids)))[0])
            else:
                x = preprocess_images([p], self.cfg.clip.vision.image_size)
                out.append(np.asarray(self._img(self.variables, jnp.asarray(x)))[0])
        return np.stack(out)

    def segment(self, images, prompts, preprocessed: bool = False) -> np.ndarray:
        """images: PIL / paths / arrays (or preprocessed (B, S, S, 3)); prompts: strings or
        images, one per image, or several prompts for a single image."""
        x = np.asarray(images, np.float32) if preprocessed else preprocess_images(images, self.image_size)
        cond = self.conditional_embeddings(prompts)
        if len(x) == 1 and len(cond) > 1:
            x = np.repeat(x, len(cond), axis=0)
        if len(x) != len(cond):
            raise ValueError(f"{len(x)} images but {len(cond)} prompts")
        return np.asarray(self._seg(self.variables, jnp.asarray(x), jnp.asarray(cond)))
