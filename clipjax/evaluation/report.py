"""What evaluate.py writes: the metrics table on stdout, the JSON of metrics and settings, and
the pictures / samples beside it (confusion matrix, segmentation overlays, caption samples)."""

from __future__ import annotations

import json

import numpy as np

from clipjax.evaluation.segmentation import overlay_png


def print_table(metrics: dict) -> None:
    """The scalar metrics, one per line (lists and per-class rows stay in the JSON)."""
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    width = max(len(k) for k, _ in rows) if rows else 0
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def write_json(path: str, metrics: dict, settings: dict) -> None:
    """Every metric at the top level, plus "settings"."""
    with open(path, "w") as f:  # a local path: evaluate.py uploads it when --output is remote
        json.dump({**metrics, "settings": settings}, f, indent=2)


def confusion_png(pred, labels, classnames, path: str) -> None:
    import matplotlib  # the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classnames)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (labels, pred), 1)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay_pngs(overlays, base: str) -> None:
    """`<base>_overlay_<k>.png` per (image, probs, phrase, true mask) of
    segmentation_of_examples: image, truth and prediction side by side."""
    for k, (image, probs, phrase, truth) in enumerate(overlays):
        overlay_png(image, probs, [phrase], f"{base}_overlay_{k}.png", truth=truth)


def write_samples(samples, path: str) -> None:
    """JSON lines, one per sample (captioning: tags, caption, references)."""
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
