"""Built-in default: a tiny CLIP ViT trained on clipjax_shapes (procedural, no download); minutes on a CPU.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py --workdir runs/x --config.total_steps=50
"""

import ml_collections

from clipjax.models.presets import get_preset


def get_config():
    c = ml_collections.ConfigDict()
    model = get_preset("tiny-vit").to_dict()
    model["text"]["context_length"] = 16  # captions are short; fewer positions, faster steps
    c.model = ml_collections.ConfigDict(model)

    # name: clipjax_shapes (built-in, generated on first use) | clipjax_fashion_mnist | collection |
    # any prepared TFDS name. data_dir "": TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    # source: CSV/TSV/JSONL index or tar-shard glob (collection). builder_kwargs: passed to the TFDS
    # builder. tokenizer: WordPiece vocab.txt / tokenizer dir (BERT towers). device_prefetch: global
    # batches kept placed on the devices ahead of the step. shuffle_buffer_bytes: a collection's
    # shuffle buffer (of image_size crops) holds at most this many bytes (fewer examples, if need be).
    # confine_paths: a collection's image paths must stay under its root (no absolute paths, `..`
    # or symlinks leaving it); off by default, as open_clip reads any path an index names.
    c.data = ml_collections.ConfigDict(dict(name="clipjax_shapes", seed=0, data_dir="", source="", split="train",
                                            shuffle_buffer=10_000, shuffle_buffer_bytes=2**30, tokenizer="",
                                            builder_kwargs={}, device_prefetch=2, confine_paths=False,
                                            # name="shards": webdataset tar shards, source like open_clip's
                                            # "gs://b/laion/{00000..41455}.tar::/data/cc/{000..999}.tar"
                                            source_weights="", resampled=False, in_flight=4, decode_threads=4,
                                            host_prefetch=2,
                                            # clipjax_shapes' size (other datasets ignore it)
                                            shapes=dict(image_size=64, num_train=10_000, num_validation=1000,
                                                        num_test=1000)))
    c.seed = 0
    c.batch_size = 128  # global
    c.total_steps = 600
    c.loss = "softmax"  # softmax | sigmoid
    # "global": materialised logits (GSPMD shards them); "ring": shard_map ring over the batch
    # axes, per-device memory follows the per-device batch (batch_size must divide evenly)
    c.loss_impl = "global"
    c.accum_steps = 1  # > 1: GradCache accumulation over that many micro-batches, all negatives kept
    c.init_from = ""  # a pretrained CLIP to start from (clipjax, transformers or OpenAI layout)
    c.init_parts = []  # which top-level parts to take from it ("visual", "text", ...); [] = all

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=2e-3, warmup_steps=50, weight_decay=0.1, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=1.0, freeze=[]))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.axis_rules = None  # None: clipjax.sharding.DEFAULT_RULES

    c.log_every = 50
    c.eval_every = 200
    c.eval_examples = 1000
    # periodic evaluation: dataset "" = the training dataset; its validation split; zero-shot
    # top-1/top-5 (+ held-out combinations on clipjax_shapes) or retrieval R@k
    c.eval = ml_collections.ConfigDict(dict(dataset="", split="validation", templates=["a photo of a {}."]))
    c.checkpoint_every = 200
    c.keep_checkpoints = 2
    c.ema_decay = 0.0  # > 0: keep an exponential moving average of the params (saved as item "ema")

    # MFU = FLOPs per step / step time / (peak_flops_per_device x devices). Set the peak for
    # the hardware (e.g. 989e12 for an H100 in bf16, 197e12 for a TPU v5e chip); the default
    # is a rough figure for one fp32 CPU core.
    c.peak_flops_per_device = 1e11
    c.tensorboard = True  # scalars under WORKDIR/tensorboard when tensorboardX / torch / tf imports

    # Multi-process runs: leave empty under SLURM or on a TPU pod (detected), or set here or via
    # $CLIPJAX_COORDINATOR / $CLIPJAX_NUM_PROCESSES / $CLIPJAX_PROCESS_ID.
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0))
    return c
