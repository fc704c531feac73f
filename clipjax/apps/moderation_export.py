"""A labelled classification split written as moderate.py --calibrate's input: one PNG per image
and labelled.csv with a 0/1 column per moderation category, each category a set of the
dataset's class names. How the stand-in measurement of docs/moderation.md is made (no real
harmful imagery exists offline: Fashion-MNIST's "footwear" and "bag" stand in), so it goes
through the same files and code path a user's labelled data does.

    python -m clipjax.apps.moderation_export tfds:clipjax_fashion_mnist:test /tmp/fmnist_mod \\
        --category "footwear=sandal,sneaker,ankle boot" --category bag=bag

Writes OUT/images/00000.png ... (uint8 as stored; Fashion-MNIST stays 28x28 grayscale) and
OUT/labelled.csv: image (relative to OUT), label (the class name, ignored by --calibrate), then
one column per category.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Optional, Sequence

import numpy as np

from clipjax.errors import ConfigError


def parse_category(spec: str, classnames: Sequence[str]) -> tuple[str, list[str]]:
    """"name=class,class" -> (name, classes), every class one of `classnames`."""
    name, eq, rest = spec.partition("=")
    classes = [c.strip() for c in rest.split(",") if c.strip()]
    if not eq or not name.strip() or not classes:
        raise ConfigError(f"--category {spec!r}: expected NAME=CLASS[,CLASS...]")
    bad = [c for c in classes if c not in classnames]
    if bad:
        raise ConfigError(f"--category {spec!r}: {bad[0]!r} is not a class of the dataset ({', '.join(classnames)})")
    return name.strip(), classes


def parse_source(source: str) -> tuple[str, str, Optional[str]]:
    parts = source.split(":")
    if len(parts) < 3 or parts[0] != "tfds" or not parts[1] or not parts[2]:
        raise ConfigError(f"{source!r}: expected tfds:NAME:SPLIT (optionally tfds:NAME:SPLIT:DATA_DIR)")
    return parts[1], parts[2], ":".join(parts[3:]) or None


def export(source: str, out_dir: str, categories: Sequence[str], examples: Optional[int] = None,
           progress: bool = True) -> dict:
    """Write `source`'s images and labelled.csv under out_dir; -> {"csv", "images", "positives"}."""
    from PIL import Image

    from clipjax.evaluation.datasets import classification_info, labelled_batches, split_size, tfds_builder
    from clipjax.evaluation.progress import progress_bar

    name, split, data_dir = parse_source(source)
    builder = tfds_builder(name, data_dir, {})
    classnames = classification_info(builder)
    cats = [parse_category(c, classnames) for c in categories]
    if not cats:
        raise ConfigError("give at least one --category NAME=CLASS[,CLASS...]")
    member = np.zeros((len(cats), len(classnames)), np.int8)
    for j, (_, classes) in enumerate(cats):
        member[j, [classnames.index(c) for c in classes]] = 1
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    csv_path = os.path.join(out_dir, "labelled.csv")
    n, positives = 0, np.zeros(len(cats), np.int64)
    with open(csv_path, "w", newline="") as f, progress_bar(split_size(builder, split, examples),
                                                              f"exporting {name}:{split}", progress) as bar:
        w = csv.writer(f)
        w.writerow(["image", "label"] + [c for c, _ in cats])
        for images, labels in labelled_batches(builder, split, 256, examples):
            for img, lab in zip(images, labels):
                rel = f"images/{n:05d}.png"
                arr = np.asarray(img)
                Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(
                    os.path.join(out_dir, rel))
                flags = member[:, int(lab)]
                positives += flags
                w.writerow([rel, classnames[int(lab)]] + [int(v) for v in flags])
                n += 1
            bar.update(len(images))
    return {"csv": csv_path, "images": n, "positives": {c: int(p) for (c, _), p in zip(cats, positives)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="tfds:NAME:SPLIT of a dataset with a ClassLabel 'label'")
    ap.add_argument("out_dir")
    ap.add_argument("--category", action="append", default=[], help="NAME=CLASS[,CLASS...]; repeatable")
    ap.add_argument("--examples", type=int, default=None, help="only the first N images")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = export(args.source, args.out_dir, args.category, args.examples, not args.no_progress)
    except (ConfigError, ValueError, OSError) as e:
        print(f"moderation_export: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out['images']} images and {out['csv']} (positives: "
          f"{', '.join(f'{k} {v}' for k, v in out['positives'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
