"""Evaluation inside the training loop, on the sharded training state: a thin adapter that
reads its settings from the config and calls the evaluators evaluate.py uses
(zeroshot.zeroshot_classification, retrieval.image_text_retrieval).

The evaluator encodes a fixed set of held-out examples with the *sharded* parameters (no host
copy of the model): images and prompts are split over the batch axes of the training mesh,
each process supplies its own rows, and only the (small) embeddings are gathered.

What runs is chosen from the config (`config.eval`, falling back to the training data):
  - zero-shot classification when the dataset has class names (clipjax_shapes,
    clipjax_fashion_mnist, TFDS datasets with a `label` ClassLabel): top-1 / top-5, and for
    clipjax_shapes the top-1 on examples of attribute combinations held out of training;
  - image->text / text->image retrieval R@1 / R@5 otherwise (datasets with captions).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from clipjax import sharding as shd
from clipjax.data.catalog import builder_kwargs
from clipjax.evaluation.datasets import (
    classification_info, held_out_labels, iterate_captioned, iterate_labelled, tfds_builder)
from clipjax.evaluation.encode import CLIPEncoders
from clipjax.evaluation.retrieval import image_text_retrieval
from clipjax.evaluation.zeroshot import zeroshot_classification
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import make_text_tokenizer

log = logging.getLogger("clipjax.eval")

# Prompts for the periodic evaluator (evaluate.py has the full per-dataset ensembles).
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def eval_settings(config) -> dict:
    """dataset / split / examples / templates of the periodic evaluation."""
    e = dict(config.get("eval", None) or {})
    d = config.data
    name = e.get("dataset") or d.name
    return dict(
        dataset=name,
        data_dir=e.get("data_dir", d.get("data_dir", "")) or None,
        builder_kwargs=dict(e.get("builder_kwargs", None) or {}) or builder_kwargs(d, name),
        split=e.get("split") or "validation",
        examples=int(config.get("eval_examples", 1024)),
        templates=tuple(e.get("templates") or DEFAULT_TEMPLATES),
    )


def load_eval_examples(settings: dict):
    """-> (uint8 images, labels or None, classnames or None, captions or None, held-out labels)
    for the first `examples` records of the split, or None when there is nothing to
    evaluate."""

    name, split, n = settings["dataset"], settings["split"], settings["examples"]
    if name == "collection":
        return None
    builder = tfds_builder(name, settings["data_dir"], settings["builder_kwargs"])
    if split not in builder.info.splits:
        log.warning("periodic evaluation: %s has no %r split; skipped", name, split)
        return None
    try:
        classnames = classification_info(builder)
    except ValueError:  # no ClassLabel: evaluate retrieval on the captions
        classnames = None
    if classnames is not None:
        held_out = held_out_labels(builder)
        batches = list(iterate_labelled(builder, split, n, n))
        return ([i for imgs, _ in batches for i in imgs], np.concatenate([lab for _, lab in batches]) if batches
                else np.zeros(0, np.int64), classnames, None, held_out)
    batches = list(iterate_captioned(builder, split, n, n))
    return [i for imgs, _ in batches for i in imgs], None, None, [c for _, caps in batches for c in caps], []


def make_periodic_evaluator(config, cfg, mesh=None, rules=None):
    """`evaluate(variables) -> metrics` for the training loop (None when eval_every is 0 or the
    dataset has nothing to evaluate). `variables` may be sharded on `mesh`."""
    if not config.get("eval_every"):
        return None
    if mesh is None:
        mesh = shd.make_mesh({"data": -1}, jax.devices()[:1])
    rules = rules if rules is not None else shd.DEFAULT_RULES
    settings = eval_settings(config)
    loaded = load_eval_examples(settings)
    if loaded is None:
        log.info("periodic evaluation: nothing to evaluate for %s", settings["dataset"])
        return None
    images, labels, classnames, captions, held_out = loaded
    if not images:
        raise ValueError(f"periodic evaluation: split {settings['split']!r} of {settings['dataset']} is empty")
    pixels = preprocess_images(images, cfg.vision.image_size)  # the inference preprocessing, once
    encoders = CLIPEncoders(cfg, mesh, rules, int(config.batch_size),
                            make_text_tokenizer(cfg.text, config.data.get("tokenizer", None)))

    def evaluate(variables) -> dict:
        encode_pixels, encode_texts = encoders.bind(variables)
        if classnames is not None:
            metrics, _, _ = zeroshot_classification(encode_pixels, encode_texts, [(pixels, labels)], classnames,
                                                    settings["templates"], held_out)
            # the training log keeps top-k and held-out top-1 (evaluate.py adds the per-class recall)
            return {f"zeroshot_{k}": v for k, v in metrics.items() if k != "mean_per_class_recall"}
        metrics, _, _ = image_text_retrieval(encode_pixels, encode_texts, [(pixels, captions)], ks=(1, 5))
        return metrics

    evaluate.settings = settings
    return evaluate
