"""Image <-> text retrieval recall@k with several captions per image (CLIP_benchmark's
definition: an image->text query is a hit when any of the image's captions ranks in the top k;
a text->image query when its image does)."""

from __future__ import annotations

import numpy as np


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray, text_to_image: np.ndarray,
                      ks=(1, 5, 10)) -> dict:
    """Features L2-normalised; text_to_image[j] = index of the image text j describes."""
    sim = np.asarray(image_features, np.float32) @ np.asarray(text_features, np.float32).T
    text_to_image = np.asarray(text_to_image)
    out = {}
    i2t = np.argsort(-sim, axis=1, kind="stable")
    t2i = np.argsort(-sim.T, axis=1, kind="stable")
    for k in ks:
        hit = text_to_image[i2t[:, :k]] == np.arange(len(sim))[:, None]
        out[f"image_to_text_R@{k}"] = float(np.mean(hit.any(axis=1)))
        out[f"text_to_image_R@{k}"] = float(np.mean((t2i[:, :k] == text_to_image[:, None]).any(axis=1)))
    return out
