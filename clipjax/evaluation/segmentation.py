"""Referring-expression segmentation of a CLIPSeg: every object of a split segmented from its
phrase, scored as the CLIPSeg paper does (segmentation_metrics).

`ReferringSegmentation` is the one evaluator: training's periodic evaluation
(clipjax.tasks.clipseg) calls it on the sharded training state, `segmentation_of_examples`
(evaluate.py --task segmentation) with a loaded model; `overlay_png` draws predictions. No
input pipeline is imported here (segment.py draws with overlay_png at inference): the objects
come from clipjax.data.segmentation.eval_examples (datasets.segmentation_examples).
"""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from clipjax.evaluation.encode import global_batch, sharded_encoder
from clipjax.evaluation.progress import progress_bar
from clipjax.evaluation.segmentation_metrics import SegmentationMetrics
from clipjax.models.clipseg import CLIPSeg
from clipjax.preprocess import CLIP_MEAN, CLIP_STD, preprocess_images
from clipjax.tokenizer import tokenize


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) 0/1 masks of square images -> (N, size, size) 0/1 (nearest): for square
    inputs clipjax.preprocess's short-side resize + centre crop is a plain resize."""
    if masks.shape[1:] == (size, size):
        return masks.astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
                     for m in masks]).astype(np.uint8)


class ReferringSegmentation:
    """Segment every object of `eval_examples(...)` output from its phrase and score it.

    Compiled once (a jitted CLIPSeg sharded over `mesh`); `__call__(variables)` ->
    (metrics of all objects, metrics of the objects whose class is in `heldout_classes`, or
    None). `on_batch(start, pixels, probs)` sees every batch (e.g. to draw overlays)."""

    def __init__(self, cfg, examples: dict, mesh, rules, batch: int, heldout_classes=()):
        model = CLIPSeg(cfg)
        self.cfg, self.ev = cfg, examples
        self.batch = global_batch(batch, mesh)
        self._run = sharded_encoder(lambda v, x, t: jax.nn.sigmoid(model.apply(v, x, t)), mesh, rules, self.batch)
        self.masks = resize_masks(examples["masks"], cfg.image_size)
        self.held = np.isin(examples["classes"], list(heldout_classes))

    def __len__(self) -> int:
        return len(self.ev["phrases"])

    def __call__(self, variables, on_batch=None):
        ev, cfg = self.ev, self.cfg
        overall, heldout = SegmentationMetrics(), SegmentationMetrics()
        for i in range(0, len(self), self.batch):
            sl = slice(i, i + self.batch)
            pixels = preprocess_images(list(ev["images"][sl]), cfg.image_size)
            ids = tokenize(ev["phrases"][sl], context_length=cfg.clip.text.context_length)
            probs = self._run(variables, pixels, ids)
            overall.add(probs, self.masks[sl], ev["classes"][sl])
            held = self.held[sl]
            if held.any():
                heldout.add(probs[held], self.masks[sl][held], ev["classes"][sl][held])
            if on_batch is not None:
                on_batch(i, pixels, probs)
        return overall.value(), (heldout.value() if heldout.count else None)


def segmentation_of_examples(cfg, variables, mesh, rules, examples: dict, heldout_classes, batch: int,
                             overlays: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task segmentation: every object of `examples` (datasets.segmentation_examples),
    also scored apart on those of `heldout_classes` (heldout_*). -> (metrics, extra: objects,
    devices, overlays = the first `overlays` (image uint8, probs (1, H, W), phrase, true mask))."""
    score = ReferringSegmentation(cfg, examples, mesh, rules, batch, heldout_classes)
    drawn = []

    def on_batch(start, pixels, probs):
        bar.update(len(pixels))
        if start == 0:
            shown = np.clip(pixels * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN), 0, 1)  # undo the normalisation
            drawn.extend(((shown[k] * 255).round().astype(np.uint8), probs[k:k + 1], examples["phrases"][k],
                          score.masks[k]) for k in range(min(overlays, len(pixels))))

    with progress_bar(len(score), "segmentation", progress, unit="obj") as bar:
        metrics, heldout = score(variables, on_batch)
    if heldout:
        metrics.update({f"heldout_{k}": heldout[k] for k in ("miou", "iou_fg", "ap", "examples")})
    return metrics, dict(objects=len(score), devices=int(mesh.devices.size), overlays=drawn)


def overlay_png(image: np.ndarray, probs: np.ndarray, labels, path: str, threshold: float = 0.5,
                truth: np.ndarray | None = None) -> None:
    """The image, then per prompt its predicted mask (p > threshold) over the image, titled
    with the prompt; with `truth` (H, W), the true mask is drawn first. image (H, W, 3) uint8;
    probs (K, H, W) in [0, 1]."""
    import matplotlib  # the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image", None)] + ([("truth", truth.astype(np.float32))] if truth is not None else [])
    panels += list(zip(labels, probs))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    axes = np.atleast_1d(axes)
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for ax, (label, p) in zip(axes[1:], panels[1:]):
        ax.imshow(image)
        ax.imshow(np.ma.masked_where(p <= threshold, p), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(label if len(label) < 40 else label[:37] + "...", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
