"""A small CLIP on the built-in clipjax_shapes at 64 px (8x8 patches -> 64 tokens): the
held-out-combination zero-shot result, and the frozen backbone for configs/clipseg_shapes.py.

    python train.py --config configs/clip_shapes.py --workdir runs/clip_shapes
    python evaluate.py --checkpoint runs/clip_shapes --task zeroshot --dataset clipjax_shapes --output runs/clip_shapes/test.json
"""

from configs import default


def get_config():
    c = default.get_config()
    c.model.embed_dim = 64
    c.model.vision.update(image_size=64, patch_size=8, width=96, layers=4, heads=4, mlp_dim=384)
    c.model.text.update(context_length=32, width=64, layers=2, heads=4, mlp_dim=256)
    c.batch_size = 128
    c.total_steps = 1500
    c.optimizer.update(lr=1e-3, warmup_steps=100)
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
