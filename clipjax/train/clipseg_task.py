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
import numpy as np
import optax

from clipjax.train.tasks import Task


def clipseg_config(config):
    from clipjax.api import read_any
    from clipjax.models.clipseg import CLIPSegConfig

    if not config.get("init_from"):
        raise ValueError("task clipseg needs config.init_from: the pretrained CLIP to segment with")
    clip_cfg, _ = read_any(config.init_from)
    c = dict(config.get("clipseg", None) or {})
    if "extract_layers" in c:
        c["extract_layers"] = tuple(int(i) for i in c["extract_layers"])
    cfg = CLIPSegConfig(clip=clip_cfg, **c)
    cfg.validate()
    return cfg


def load_clip_into(variables, path: str):
    """Put the pretrained CLIP's variables under "clip", on the shardings already there."""
    from clipjax.api import read_any
    from clipjax.convert.common import CheckpointError, flatten_variables, unflatten_variables

    _, loaded = read_any(path)
    mine = flatten_variables({"clip": variables["params"]["clip"]})
    theirs = flatten_variables({"clip": loaded["params"]})
    if set(mine) != set(theirs) or any(np.shape(mine[k]) != np.shape(theirs[k]) for k in mine):
        raise CheckpointError(f"init_from {path}: its CLIP does not fit the CLIPSeg model")
    placed = {k: jax.device_put(np.asarray(theirs[k], mine[k].dtype), mine[k].sharding) for k in mine}
    params = dict(variables["params"])
    params["clip"] = unflatten_variables(placed)["clip"]
    return {**variables, "params": params}


def clipseg_task(config, mesh, rules) -> Task:
    from clipjax.data.segmentation import SegmentationTrainData
    from clipjax.models.clipseg import CLIPSeg, init_inputs
    from clipjax.tokenizer import make_text_tokenizer

    cfg = clipseg_config(config)
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
        make_data=lambda position: SegmentationTrainData(config, cfg.image_size, tokenize, mesh, rules, position),
        make_evaluator=lambda: make_segmentation_evaluator(config, cfg, mesh, rules),
        post_init=lambda variables: load_clip_into(variables, config.init_from))


def make_segmentation_evaluator(config, cfg, mesh, rules):
    """mIoU / IoU_FG / AP on every object of the first eval_examples images of
    config.data.eval_split (default "validation")."""
    if not config.get("eval_every"):
        return None
    from clipjax.data.pipeline import builder_kwargs, prepare_once
    from clipjax.data.segmentation import eval_examples
    from clipjax.data.segmentation_adapter import adapter_from_config
    from clipjax.evaluation.segmentation import ReferringSegmentation

    d = config.data
    name = d.get("name") or "clipjax_shapes"
    builder = prepare_once(name, d.get("data_dir", None) or None, builder_kwargs(d, name))
    examples = eval_examples(builder, d.get("eval_split", None) or "validation", int(config.get("eval_examples", 200)),
                             adapter_from_config(d))
    score = ReferringSegmentation(cfg, examples, mesh, rules, int(config.batch_size))

    def evaluate(variables) -> dict:
        v, _ = score(variables)
        return {f"seg_{k}": v[k] for k in ("miou", "iou_fg", "ap")}

    return evaluate
