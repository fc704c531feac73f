"""Evaluation inside the training loop, on the sharded training state.

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

import functools
import logging

import jax
import numpy as np

from clipjax import sharding as shd
from clipjax.evaluation.encode import sharded_encoder
from clipjax.evaluation.retrieval import retrieval_metrics
from clipjax.evaluation.zeroshot import text_classifier, topk_accuracy
from clipjax.models.clip import CLIP
from clipjax.tokenizer import make_text_tokenizer, text_attention_mask

log = logging.getLogger("clipjax.eval")

# Prompts for the periodic evaluator (evaluate.py has the full per-dataset ensembles).
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def eval_settings(config) -> dict:
    """dataset / split / examples / templates of the periodic evaluation."""
    from clipjax.data.pipeline import builder_kwargs

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
    """-> (uint8 images list, labels or None, classnames or None, captions or None,
    held-out mask or None) for the first `examples` records of the split."""
    import tensorflow_datasets as tfds

    from clipjax.data.pipeline import prepare_once

    name = settings["dataset"]
    if name == "collection":
        return None
    builder = prepare_once(name, settings["data_dir"], settings["builder_kwargs"])
    split = settings["split"]
    if split not in builder.info.splits:
        log.warning("periodic evaluation: %s has no %r split; skipped", name, split)
        return None
    features = builder.info.features
    keys = [k for k in ("image", "label", "captions", "caption") if k in features]
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({k: True for k in keys}))
    images, labels, captions = [], [], []
    for ex in tfds.as_numpy(ds.take(settings["examples"])):
        images.append(ex["image"])
        if "label" in ex:
            labels.append(int(ex["label"]))
        cap = ex.get("captions", ex.get("caption"))
        if cap is not None:
            captions.append([c.decode("utf-8") for c in np.atleast_1d(cap)])
    has_label = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
    classnames = list(features["label"].names) if has_label else None
    heldout = None
    if name == "clipjax_shapes":
        from clipjax.data.shapes_dataset import CLASSNAMES, HELD_OUT_CLASSNAMES

        classnames = list(CLASSNAMES)
        held = {CLASSNAMES.index(c) for c in HELD_OUT_CLASSNAMES}
        heldout = np.array([lab in held for lab in labels])
    return (images, np.asarray(labels, np.int64) if has_label else None, classnames,
            captions or None, heldout)


def make_periodic_evaluator(config, cfg, mesh=None, rules=None):
    """`evaluate(variables) -> metrics` for the training loop (None when eval_every is 0 or the
    dataset has nothing to evaluate). `variables` may be sharded on `mesh`."""
    if not config.get("eval_every"):
        return None
    from clipjax.preprocess import preprocess_images

    if mesh is None:
        mesh = shd.make_mesh({"data": -1}, jax.devices()[:1])
    rules = rules if rules is not None else shd.DEFAULT_RULES
    settings = eval_settings(config)
    loaded = load_eval_examples(settings)
    if loaded is None:
        log.info("periodic evaluation: nothing to evaluate for %s", settings["dataset"])
        return None
    images, labels, classnames, captions, heldout = loaded
    if not images:
        raise ValueError(f"periodic evaluation: split {settings['split']!r} of {settings['dataset']} is empty")
    pixels = preprocess_images(images, cfg.vision.image_size)  # the inference preprocessing
    batch = int(config.batch_size)
    model = CLIP(cfg)
    tokenize = make_text_tokenizer(cfg.text, config.data.get("tokenizer", None))
    encode_image = sharded_encoder(
        functools.partial(model.apply, method=CLIP.encode_image, normalize=True), mesh, rules, batch)
    encode_ids = sharded_encoder(
        lambda v, ids: model.apply(v, ids, attention_mask=text_attention_mask(cfg.text, ids),
                                   method=CLIP.encode_text, normalize=True), mesh, rules, batch)

    def evaluate(variables) -> dict:
        img = encode_image(variables, pixels)
        if classnames is not None and labels is not None:
            cls = text_classifier(lambda t: encode_ids(variables, tokenize(t)), classnames, settings["templates"])
            logits = img @ cls.T
            acc = {f"zeroshot_{k}": v for k, v in topk_accuracy(logits, labels).items()}
            if heldout is not None and heldout.any():
                acc["zeroshot_heldout_top1"] = float(np.mean(logits[heldout].argmax(1) == labels[heldout]))
            return acc
        texts = [c for caps in captions for c in caps]
        owner = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
        txt = encode_ids(variables, tokenize(texts))
        return retrieval_metrics(img, txt, owner, ks=(1, 5))

    evaluate.settings = settings
    return evaluate
