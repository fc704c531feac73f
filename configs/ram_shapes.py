"""RAM on the built-in dataset: configs/tag2text_shapes.py's towers, with the tag queries taken
from a CLIP's prompt-ensembled text embeddings of the tag names (frozen) and the image [CLS]
token distilled (L1, through image_proj) to that CLIP's image embeddings. Train the CLIP first:

    python train.py --config configs/clip_shapes.py --workdir runs/clip_shapes
    python train.py --config configs/ram_shapes.py --workdir runs/ram_shapes --config.ram.clip=runs/clip_shapes
    python evaluate.py --checkpoint runs/ram_shapes --task tagging --dataset clipjax_shapes
    python tag.py --checkpoint runs/ram_shapes IMAGE.png --new-tags "rhombus,red circle" --clip runs/clip_shapes
"""

import ml_collections

from configs import tag2text_shapes


def as_ram(c):
    """A Tag2Text config turned into RAM's: CLIP-text label queries, shared classifier, the CLIP."""
    c.model.variant = "ram"
    # image_proj, the label width and the head's input width follow the CLIP's embed_dim
    c.model.tagging.update(label_source="clip", classifier="shared")
    c.ram = ml_collections.ConfigDict(dict(clip="runs/clip_shapes"))
    return c


def get_config():
    return as_ram(tag2text_shapes.get_config())
