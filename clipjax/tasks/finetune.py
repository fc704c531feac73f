"""Fine-tuned classification (config.task = "finetune"): a pretrained CLIP's image tower
trained end to end with cross-entropy on labelled images, under a linear head initialised
from the zero-shot classifier (FLYP / WiSE-FT's recipe: the normalised, prompt-ensembled
class-name text embeddings times CLIP's logit scale), so step 0 is exactly zero-shot.

The model is the whole CLIP plus the head (`params["classifier"]`, (embed, classes)): the text
tower and logit scale are frozen (config.optimizer.freeze gets them), so a fine-tuned
checkpoint is still a full CLIP checkpoint (`clipjax.load` reads it; its text tower is the
pretrained one) with the trained head beside it, and WiSE-FT (clipjax.apps.wise_ft)
interpolates it with the zero-shot CLIP parameter by parameter, head included.

config: init_from (the CLIP, any format clipjax.load reads), data (a TFDS dataset with `image`
and a `label` ClassLabel: name, split, seed, shuffle_buffer, crop_scale, data_dir), eval
(split, templates are the dataset's own zero-shot prompts), eval_examples.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipjax import sharding as shd
from clipjax.convert.formats import read_any
from clipjax.data import augment
from clipjax.data.catalog import dataset_from_config
from clipjax.data.pipeline import GlobalBatches, normalize_on_device
from clipjax.evaluation.datasets import classification_info, iterate_labelled
from clipjax.evaluation.encode import sharded_encoder
from clipjax.evaluation.templates import zeroshot_prompts
from clipjax.evaluation.zeroshot import classification_metrics, text_classifier
from clipjax.models.clip import CLIP
from clipjax.preprocess import preprocess_images
from clipjax.tasks.base import Task
from clipjax.tasks.pretrained import clip_architecture, load_pretrained_parts
from clipjax.tokenizer import make_text_tokenizer

log = logging.getLogger("clipjax.train")

FROZEN = ("^text/", "^logit_scale", "^logit_bias")  # only the image tower and the head learn
HEAD = "classifier"


class CLIPClassifier(CLIP):
    """CLIP with a bias-free linear head on its normalised image embedding: `__call__(images)`
    -> class logits. Initialising also creates the text tower (a fine-tuned checkpoint keeps
    every CLIP parameter, so it loads as a CLIP)."""

    num_classes: int = 10

    def setup(self):
        super().setup()
        self.head = self.param(HEAD, jax.nn.initializers.zeros, (self.cfg.embed_dim, self.num_classes), jnp.float32)

    def __call__(self, images, train: bool = False):
        if self.is_initializing():  # create the text tower's parameters too
            self.encode_text(jnp.zeros((1, self.cfg.text.context_length), jnp.int32))
        return self.encode_image(images, train=train, normalize=True) @ self.head


def zeroshot_head(model: CLIP, variables, classnames, templates, tokenize) -> np.ndarray:
    """(embed, classes): the zero-shot classifier of `variables` (evaluation.zeroshot's
    prompt ensemble) times exp(logit_scale): the head's start, and WiSE-FT's zero-shot end."""
    encode = jax.jit(lambda v, ids: model.apply(v, ids, method=CLIP.encode_text, normalize=True))
    cls = text_classifier(lambda texts: np.asarray(encode(variables, tokenize(list(texts)))), classnames, templates)
    scale = float(np.exp(np.asarray(jax.device_get(variables["params"]["logit_scale"]), np.float32)))
    return (cls.T * scale).astype(np.float32)


class LabelledTrainData(GlobalBatches):
    """Global (float32 CLIP-normalised images, int32 labels) batches of a labelled TFDS split,
    with the random resized crop of CLIP training (config.data.crop_scale)."""

    def __init__(self, data_config, batch_size: int, image_size: int, mesh, rules, position: int = 0):
        import tensorflow as tf
        import tensorflow_datasets as tfds

        super().__init__(batch_size, position, [shd.batch_sharding(mesh, 4, rules), shd.batch_sharding(mesh, 1, rules)])
        d = data_config
        builder = dataset_from_config(d)
        classification_info(builder)  # a clear error when there is no `label` to learn
        decoders = tfds.decode.PartialDecoding({"image": True, "label": True},
                                               decoders={"image": tfds.decode.SkipDecoding()})
        ds = builder.as_dataset(split=d.get("split", None) or "train", shuffle_files=False, decoders=decoders)
        seed, scale = int(d.get("seed", 0)), tuple(d.get("crop_scale", None) or (0.9, 1.0))

        def prepare(i, ex):
            image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
            image = augment.train_crop_resize(image, augment.example_seed(seed, i, 0), image_size, scale=scale)
            return image, tf.cast(ex["label"], tf.int32)

        self._it = iter(self.local_stream(ds, d, prepare))
        self._normalize = normalize_on_device(self.shardings[0])

    def __next__(self):
        images, labels = next(self._it)
        pixels, labels = self.global_arrays([images.numpy(), labels.numpy()])
        self.position += self.batch_size
        return self._normalize(pixels), labels


def batch_spec(image_size: int, b: int) -> tuple:
    """LabelledTrainData's batch: images, labels."""
    return (((b, image_size, image_size, 3), jnp.float32), ((b,), jnp.int32))


