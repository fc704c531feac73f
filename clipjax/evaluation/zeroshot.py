"""Zero-shot classification: class names through prompt templates -> text classifier;
images -> nearest class.

`zeroshot_classification` is the one evaluator: training's periodic evaluation calls it on the
sharded training state, `zeroshot_on_dataset` (evaluate.py --task zeroshot) on a split of a
dataset with a loaded model."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from clipjax.evaluation.datasets import held_out_labels, labelled_batches, split_size
from clipjax.evaluation.encode import labelled_features
from clipjax.evaluation.progress import progress_bar
from clipjax.evaluation.templates import zeroshot_prompts


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


def heldout_metrics(held_out: Sequence[int], logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 (with the full classifier) on the examples whose label is one of the classes held
    out of training (datasets.held_out_labels); {} when none is held out or present."""
    if not len(held_out):
        return {}
    held = np.isin(labels, list(held_out))
    if not held.any():
        return {}
    return {"heldout_top1": float(np.mean(logits[held].argmax(1) == labels[held])),
            "heldout_examples": int(held.sum())}


def zeroshot_classification(encode_pixels, encode_texts, batches, classnames: Sequence[str],
                            templates: Sequence[str], held_out: Sequence[int] = (),
                            classifier: Optional[np.ndarray] = None, progress=None):
    """-> (metrics, logits, labels) of the (pixels, labels) `batches`: classification_metrics
    plus heldout_metrics. The text classifier is built from `classnames` x `templates` unless
    `classifier` is given (one built before, e.g. cached)."""
    cls = text_classifier(encode_texts, classnames, templates) if classifier is None else classifier
    feats, labels = labelled_features(encode_pixels, batches, progress)
    logits = feats @ cls.T
    metrics = classification_metrics(logits, labels)
    metrics.update(heldout_metrics(held_out, logits, labels))
    return metrics, logits, labels


def classifier_cache_path(directory: str, model_id: str, classnames, templates) -> str:
    """Where the text classifier of this model, class names and templates is kept between runs."""
    key = hashlib.sha256(json.dumps([model_id, list(classnames), list(templates)]).encode()).hexdigest()[:16]
    return os.path.join(directory, f".zeroshot_classifier_{key}.npy")


def zeroshot_on_dataset(encoders, variables, builder, dataset: str, split: str, examples: int,
                        classnames_file: str = "", templates_file: str = "", cache_dir: Optional[str] = None,
                        model_id: str = "", progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task zeroshot: `split` of `builder` (its first `examples`, 0: all) with the
    dataset's class names and templates (templates.zeroshot_prompts; the files override them).
    With `cache_dir`, the text classifier is read from / written to it (keyed by `model_id`).
    `encoders`: encode.CLIPEncoders. -> (metrics, extra: classnames, templates, classifier_cached,
    confusion = (predictions, labels))."""
    classnames, templates = zeroshot_prompts(dataset, builder, classnames_file, templates_file)
    encode_pixels, encode_texts = encoders.bind(variables)
    cache = classifier_cache_path(cache_dir, model_id, classnames, templates) if cache_dir else None
    cached = bool(cache) and os.path.exists(cache)
    cls = np.load(cache) if cached else text_classifier(encode_texts, classnames, templates)  # once per run
    if cache and not cached:
        np.save(cache, cls)
    batches = labelled_batches(builder, split, encoders.batch, examples)
    with progress_bar(split_size(builder, split, examples), "zeroshot", progress) as bar:
        metrics, logits, labels = zeroshot_classification(
            encode_pixels, encode_texts, encoders.preprocessed(batches), classnames, templates,
            held_out_labels(builder), cls, bar.update)
    return metrics, dict(classnames=classnames, templates=templates, classifier_cached=cached,
                         confusion=(logits.argmax(1), labels))
