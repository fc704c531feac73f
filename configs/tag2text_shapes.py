"""Tag2Text on the built-in dataset: a small ViT, tagging head, tag encoder and caption
decoder trained from scratch on clipjax_shapes' tags and captions (a few minutes per 1000
steps on 2 CPU cores).

    python train.py --config configs/tag2text_shapes.py --workdir runs/tag2text_shapes
    python evaluate.py --checkpoint runs/tag2text_shapes --task tagging --dataset clipjax_shapes --output runs/tag2text_shapes/tagging.json
    python evaluate.py --checkpoint runs/tag2text_shapes --task captioning --dataset clipjax_shapes --output runs/tag2text_shapes/captioning.json
    python tag.py --checkpoint runs/tag2text_shapes IMAGE.png [--tags "red | circle"]
"""

import ml_collections

from configs import default


def get_config():
    c = default.get_config()
    c.task = "tag2text"
    width = 128
    c.model = ml_collections.ConfigDict(dict(
        variant="tag2text",
        vision_kind="vit",
        vision=dict(kind="vit", image_size=64, patch_size=8, width=width, layers=4, heads=4, mlp_dim=4 * width,
                    act="gelu", ln_eps=1e-6, ln_pre=False, patch_bias=True),
        # num_tags is set from the tag list; the head shares its layers with the tag encoder's lowest two
        tagging=dict(width=width, layers=2, heads=4, mlp_dim=4 * width, encoder_width=width,
                     label_source="learned", classifier="groupwise", threshold=0.5),
        # vocab_size and the special ids come from the tokenizer
        text=dict(kind="bert", context_length=40, width=width, layers=3, heads=4, mlp_dim=4 * width),
        prompt="a picture of ",
        tag_max_length=16,
        caption_max_length=32,
        alignment_dim=0,  # > 0: BLIP ITC + ITM with this projection width (the release trains none)
    ))
    # a user's collection instead: --config.data.name=collection --config.data.source=index.csv
    # (filepath, title, tags columns) --config.data.tokenizer=vocab.txt --config.tag2text.tag_list=tags.txt
    # [--config.tag2text.eval_source=val.csv]
    c.tag2text = ml_collections.ConfigDict(dict(tag_list="", eval_source=""))
    c.batch_size = 64
    c.total_steps = 1500
    c.dropout = 0.0
    c.label_smoothing = 0.1
    c.optimizer.update(lr=5e-4, warmup_steps=100, weight_decay=0.05)
    c.eval_every = 500
    c.eval_examples = 500
    c.checkpoint_every = 500
    return c
