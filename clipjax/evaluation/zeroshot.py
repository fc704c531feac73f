"""Zero-shot classification: class names through prompt templates -> text classifier;
images -> nearest class."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.clip import CLIP


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


def make_periodic_evaluator(config, cfg):
    """Zero-shot top-1 on held-out synthetic shapes (a seed never used for training)."""
    if not config.get("eval_every"):
        return None
    from clipjax.data import synthetic
    from clipjax.data.pipeline import normalize_uint8
    from clipjax.tokenizer import tokenize

    imgs, labels, _ = synthetic.draw_batch(config.data.seed + 10_000, 0, config.eval_examples, cfg.vision.image_size)
    images = normalize_uint8(imgs)
    model = CLIP(cfg)
    encode = jax.jit(functools.partial(model.apply, method=CLIP.encode_image, normalize=True))
    encode_ids = jax.jit(functools.partial(model.apply, method=CLIP.encode_text, normalize=True))  # compiled once

    def evaluate(variables) -> dict:
        variables = jax.device_get(variables)
        def encode_texts(texts):
            return encode_ids(variables, tokenize(texts, context_length=cfg.text.context_length))

        cls = text_classifier(encode_texts, synthetic.CLASSNAMES, ["a photo of a {}"])
        emb = np.concatenate([np.asarray(encode(variables, jnp.asarray(images[i:i + 256])))
                              for i in range(0, len(images), 256)])
        acc = topk_accuracy(emb @ cls.T, labels)
        return {f"zeroshot_{k}": v for k, v in acc.items()}

    return evaluate
