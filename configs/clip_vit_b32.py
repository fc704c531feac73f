"""CLIP ViT-B/32 as in the CLIP paper: batch 32768, lr 5e-4, wd 0.2, 2000 warm-up steps, cosine.

    python train.py --config configs/clip_vit_b32.py --workdir runs/clip_vit_b32 --config.mesh.fsdp=8
"""

from configs.recipes import clip_recipe


def get_config():
    return clip_recipe("ViT-B/32", lr=5e-4)
