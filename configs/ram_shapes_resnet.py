"""RAM on the built-in dataset with CLIP's ModifiedResNet as the image tower: configs/ram_shapes.py
on the towers of configs/tag2text_shapes_resnet.py. Train the CLIP first:

    python train.py --config configs/clip_shapes.py --workdir runs/clip_shapes
    python train.py --config configs/ram_shapes_resnet.py --workdir runs/ram_shapes_resnet --config.ram.clip=runs/clip_shapes
    python evaluate.py --checkpoint runs/ram_shapes_resnet --task tagging --dataset clipjax_shapes
"""

from configs import ram_shapes, tag2text_shapes_resnet


def get_config():
    return ram_shapes.as_ram(tag2text_shapes_resnet.get_config())
