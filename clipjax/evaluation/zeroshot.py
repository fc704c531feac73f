"""Zero-shot classification: class names through prompt templates -> text classifier;
images -> nearest class."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clipjax.models.clip import CLIP, l2_normalize


def text_classifier(model: CLIP, variables, classnames: Sequence[str], templates: Sequence[str],
                    context_length: int) -> np.ndarray:
    """(num_classes, embed) normalised mean of each class's normalised prompt embeddings."""
    from clipjax.tokenizer import tokenize

    prompts = [t.format(c) for c in classnames for t in templates]
    ids = tokenize(prompts, context_length=context_length)
    emb = jax.jit(functools.partial(model.apply, method=CLIP.encode_text, normalize=True))(variables, ids)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return np.asarray(l2_normalize(emb))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    order = np.argsort(-logits, axis=1)
    out = {}
    for k in ks:
        k = min(k, logits.shape[1])
        out[f"top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
    return out


def make_periodic_evaluator(config, cfg):
    """Zero-shot top-1 on held-out synthetic shapes (a seed never used for training)."""
    if not config.get("eval_every"):
        return None
    from clipjax.data import synthetic
    from clipjax.data.pipeline import normalize_uint8

    imgs, labels, _ = synthetic.draw_batch(config.data.seed + 10_000, 0, config.eval_examples, cfg.vision.image_size)
    images = normalize_uint8(imgs)
    model = CLIP(cfg)
    encode = jax.jit(functools.partial(model.apply, method=CLIP.encode_image, normalize=True))

    def evaluate(variables) -> dict:
        variables = jax.device_get(variables)
        cls = text_classifier(model, variables, synthetic.CLASSNAMES, ["a photo of a {}"], cfg.text.context_length)
        emb = np.concatenate([np.asarray(encode(variables, jnp.asarray(images[i:i + 256])))
                              for i in range(0, len(images), 256)])
        acc = topk_accuracy(emb @ cls.T, labels)
        return {f"zeroshot_{k}": v for k, v in acc.items()}

    return evaluate
