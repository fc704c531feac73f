"""Localisation without boxes: a heatmap of where a text matches an image, and its peak.

Two sources of heatmap:

* a CLIP ViT, MaskCLIP-style (Zhou et al. 2022): every patch token of the last block is run
  through that block with the query-key mixing removed (value and output projections, then the
  block's residual and MLP), ln_post and the image projection
  (`clipjax.models.vit.maskclip_patch_embeds`); the heatmap is each patch's cosine with the
  text embedding, on the (H/p, W/p) patch grid;
* a CLIPSeg checkpoint: its mask probabilities (sigmoid of the logits).

Both are brought to the image's own H x W with PyTorch's bilinear resize (half-pixel centres;
`clipjax.inference.clipseg.resize_logits`) and the peak is the argmax there. The CLIP sees the
whole image resized to its input size (no crop, unlike zero-shot preprocessing), so every pixel
of the image has a heatmap value. MaskCLIP's refinements (key smoothing, prompt denoising) and
MaskCLIP+ are not implemented.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.inference.clipseg import resize_logits
from clipjax.preprocess import CLIP_MEAN, CLIP_STD, resize_images, to_rgb


@dataclass
class Heatmap:
    """scores (H, W) at the image's size; peak (y, x) in pixels; method "maskclip" | "clipseg"."""

    text: str
    scores: np.ndarray
    peak: tuple[int, int]
    method: str

    @property
    def peak_score(self) -> float:
        return float(self.scores[self.peak])

    def as_json(self) -> dict:
        s = self.scores
        return dict(text=self.text, method=self.method, peak=dict(x=int(self.peak[1]), y=int(self.peak[0])),
                    peak_score=self.peak_score, min_score=float(s.min()), max_score=float(s.max()),
                    score=("cosine similarity" if self.method == "maskclip" else "mask probability"))


def peak_of(scores: np.ndarray) -> tuple[int, int]:
    """(y, x) of the largest value of a (H, W) map (the first in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(y), int(x)


def pointing_hit(scores: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: does the heatmap's peak fall inside the object's mask?"""
    return bool(np.asarray(mask, bool)[peak_of(scores)])


def is_vit_clip(model) -> bool:
    return hasattr(model, "encode_text") and not hasattr(model, "segment") and model.cfg.vision.kind == "vit"


@functools.lru_cache(maxsize=8)
def _dense_fn(model):
    """jit of the vision tower's dense (MaskCLIP) output for one flax CLIP module."""
    return jax.jit(lambda v, x: model.apply(v, x, method=lambda m, im: m.visual(im, dense_embeds=True)["dense_embeds"]))


def clip_pixels(clip, images) -> np.ndarray:
    """Whole images resized to the CLIP's input size (bicubic, CLIP mean/std), no crop."""
    s = clip.image_size
    return resize_images(images, s, s, "bicubic", CLIP_MEAN, CLIP_STD)


def patch_embeds(clip, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(B, gh, gw, embed_dim) L2-normalised MaskCLIP patch embeddings of preprocessed pixels."""
    if not is_vit_clip(clip):
        raise ValueError("MaskCLIP heatmaps need a CLIP with a ViT image tower")
    fn = _dense_fn(clip.model)
    out = np.concatenate([np.asarray(fn(clip.variables, jnp.asarray(pixels[i:i + batch_size])))
                          for i in range(0, len(pixels), batch_size)])
    g = int(round(np.sqrt(out.shape[1])))  # square inputs: a g x g patch grid
    out = out.reshape(len(out), g, g, -1)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def maskclip_grid(dense: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Cosine of each patch (gh, gw, D, normalised) with each text (K, D, normalised): (K, gh, gw)."""
    return np.einsum("hwd,kd->khw", dense, text_embeds)


def maskclip_heatmaps(clip, image, texts: list[str]) -> list[Heatmap]:
    rgb = to_rgb(image)
    dense = patch_embeds(clip, clip_pixels(clip, [rgb]))[0]
    grids = maskclip_grid(dense, clip.encode_text(list(texts)))
    return [_heatmap(t, resize_logits(g, rgb.height, rgb.width), "maskclip") for t, g in zip(texts, grids)]


def clipseg_heatmaps(seg, image, texts: list[str]) -> list[Heatmap]:
    rgb = to_rgb(image)
    logits = np.asarray(seg.segment([rgb], list(texts)))  # (K, H, W) at the image's size
    probs = 1.0 / (1.0 + np.exp(-logits))
    return [_heatmap(t, p, "clipseg") for t, p in zip(texts, probs)]


def heatmaps(model, image, texts: list[str]) -> list[Heatmap]:
    """One heatmap per text from a loaded CLIP (ViT) or CLIPSeg."""
    if hasattr(model, "segment"):
        return clipseg_heatmaps(model, image, texts)
    if is_vit_clip(model):
        return maskclip_heatmaps(model, image, texts)
    raise ValueError("localisation needs a CLIP with a ViT image tower or a CLIPSeg checkpoint, "
                     f"not {_describe(model)}")


def _describe(model) -> str:
    vision = getattr(getattr(model, "cfg", None), "vision", None)
    return f"a CLIP with a {vision.kind} image tower" if vision is not None else type(model).__name__


def _heatmap(text, scores, method) -> Heatmap:
    scores = np.asarray(scores, np.float32)
    return Heatmap(text, scores, peak_of(scores), method)


def overlay_png(image: np.ndarray, maps: list[Heatmap], labels: list[str], path: str) -> None:
    """The image, then each heatmap over it (its own colour range) with its peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3.4))
    axes = np.atleast_1d(axes)
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for ax, m, label in zip(axes[1:], maps, labels):
        ax.imshow(image)
        ax.imshow(m.scores, cmap="jet", alpha=0.5)
        ax.plot([m.peak[1]], [m.peak[0]], marker="+", color="white", markersize=14, mew=2.5)
        ax.plot([m.peak[1]], [m.peak[0]], marker="+", color="black", markersize=10, mew=1.2)
        ax.set_title(label if len(label) < 44 else label[:41] + "...", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
