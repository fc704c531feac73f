"""CLIP as a training task (config.task = "clip", the default): contrastive training of the
two towers with the softmax (CLIP) or sigmoid (SigLIP) loss, global or as a ring over the batch
axes, GradCache accumulation (config.accum_steps), and LiT (config.init_from + init_parts +
optimizer.freeze: a pretrained, locked tower). Periodic evaluation: zero-shot classification,
or retrieval on captioned data (clipjax.evaluation.periodic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from clipjax.data.pipeline import make_train_data
from clipjax.data.shard_pipeline import ShardTrainData
from clipjax.evaluation.periodic import make_periodic_evaluator
from clipjax.losses.contrastive import contrastive_loss
from clipjax.models.clip import CLIP, init_inputs
from clipjax.models.config import CLIPConfig
from clipjax.tasks.base import Task
from clipjax.tasks.grad_cache import clip_grad_cache
from clipjax.tasks.pretrained import load_pretrained_parts
from clipjax.tokenizer import text_attention_mask
from clipjax.train.state import make_guarded_step


def model_config(config) -> CLIPConfig:
    return CLIPConfig.from_dict(config.model.to_dict())


def make_loss_fn(model: CLIP, loss: str, impl: str = "global", mesh=None):
    """(params, other_variables, images, ids, rng) -> (loss, batch-stat updates).
    impl "ring" computes the contrastive loss with the shard_map ring over the batch axes."""

    def loss_fn(params, other, images, ids, rng):
        variables = {"params": params, **other}
        mutable = ["batch_stats"] if "batch_stats" in other else False
        mask = text_attention_mask(model.cfg.text, ids)  # None for causal towers
        out = model.apply(variables, images, ids, attention_mask=mask, train=True, rngs={"dropout": rng},
                          mutable=mutable)
        out, updates = out if mutable else (out, {})
        value = contrastive_loss(loss, impl, out["image_embeds"], out["text_embeds"], params, mesh)
        return value, updates

    return loss_fn


def make_value_and_grad(model: CLIP, loss: str, impl: str = "global", accum_steps: int = 1, mesh=None):
    """(params, other, images, ids, rng) -> ((loss, updates), grads). With accum_steps > 1 the
    gradient is accumulated GradCache-style: every negative of the global batch is kept and
    only one micro-batch's activations are live at a time."""
    if accum_steps <= 1:
        return jax.value_and_grad(make_loss_fn(model, loss, impl, mesh), has_aux=True)
    fn = clip_grad_cache(model, loss, accum_steps, impl, mesh, train=True)

    def value_and_grad(params, other, images, ids, rng):
        value, grads = fn(params, other, images, ids, rng)
        return (value, {}), grads

    return value_and_grad


def make_train_step(model: CLIP, tx: optax.GradientTransformation, loss: str, ema_decay: float = 0.0,
                    loss_impl: str = "global", accum_steps: int = 1, mesh=None):
    """The CLIP step: `step(state, images, ids)` (see make_guarded_step)."""
    return make_guarded_step(make_value_and_grad(model, loss, loss_impl, accum_steps, mesh), tx, ema_decay)


def config_problems(config) -> list[str]:
    """What is wrong with the CLIP keys of a training config (one line each)."""
    problems = []
    if config.get("loss") not in ("softmax", "sigmoid"):
        problems.append(f"loss must be 'softmax' or 'sigmoid' (got {config.get('loss')!r})")
    if config.get("loss_impl", "global") not in ("global", "ring"):
        problems.append(f"loss_impl must be 'global' or 'ring' (got {config.get('loss_impl')!r})")
    accum = int(config.get("accum_steps", 1) or 1)
    if accum < 1 or (int(config.get("batch_size", 0) or 0) % accum):
        problems.append(f"accum_steps={accum} must be >= 1 and divide batch_size={config.get('batch_size')}")
    if config.get("loss") == "sigmoid" and config.model.get("logit_bias_init") is None:
        problems.append("loss='sigmoid' needs model.logit_bias_init (e.g. -10)")
    return problems


def _train_data(config, cfg, mesh, rules, position: int, data_state=None):
    """config.data.name "shards": webdataset tar shards, each process reading its own (its saved
    position `data_state`); any other name: the tf.data stream of clipjax.data.pipeline."""
    if config.data.get("name") == "shards":
        return ShardTrainData(config.data, config.batch_size, cfg, mesh, rules, position, state=data_state)
    return make_train_data(config, cfg, mesh, rules, position)


def make_task(config, mesh, rules, workdir=None, abstract: bool = False) -> Task:
    """`abstract`: for plan.py (shapes only; nothing here reads weights either way)."""
    cfg = model_config(config)
    model = CLIP(cfg)
    vg = make_value_and_grad(model, config.loss, config.get("loss_impl", "global"),
                             int(config.get("accum_steps", 1) or 1), mesh)
    post_init = None
    if config.get("init_from"):
        post_init = lambda v: load_pretrained_parts(v, config.init_from, config.get("init_parts") or None)  # noqa: E731
    return Task("clip", model, cfg, init_inputs(cfg), vg,
                make_data=lambda position, data_state=None: _train_data(config, cfg, mesh, rules, position, data_state),
                make_evaluator=lambda: make_periodic_evaluator(config, cfg, mesh, rules),
                post_init=post_init, batch_spec=lambda b: batch_spec(cfg, b))


def batch_spec(cfg: CLIPConfig, b: int) -> tuple:
    """(images (B,S,S,3) float32 CLIP-normalised, token ids (B,L) int32): both streams' batches."""
    s = cfg.vision.image_size
    return (((b, s, s, 3), jnp.float32), ((b, cfg.text.context_length), jnp.int32))
