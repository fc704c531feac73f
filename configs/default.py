"""Built-in default: a tiny CLIP ViT trained on procedurally drawn shapes; minutes on a CPU.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py --workdir runs/x --config.total_steps=50
"""

import ml_collections

from clipjax.models.presets import get_preset


def get_config():
    c = ml_collections.ConfigDict()
    model = get_preset("tiny-vit").to_dict()
    model["text"]["context_length"] = 16  # captions are short; fewer positions, faster steps
    c.model = ml_collections.ConfigDict(model)

    c.data = ml_collections.ConfigDict(dict(name="synthetic_shapes", seed=0))
    c.seed = 0
    c.batch_size = 128  # global
    c.total_steps = 600
    c.loss = "softmax"  # softmax | sigmoid

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=2e-3, warmup_steps=50, weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, freeze=[]))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.axis_rules = None  # None: clipjax.sharding.DEFAULT_RULES

    c.log_every = 50
    c.eval_every = 200
    c.eval_examples = 1024
    c.checkpoint_every = 200
    c.keep_checkpoints = 2
    return c
