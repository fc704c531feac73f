"""Segmentation metrics as the CLIPSeg paper reports them (Lüddecke & Ecker 2022; the
definitions follow its released `metrics.py`, FixedIntervalMetrics):

  - predictions are sigmoid probabilities, thresholded at the 49 values
    linspace(0, 1, 51)[1:-1] (a pixel is foreground when p > t);
  - true/false positives/negatives are summed over all pixels of all examples, per threshold;
  - IoU_FG(t) = tp / (1 + tp + fp + fn) (the +1 keeps empty cases finite); reported at the
    best threshold and at 0.5;
  - mIoU(t) = mean over prompt classes of each class's IoU_FG(t) (counts summed within the
    class); best threshold and 0.5;
  - binary IoU(t) = (IoU_FG + IoU_BG) / 2;
  - AP: precision tp / (1 + tp + fp) against recall tp / (1 + tp + fn) over the thresholds where
    something is predicted, de-duplicated, sorted by recall and integrated with Simpson's rule
    (the area from the lowest recall reached; 0 when all thresholds give one point, e.g. for
    hard 0/1 predictions — as the released code does).

`SegmentationMetrics.add(probs, masks, classes)` accumulates counts batch by batch (memory
independent of the dataset size); `value()` returns the dict.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

THRESHOLDS = np.linspace(0, 1, 51)[1:-1]


def threshold_counts(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, T, 4) int64 counts [tp, fp, fn, tn] per example and threshold.
    probs: (N, H, W) in [0, 1]; masks: (N, H, W) 0/1."""
    p = probs.reshape(len(probs), -1)
    g = masks.reshape(len(masks), -1).astype(bool)
    out = np.zeros((len(p), len(THRESHOLDS), 4), np.int64)
    for i, t in enumerate(THRESHOLDS):
        pred = p > t
        tp = np.sum(pred & g, axis=1)
        fp = np.sum(pred & ~g, axis=1)
        fn = np.sum(~pred & g, axis=1)
        tn = pred.shape[1] - tp - fp - fn
        out[:, i] = np.stack([tp, fp, fn, tn], axis=1)
    return out


def _iou(c: np.ndarray) -> np.ndarray:
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    return tp / (1.0 + tp + fp + fn)


def _simpson(y: np.ndarray, x: np.ndarray) -> float:
    from scipy.integrate import simpson

    return float(simpson(y, x=x))


class SegmentationMetrics:
    def __init__(self):
        self.total = np.zeros((len(THRESHOLDS), 4), np.int64)
        self.by_class: dict = defaultdict(lambda: np.zeros((len(THRESHOLDS), 4), np.int64))
        self.count = 0

    def add(self, probs: np.ndarray, masks: np.ndarray, classes: Optional[Sequence] = None) -> None:
        c = threshold_counts(np.asarray(probs, np.float32), np.asarray(masks))
        self.total += c.sum(0)
        classes = [None] * len(c) if classes is None else list(classes)
        for ci, cls in zip(c, classes):
            self.by_class[cls] += ci
        self.count += len(c)

    def value(self) -> dict:
        if not self.count:
            raise ValueError("no examples were added")
        t = self.total
        fg = _iou(t)
        bg = t[:, 3] / (1.0 + t[:, 3] + t[:, 2] + t[:, 1])
        binary = 0.5 * (fg + bg)
        i05 = int(np.argmin(np.abs(THRESHOLDS - 0.5)))
        out = {"iou_fg": float(fg.max()), "iou_fg_threshold": float(THRESHOLDS[fg.argmax()]),
               "iou_fg@0.5": float(fg[i05]), "binary_iou": float(binary.max()), "binary_iou@0.5": float(binary[i05])}
        if set(self.by_class) != {None}:
            per_class = np.stack([_iou(v) for v in self.by_class.values()])  # (C, T)
            miou = per_class.mean(0)
            out.update({"miou": float(miou.max()), "miou_threshold": float(THRESHOLDS[miou.argmax()]),
                        "miou@0.5": float(miou[i05]), "num_classes": len(self.by_class)})
        made = (t[:, 0] + t[:, 1]) > 0
        if made.any():
            prec = t[made, 0] / (1.0 + t[made, 0] + t[made, 1])
            rec = t[made, 0] / (1.0 + t[made, 0] + t[made, 2])
            pairs = sorted(set(zip(rec.tolist(), prec.tolist())))
            r, p = (np.asarray(v) for v in zip(*pairs))
            out["ap"] = _simpson(p, r) if len(r) > 1 else 0.0
        else:
            out["ap"] = 0.0
        out["examples"] = self.count
        return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) 0/1 masks of square images -> (N, size, size) 0/1 (nearest): for square
    inputs clipjax.preprocess's short-side resize + centre crop is a plain resize."""
    from PIL import Image

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
        import jax

        from clipjax.evaluation.encode import global_batch, sharded_encoder
        from clipjax.models.clipseg import CLIPSeg

        model = CLIPSeg(cfg)
        self.cfg, self.ev = cfg, examples
        self.batch = global_batch(batch, mesh)
        self._run = sharded_encoder(lambda v, x, t: jax.nn.sigmoid(model.apply(v, x, t)), mesh, rules, self.batch)
        self.masks = resize_masks(examples["masks"], cfg.image_size)
        self.held = np.isin(examples["classes"], list(heldout_classes))

    def __len__(self) -> int:
        return len(self.ev["phrases"])

    def __call__(self, variables, on_batch=None):
        from clipjax.preprocess import preprocess_images
        from clipjax.tokenizer import tokenize

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


def overlay_png(image: np.ndarray, probs: np.ndarray, labels, path: str, threshold: float = 0.5,
                truth: np.ndarray | None = None) -> None:
    """The image, then per prompt its predicted mask (p > threshold) over the image, titled
    with the prompt; with `truth` (H, W), the true mask is drawn first. image (H, W, 3) uint8;
    probs (K, H, W) in [0, 1]."""
    import matplotlib

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
