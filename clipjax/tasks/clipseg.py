"""CLIPSeg as a training task (config.task = "clipseg"): a frozen pretrained CLIP
(config.init_from: any checkpoint clipjax.load reads) under a decoder trained with per-pixel
binary cross-entropy on referring-phrase masks (clipjax/data/segmentation.py: negatives, crops
keeping the target, text/visual prompt mixing). The CLIP parameters are frozen in the optimizer
(config.optimizer.freeze gets "^clip/") and receive no gradient (stop_gradient in the model);
the decoder is sharded like every other parameter.

config.clipseg: extract_layers, reduce_dim, decoder_heads, decoder_mlp_dim,
conditional_layer, complex_head, image_size. Periodic evaluation: mIoU / IoU_FG / AP
(clipjax/evaluation/segmentation.py) on the validation split's objects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from clipjax.convert.formats import read_any
from clipjax.data.catalog import dataset_from_config
from clipjax.data.segmentation import SegmentationTrainData, eval_examples
from clipjax.data.segmentation_adapter import adapter_from_config
from clipjax.evaluation.segmentation import ReferringSegmentation
from clipjax.models.clipseg import CLIPSeg, CLIPSegConfig, init_inputs
from clipjax.tasks.base import Task
from clipjax.tasks.pretrained import clip_architecture, load_subtree
from clipjax.tokenizer import make_text_tokenizer


def clipseg_config(config, abstract: bool = False):
    """`abstract` (plan.py): the CLIP's architecture only (clipjax.tasks.pretrained.clip_architecture)."""
    if abstract:
        clip_cfg = clip_architecture(config.get("init_from") or "", "init_from")
    elif not config.get("init_from"):
        raise ValueError("task clipseg needs config.init_from: the pretrained CLIP to segment with")
    else:
        clip_cfg, _ = read_any(config.init_from)
    c = dict(config.get("clipseg", None) or {})
    if "extract_layers" in c:
        c["extract_layers"] = tuple(int(i) for i in c["extract_layers"])
    cfg = CLIPSegConfig(clip=clip_cfg, **c)
    cfg.validate()
    return cfg


def make_task(config, mesh, rules, workdir=None, abstract: bool = False) -> Task:
    cfg = clipseg_config(config, abstract)
    model = CLIPSeg(cfg)
    freeze = list(config.optimizer.get("freeze", []) or [])
    if "^clip/" not in freeze:
        config.optimizer.freeze = freeze + ["^clip/"]
    ex = init_inputs(cfg)
    dummy = (ex["images"], ex["ids"], None, ex["conditional_images"], None, ex["alpha"])

    def loss_fn(params, other, images, ids, masks, prompts, alpha, rng):
        logits = model.apply({"params": params, **other}, images, ids, None, prompts, None, alpha)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, masks)), {}

    tokenize = make_text_tokenizer(cfg.clip.text)
    return Task(
        "clipseg", model, cfg, dummy, jax.value_and_grad(loss_fn, has_aux=True),
        make_data=lambda position: SegmentationTrainData(config.data, config.batch_size, cfg.image_size, tokenize, mesh,
                                                         rules, position),
        make_evaluator=lambda: make_segmentation_evaluator(config, cfg, mesh, rules),
        post_init=lambda variables: load_subtree(variables, config.init_from, "clip",
                                                 f"init_from {config.init_from}: its CLIP under the CLIPSeg model"),
        batch_spec=lambda b: batch_spec(cfg, b))


def batch_spec(cfg: CLIPSegConfig, b: int) -> tuple:
    """SegmentationTrainData's batch: images, phrase ids, masks, visual prompts, mixing alpha."""
    s = cfg.image_size
    return (((b, s, s, 3), jnp.float32), ((b, cfg.clip.text.context_length), jnp.int32), ((b, s, s), jnp.float32),
            ((b, s, s, 3), jnp.float32), ((b,), jnp.float32))


def make_segmentation_evaluator(config, cfg, mesh, rules):
    """seg_miou / seg_iou_fg / seg_ap on every object of the first eval_examples images of
    config.data.eval_split (default "validation"), scored by the evaluator evaluate.py --task
    segmentation uses (clipjax.evaluation.segmentation.ReferringSegmentation)."""
    if not config.get("eval_every"):
        return None
    d = config.data
    examples = eval_examples(dataset_from_config(d), d.get("eval_split", None) or "validation", int(config.get("eval_examples", 200)),
                             adapter_from_config(d))
    score = ReferringSegmentation(cfg, examples, mesh, rules, int(config.batch_size))

    def evaluate(variables) -> dict:
        v, _ = score(variables)
        return {f"seg_{k}": v[k] for k in ("miou", "iou_fg", "ap")}

    return evaluate
