"""LiT (Zhai et al., 2022): a locked, pretrained image tower; only the text tower (and the
temperature) learn. Point `init_from` at the pretrained CLIP (any format clipjax.load reads).

    python train.py --config configs/lit_vit_b16.py --workdir runs/lit --config.init_from=/path/to/ViT-B-16
"""

from configs.recipes import clip_recipe


def get_config():
    c = clip_recipe("ViT-B/16", lr=1e-3)
    c.init_from = ""  # required: a pretrained CLIP (clipjax, transformers or OpenAI layout)
    c.init_parts = ["visual"]  # LiT: only the image tower is taken from it (and locked)
    c.optimizer.freeze = ["^visual/"]  # parameter-path regexes: the whole image tower is locked
    c.optimizer.weight_decay = 1e-4
    return c
