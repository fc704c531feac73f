"""CLIP ViT-L/14 as in the CLIP paper: batch 32768, lr 4e-4, wd 0.2, 2000 warm-up steps, cosine.

    python train.py --config configs/clip_vit_l14.py --workdir runs/clip_vit_l14 --config.mesh.fsdp=8
"""

from configs.recipes import clip_recipe


def get_config():
    return clip_recipe("ViT-L/14", lr=4e-4)
