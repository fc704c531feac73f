"""RAM on the built-in dataset with CLIP's ModifiedResNet as the image tower: configs/ram_shapes.py
on the towers of configs/tag2text_shapes_resnet.py. Train the CLIP first:

    python train.py --config configs/clip_shapes.py --workdir runs/clip_shapes
    python train.py --config configs/ram_shapes_resnet.py --workdir runs/ram_shapes_resnet --config.ram.clip=runs/clip_shapes
    python evaluate.py --checkpoint runs/ram_shapes_resnet --task tagging --dataset clipjax_shapes
"""

import ml_collections

from configs import tag2text_shapes_resnet


def get_config():
    c = tag2text_shapes_resnet.get_config()
    c.model.variant = "ram"
    # image_proj, the label width and the head's input width follow the CLIP's embed_dim
    c.model.tagging.update(label_source="clip", classifier="shared")
    c.ram = ml_collections.ConfigDict(dict(clip="runs/clip_shapes"))
    return c
