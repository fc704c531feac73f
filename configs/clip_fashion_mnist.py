"""A small CLIP trained from scratch on Fashion-MNIST (Debian's dataset-fashion-mnist, no
download): images against captions made from the class names through templates. Zero-shot
top-1 on the test split is the real-data check that clipjax training learns.

    python train.py --config configs/clip_fashion_mnist.py --workdir runs/fmnist
    python evaluate.py --checkpoint runs/fmnist --task zeroshot --dataset fashion_mnist --output runs/fmnist/test.json
"""

import ml_collections

from configs import default


def get_config():
    c = default.get_config()
    c.model.embed_dim = 64
    # 28x28 grayscale (decoded to RGB) at native size: 7x7 patches -> 16 tokens (4x4 patches
    # learn a little better per step but cost 3x more on a 2-core CPU)
    c.model.vision.update(image_size=28, patch_size=7, width=128, layers=4, heads=4, mlp_dim=512)
    c.model.text.update(context_length=20, width=64, layers=2, heads=4, mlp_dim=256)

    c.data = ml_collections.ConfigDict(dict(name="clipjax_fashion_mnist", seed=0, data_dir="", source="",
                                            split="train", shuffle_buffer=55_000, tokenizer="", crop_scale=(0.8, 1.0)))
    c.batch_size = 256
    c.total_steps = 2000  # ~9 epochs of the 55,000 training images
    c.optimizer.update(lr=1e-3, warmup_steps=150, weight_decay=0.1)
    c.log_every = 50
    c.eval_every = 500
    c.eval_examples = 5000  # the whole validation split (the last 5,000 training images)
    c.eval.templates = ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
                        "a photo of the {}, a type of clothing.", "a grayscale photo of a {}."]
    c.checkpoint_every = 500
    return c
