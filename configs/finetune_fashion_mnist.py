"""Fine-tune the image tower of configs/clip_fashion_mnist.py's CLIP on Fashion-MNIST's labels,
its head starting as the zero-shot classifier (FLYP / WiSE-FT), then interpolate the two
(WiSE-FT) with evaluate.py:

    python train.py --config configs/finetune_fashion_mnist.py --config.init_from=runs/fmnist --workdir runs/fmnist_ft
    python evaluate.py --wise-ft runs/fmnist,runs/fmnist_ft --alpha 0,0.25,0.5,0.75,1 --dataset fashion_mnist \\
        --corruption blur:0,1,2 --output runs/fmnist_ft/wise_ft.json

The architecture is the init_from CLIP's (config.model is not used); its text tower and logit
scale stay frozen. A short recipe: AdamW at a small learning rate with warm-up and cosine decay
(docs/robustness.md: test top-1 0.830 from the zero-shot 0.797; 300 steps give 0.811-0.818).
"""

import ml_collections

from configs import default


def get_config():
    c = default.get_config()
    c.task = "finetune"
    c.init_from = ""  # the CLIP run to fine-tune (required)
    c.data = ml_collections.ConfigDict(dict(name="clipjax_fashion_mnist", seed=0, data_dir="", source="",
                                            split="train", shuffle_buffer=55_000, tokenizer="", builder_kwargs={},
                                            crop_scale=(0.8, 1.0)))
    c.batch_size = 128
    c.total_steps = 900  # ~2 epochs of the 55,000 training images; 12.5 min on this 2-core CPU
    c.optimizer.update(lr=3e-4, warmup_steps=50, weight_decay=0.1)
    c.log_every = 25
    c.eval_every = 300
    c.eval_examples = 2000  # of the validation split (the last 5,000 training images)
    c.eval = ml_collections.ConfigDict(dict(split="validation"))
    c.checkpoint_every = 300
    return c
