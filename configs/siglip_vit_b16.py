"""Sigmoid-loss (SigLIP-style) ViT-B/16: pairwise sigmoid loss with learnable temperature
(init log 10) and bias (init -10), as in Zhai et al., 2023; weight decay 1e-4, lr 1e-3,
batch 32768.

    python train.py --config configs/siglip_vit_b16.py --workdir runs/siglip
"""

import math

from configs.recipes import clip_recipe


def get_config():
    c = clip_recipe("ViT-B/16", lr=1e-3, loss="sigmoid")
    c.model.logit_scale_init = math.log(10.0)
    c.model.logit_bias_init = -10.0
    c.optimizer.weight_decay = 1e-4
    c.optimizer.b2 = 0.95
    return c
