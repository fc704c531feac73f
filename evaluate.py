"""Evaluate a CLIP checkpoint.

    python evaluate.py --checkpoint PATH --task zeroshot --dataset synthetic_shapes [--output results.json]

PATH: a clipjax checkpoint or training workdir, a transformers CLIP directory or an
OpenAI-layout file. Datasets available now: synthetic_shapes (the built-in procedural data;
its test split is drawn from a seed never used for training).
"""

from __future__ import annotations

import argparse
import json
import sys

TASKS = ("zeroshot",)
DATASETS = ("synthetic_shapes",)
SYNTHETIC_TEMPLATES = ("a photo of a {}", "a {}", "there is a {} in the picture")


def load_dataset(name: str, split: str, examples: int, image_size: int):
    """-> (uint8 images, labels, classnames, templates)."""
    if name == "synthetic_shapes":
        from clipjax.data import synthetic

        seed = {"train": 0, "validation": 10_000, "test": 20_000}.get(split)
        if seed is None:
            raise ValueError(f"unknown split {split!r} for {name} (train | validation | test)")
        imgs, labels, _ = synthetic.draw_batch(seed, 0, examples, image_size)
        return imgs, labels, list(synthetic.CLASSNAMES), list(SYNTHETIC_TEMPLATES)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def zeroshot(clip, images, labels, classnames, templates, batch_size: int = 128) -> dict:
    from clipjax.evaluation.zeroshot import classification_metrics, text_classifier

    txt = text_classifier(clip.encode_text, classnames, templates)
    return classification_metrics(clip.encode_image(images, batch_size=batch_size) @ txt.T, labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", default="zeroshot", choices=TASKS)
    p.add_argument("--dataset", default="synthetic_shapes")
    p.add_argument("--split", default="test")
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--output", default=None, help="write metrics and settings as JSON")
    args = p.parse_args(argv)

    import clipjax

    try:
        clip = clipjax.load(args.checkpoint)
        images, labels, classnames, templates = load_dataset(args.dataset, args.split, args.examples,
                                                             clip.image_size)
    except (clipjax.CheckpointError, ValueError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    metrics = zeroshot(clip, images, labels, classnames, templates)
    result = {**metrics, "settings": vars(args) | {"num_classes": len(classnames), "templates": templates}}
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
