"""Zero-shot classification: class names through prompt templates -> text classifier;
images -> nearest class."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def text_classifier(encode_texts: Callable[[list], np.ndarray], classnames: Sequence[str],
                    templates: Sequence[str]) -> np.ndarray:
    """(num_classes, embed): per class, the normalised mean of its prompts' normalised
    embeddings. `encode_texts(list of str)` returns normalised embeddings."""
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = np.asarray(encode_texts(prompts), np.float32).reshape(len(classnames), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    order = np.argsort(-logits, axis=1)
    out = {}
    for k in ks:
        k = min(k, logits.shape[1])
        out[f"top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
    return out


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """top-1, top-5 and mean per-class recall (over the classes present in `labels`)."""
    out = topk_accuracy(logits, labels)
    pred = logits.argmax(1)
    recalls = [np.mean(pred[labels == c] == c) for c in range(logits.shape[1]) if np.any(labels == c)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out


def heldout_metrics(classnames, held_out_classnames, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 (with the full classifier) on the examples whose class is one held out of training
    (clipjax_shapes publishes its `held_out_classnames` in its metadata); {} when the dataset
    holds none out or none is present."""
    if not held_out_classnames:
        return {}
    held = np.isin(labels, [list(classnames).index(c) for c in held_out_classnames])
    if not held.any():
        return {}
    return {"heldout_top1": float(np.mean(logits[held].argmax(1) == labels[held])),
            "heldout_examples": int(held.sum())}
