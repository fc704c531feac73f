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