def config_problems(config) -> list[str]:
    if not config.get("init_from"):
        return ["task finetune needs config.init_from: the CLIP whose image tower is fine-tuned"]
    return []


def make_loss_fn(model: CLIPClassifier):
    def loss_fn(params, other, images, labels, rng):
        mutable = ["batch_stats"] if "batch_stats" in other else False
        out = model.apply({"params": params, **other}, images, train=True, rngs={"dropout": rng}, mutable=mutable)
        logits, updates = out if mutable else (out, {})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean(), updates

    return loss_fn


def make_classification_evaluator(config, model, mesh, rules):
    """`evaluate(variables) -> {"val_top1", ...}`: the head's accuracy on the first
    eval_examples of config.eval.split (default "validation"), encoded with the sharded state."""
    if not int(config.get("eval_every", 0) or 0):
        return None
    builder = dataset_from_config(config.data)
    split = (config.get("eval", None) or {}).get("split") or "validation"
    if split not in builder.info.splits:
        log.warning("periodic evaluation: %s has no %r split; skipped", builder.info.name, split)
        return None
    n = int(config.get("eval_examples", 1024))
    batches = list(iterate_labelled(builder, split, n, n))
    pixels = preprocess_images([i for imgs, _ in batches for i in imgs], model.cfg.vision.image_size)
    labels = np.concatenate([lab for _, lab in batches])
    batch = max(8, min(256, int(config.batch_size)))
    batch = (batch + mesh.devices.size - 1) // mesh.devices.size * mesh.devices.size
    logits_of = sharded_encoder(lambda v, x: model.apply(v, x), mesh, rules, batch)

    def evaluate(variables):
        m = classification_metrics(logits_of(variables, pixels), labels)
        return {f"val_{k}": v for k, v in m.items()}

    return evaluate


def make_task(config, mesh, rules, workdir=None, abstract: bool = False) -> Task:
    init_from = config.get("init_from") or ""
    # the CLIP's own architecture; `abstract` (plan.py): its config only, no weights read
    cfg = clip_architecture(init_from, "init_from") if abstract else read_any(init_from)[0]
    builder = dataset_from_config(config.data)
    classnames, templates = zeroshot_prompts(config.data.name, builder)
    model = CLIPClassifier(cfg, num_classes=len(classnames))
    freeze = list(config.optimizer.get("freeze", []) or [])
    config.optimizer.freeze = freeze + [p for p in FROZEN if p not in freeze]  # the text tower stays CLIP's
    tokenize = make_text_tokenizer(cfg.text, config.data.get("tokenizer", None))
    size = cfg.vision.image_size

    def post_init(variables):
        variables = load_pretrained_parts(variables, init_from)
        head = zeroshot_head(CLIP(cfg), variables, classnames, templates, tokenize)
        params = dict(variables["params"])
        params[HEAD] = jax.device_put(head, params[HEAD].sharding)
        log.info("head initialised from the zero-shot classifier (%d classes x %d templates)", len(classnames),
                 len(templates))
        return {**variables, "params": params}

    return Task("finetune", model, cfg, (jnp.zeros((1, size, size, 3), jnp.float32),),
                jax.value_and_grad(make_loss_fn(model), has_aux=True),
                make_data=lambda position: LabelledTrainData(config.data, config.batch_size, size, mesh, rules, position),
                make_evaluator=lambda: make_classification_evaluator(config, model, mesh, rules),
                post_init=post_init, batch_spec=lambda b: batch_spec(size, b))
