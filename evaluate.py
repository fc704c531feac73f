"""Evaluate a CLIP checkpoint: zero-shot classification, image<->text retrieval, linear probe.

    python evaluate.py --checkpoint PATH --task zeroshot --dataset fashion_mnist --output results.json
    python evaluate.py --checkpoint PATH --task retrieval --dataset clipjax_shapes
    python evaluate.py --checkpoint PATH --task linear_probe --dataset cifar10 --data-dir /data/tfds
    python evaluate.py --checkpoint SEG --task segmentation --dataset clipjax_shapes --output seg.json

PATH: a clipjax checkpoint or training workdir, a transformers CLIP directory or an
OpenAI-layout file. Datasets: clipjax_shapes and fashion_mnist (built locally, no download),
any prepared TFDS dataset (cifar10, cifar100, imagenet2012, coco_captions, ...; never
downloaded: prepare it first), or `collection` with --source (CSV/TSV/JSONL or tar shards) for
retrieval. Zero-shot uses per-dataset class names and templates (the CLIP paper's 80 for
ImageNet); --classnames / --templates override them (one per line). Images are preprocessed
exactly as clipjax.load(...) does at inference; encoding is sharded over all local devices.

Segmentation (a CLIPSeg checkpoint): every object of the split is segmented from its referring
phrase; mIoU, IoU_FG and AP as the CLIPSeg paper defines them (best threshold, and at 0.5),
also on objects whose colour-shape pair was held out of clipjax_shapes' training split; the
first --overlays examples are drawn (image, truth, prediction) as PNGs beside --output.

Output: a table on stdout; with --output, JSON (every metric at the top level, plus
"settings") and, for classification, a confusion-matrix PNG beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

TASKS = ("zeroshot", "retrieval", "linear_probe", "segmentation")


class EvalError(ValueError):
    pass


# ------------------------------------------------------------------------------------ encoders
class Encoders:
    """Jitted image/text encoders of a LoadedCLIP, sharded over a mesh of all local devices."""

    def __init__(self, clip, batch_size: int, progress: bool):
        import jax

        from clipjax import sharding as shd
        from clipjax.evaluation.encode import clip_encoders, global_batch

        self.clip, self.progress = clip, progress
        self.mesh = shd.make_mesh({"data": -1})
        self.batch = global_batch(batch_size, self.mesh)
        self.variables = jax.device_put(clip.variables, shd.replicated(self.mesh))
        self._img, self._txt = clip_encoders(clip.cfg, self.mesh, shd.DEFAULT_RULES, self.batch)

    def images(self, uint8_images) -> np.ndarray:
        return self._img(self.variables, self.clip.preprocess(uint8_images))

    def texts(self, texts) -> np.ndarray:
        return self._txt(self.variables, self.clip.tokenize(list(texts)))

    def bar(self, total, desc):
        from tqdm import tqdm

        return tqdm(total=total or None, desc=desc, unit="img", disable=not self.progress, file=sys.stderr)


def encode_labelled(enc: Encoders, builder, split, examples, desc):
    from clipjax.evaluation.datasets import iterate_labelled, split_size

    feats, labels = [], []
    with enc.bar(split_size(builder, split, examples), desc) as bar:
        for imgs, lab in iterate_labelled(builder, split, enc.batch, examples):
            feats.append(enc.images(imgs))
            labels.append(lab)
            bar.update(len(imgs))
    if not feats:
        raise EvalError(f"split {split!r} of {builder.info.name} has no examples")
    return np.concatenate(feats), np.concatenate(labels)


# ------------------------------------------------------------------------------------ tasks
def classifier_cache_path(args, classnames, templates) -> str | None:
    if not args.output:
        return None
    key = hashlib.sha256(json.dumps([os.path.abspath(args.checkpoint), classnames, templates]).encode()).hexdigest()[:16]
    return os.path.join(os.path.dirname(os.path.abspath(args.output)), f".zeroshot_classifier_{key}.npy")


def zeroshot(args, enc: Encoders, builder) -> tuple[dict, dict]:
    from clipjax.evaluation import templates as T
    from clipjax.evaluation.datasets import classification_info
    from clipjax.evaluation.zeroshot import classification_metrics, heldout_metrics, text_classifier

    names = classification_info(builder)
    known = T.prompts_for(args.dataset)
    classnames = T.read_lines(args.classnames, "class-name") if args.classnames else (known[0] if known else names)
    templates = T.read_lines(args.templates, "template") if args.templates else (
        known[1] if known else ["a photo of a {}."])
    T.check_templates(templates)
    if len(classnames) != len(names):
        raise EvalError(f"{len(classnames)} class names for a dataset with {len(names)} classes")
    cache = classifier_cache_path(args, classnames, templates)
    if cache and os.path.exists(cache):
        cls = np.load(cache)
        cached = True
    else:
        cls = text_classifier(enc.texts, classnames, templates)  # once per run
        cached = False
        if cache:
            np.save(cache, cls)
    feats, labels = encode_labelled(enc, builder, args.split, args.examples, "zeroshot")
    logits = feats @ cls.T
    metrics = classification_metrics(logits, labels)
    metrics.update(heldout_metrics(args.dataset, logits, labels))
    extra = dict(classnames=classnames, templates=templates, classifier_cached=cached,
                 confusion=(logits.argmax(1), labels))
    return metrics, extra


def retrieval(args, enc: Encoders, source) -> tuple[dict, dict]:
    from clipjax.evaluation.datasets import iterate_captioned
    from clipjax.evaluation.retrieval import retrieval_metrics

    img_feats, txt_feats, owner = [], [], []
    n_img = 0
    with enc.bar(args.examples or 0, "retrieval") as bar:
        for imgs, caps in iterate_captioned(source, args.split, enc.batch, args.examples):
            img_feats.append(enc.images(imgs))
            flat = [c for cs in caps for c in cs]
            txt_feats.append(enc.texts(flat))
            owner += [n_img + i for i, cs in enumerate(caps) for _ in cs]
            n_img += len(imgs)
            bar.update(len(imgs))
    if not n_img:
        raise EvalError(f"no examples in split {args.split!r}")
    metrics = retrieval_metrics(np.concatenate(img_feats), np.concatenate(txt_feats), np.asarray(owner))
    return metrics, dict(images=n_img, texts=len(owner))


def linear_probe_task(args, enc: Encoders, builder) -> tuple[dict, dict]:
    from clipjax.evaluation.linear_probe import linear_probe

    splits = builder.info.splits
    val_split = args.val_split or ("validation" if "validation" in splits else None)
    train_x, train_y = encode_labelled(enc, builder, args.train_split, args.probe_examples, "train features")
    if val_split:
        val_x, val_y = encode_labelled(enc, builder, val_split, args.probe_examples, "validation features")
    else:  # hold out the last 20% of the training features
        k = int(len(train_x) * 0.8)
        train_x, val_x, train_y, val_y = train_x[:k], train_x[k:], train_y[:k], train_y[k:]
    test_x, test_y = encode_labelled(enc, builder, args.split, args.examples, "test features")
    metrics = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y)
    return metrics, dict(train_examples=len(train_x), validation_examples=len(val_x),
                         validation_split=val_split or f"last 20% of {args.train_split}")


def segmentation(args, seg, builder) -> tuple[dict, dict]:
    import jax
    from tqdm import tqdm

    from clipjax import sharding as shd
    from clipjax.data.segmentation import eval_examples
    from clipjax.data.shapes_dataset import COLOR_NAMES, HELD_OUT, SHAPES
    from clipjax.evaluation.segmentation import ReferringSegmentation, overlay_png
    from clipjax.preprocess import CLIP_MEAN, CLIP_STD

    mesh = shd.make_mesh({"data": -1})
    held = [COLOR_NAMES.index(c) * len(SHAPES) + SHAPES.index(s) for c, s in HELD_OUT]
    ev = eval_examples(builder, args.split, args.examples or 10 ** 9)
    score = ReferringSegmentation(seg.cfg, ev, mesh, shd.DEFAULT_RULES, args.batch_size,
                                  held if args.dataset == "clipjax_shapes" else ())
    bar = tqdm(total=len(score), desc="segmentation", unit="obj", disable=args.no_progress, file=sys.stderr)
    base = os.path.splitext(args.output)[0] if args.output else None

    def on_batch(start, pixels, probs):
        bar.update(len(pixels))
        if start == 0 and base:
            shown = np.clip(pixels * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN), 0, 1)  # undo the normalisation
            for k in range(min(args.overlays, len(pixels))):
                overlay_png((shown[k] * 255).round().astype(np.uint8), probs[k:k + 1], [ev["phrases"][k]],
                            f"{base}_overlay_{k}.png", truth=score.masks[k])

    with bar:
        metrics, heldout = score(jax.device_put(seg.variables, shd.replicated(mesh)), on_batch)
    if heldout:
        metrics.update({f"heldout_{k}": heldout[k] for k in ("miou", "iou_fg", "ap", "examples")})
    return metrics, dict(objects=len(score), devices=int(mesh.devices.size))


# ------------------------------------------------------------------------------------ output
def print_table(metrics: dict) -> None:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    width = max(len(k) for k, _ in rows) if rows else 0
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def confusion_png(pred, labels, classnames, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classnames)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (labels, pred), 1)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def open_source(args):
    """A TFDS builder, or an ImageTextCollection for --dataset collection."""
    if args.dataset == "collection":
        if args.task != "retrieval":
            raise EvalError("--dataset collection supports --task retrieval only")
        if not args.source:
            raise EvalError("--dataset collection needs --source (a CSV/TSV/JSONL index or tar shards)")
        from clipjax.data.collection import ImageTextCollection

        return ImageTextCollection(args.source)
    from clipjax.evaluation.datasets import tfds_builder

    kwargs = json.loads(args.builder_kwargs) if args.builder_kwargs else {}
    return tfds_builder(args.dataset, args.data_dir or None, kwargs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", default="zeroshot", choices=TASKS)
    p.add_argument("--dataset", default="clipjax_shapes")
    p.add_argument("--split", default="test")
    p.add_argument("--examples", type=int, default=0, help="use only the first N examples (0: all)")
    p.add_argument("--output", default=None, help="JSON file for the metrics and settings")
    p.add_argument("--data-dir", default="", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--builder-kwargs", default="", help='JSON for the TFDS builder, e.g. \'{"image_size": 64}\'')
    p.add_argument("--source", default="", help="collection index file(s) or tar shards (--dataset collection)")
    p.add_argument("--classnames", default="", help="file: one class name per line (zero-shot)")
    p.add_argument("--templates", default="", help="file: one prompt template with {} per line (zero-shot)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-split", default="train", help="linear probe: features to fit on")
    p.add_argument("--val-split", default="", help="linear probe: split for the C sweep (default: validation)")
    p.add_argument("--probe-examples", type=int, default=0, help="linear probe: cap on train/validation examples")
    p.add_argument("--confusion", default="", help="confusion-matrix PNG (default: beside --output)")
    p.add_argument("--overlays", type=int, default=8, help="segmentation: overlay PNGs of the first N examples")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import clipjax
    from clipjax.data.catalog import DatasetNotPreparedError, DownloadNotAllowedError
    from clipjax.data.images import NoUsableExamplesError

    t0 = time.time()
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
        model = clipjax.load(args.checkpoint)
        if args.task == "segmentation":
            if not hasattr(model, "segment"):
                raise EvalError(f"{args.checkpoint} is not a CLIPSeg model (--task segmentation needs one)")
            metrics, extra = segmentation(args, model, open_source(args))
        else:
            if not hasattr(model, "encode_text"):
                raise EvalError(f"{args.checkpoint} is not a CLIP model")
            source = open_source(args)
            enc = Encoders(model, args.batch_size, progress=not args.no_progress)
            fn = {"zeroshot": zeroshot, "retrieval": retrieval, "linear_probe": linear_probe_task}[args.task]
            metrics, extra = fn(args, enc, source)
            extra["devices"] = int(enc.mesh.devices.size)
    except (clipjax.CheckpointError, EvalError, ValueError, DatasetNotPreparedError, DownloadNotAllowedError,
            NoUsableExamplesError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    confusion = extra.pop("confusion", None)
    settings = vars(args) | extra | {"seconds": round(time.time() - t0, 1)}
    if "classnames" in settings:
        settings["num_classes"] = len(settings["classnames"])
    print_table(metrics)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({**metrics, "settings": settings}, f, indent=2)
    png = args.confusion or (os.path.splitext(args.output)[0] + "_confusion.png" if args.output else "")
    if confusion is not None and png:
        confusion_png(confusion[0], confusion[1], extra["classnames"], png)
        print(f"confusion matrix: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
