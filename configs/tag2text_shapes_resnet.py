"""Tag2Text on the built-in dataset with CLIP's ModifiedResNet as the image tower: the recipe of
configs/tag2text_shapes.py with convolutions in place of the ViT, which on this data learn the
objects' shapes within the run (the ViT tells colours, sizes and textures but not shapes).

    python train.py --config configs/tag2text_shapes_resnet.py --workdir runs/tag2text_shapes_resnet
    python evaluate.py --checkpoint runs/tag2text_shapes_resnet --task tagging --dataset clipjax_shapes --output runs/tag2text_shapes_resnet/tagging.json
    python evaluate.py --checkpoint runs/tag2text_shapes_resnet --task captioning --dataset clipjax_shapes --output runs/tag2text_shapes_resnet/captioning.json
"""

import ml_collections

from configs import tag2text_shapes


def get_config():
    c = tag2text_shapes.get_config()
    rn_width = 32  # tokens 32 * 32 = 1024 wide: the attention-pooled embedding + a 2x2 grid at 64 px
    c.model.vision_kind = "resnet"
    c.model.vision = ml_collections.ConfigDict(dict(kind="resnet", image_size=64, resnet_layers=(1, 1, 1, 1),
                                                    resnet_width=rn_width, heads=4))
    c.model.tagging.encoder_width = 32 * rn_width
    c.optimizer.lr = 1e-3
    return c
