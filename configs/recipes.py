"""Shared builder for the paper-scale recipes (the config files in this folder call it).

Hyper-parameters follow the CLIP paper (Radford et al., 2021, Table 20) and open_clip's
defaults: AdamW (beta2 0.98, eps 1e-6), decoupled weight decay 0.2, cosine schedule with
2000 warm-up steps, global batch 32768, 32 epochs over 400M pairs (~390k steps at 32768).
"""

import ml_collections

from clipjax.models.presets import get_preset


def clip_recipe(preset: str, lr: float, batch_size: int = 32768, total_steps: int = 390_000,
                loss: str = "softmax") -> ml_collections.ConfigDict:
    from configs.default import get_config as default_config

    c = default_config()
    c.model = ml_collections.ConfigDict(get_preset(preset).to_dict())
    c.batch_size = batch_size
    c.total_steps = total_steps
    c.loss = loss
    c.loss_impl = "ring"  # per-device loss memory independent of the global batch
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=lr, warmup_steps=2000, weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=0.0, freeze=[]))
    # Pod scale: bf16 compute with fp32 master weights, full remat of the scanned blocks,
    # data parallel with FSDP over 8-way groups (set the sizes to your slice).
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    return c
