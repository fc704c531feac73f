"""Zero-shot robustness to blurred and low-quality images (evaluate.py --corruption).

A corruption is a pure function of one decoded uint8 HWC image and a severity level, applied
before preprocessing (so it acts at the dataset's own resolution, as a degraded photo would):

    blur       PIL Gaussian blur, radius = level pixels
    downscale  shrunk by a factor of `level` (bicubic) and scaled back up to the original size
    jpeg       JPEG re-encoding at quality 100 - level (level 90: quality 10)
    noise      additive Gaussian noise, sigma = level (0..255 scale), seeded by the image index

Level 0 is the clean image for every kind (downscale 1 too), and a larger level is a stronger
corruption. `robustness_curve` encodes a split once per level and scores it against one text
classifier per template set: the dataset's own templates, and the same plus CLIP's
ImageNet prompts for degraded photos ("a blurry photo of a {}.", "a low resolution photo of
the {}.", ...), to measure whether prompts that name the degradation help.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from clipjax.evaluation.datasets import labelled_batches, split_size
from clipjax.evaluation.encode import labelled_features
from clipjax.evaluation.linear_probe import linear_probe
from clipjax.evaluation.progress import progress_bar
from clipjax.evaluation.templates import imagenet_templates
from clipjax.evaluation.zeroshot import classification_metrics, text_classifier
from clipjax.preprocess import preprocess_images

# the words of CLIP's ImageNet templates that describe a degraded photo
DEGRADED_WORDS = ("blurry", "low resolution", "pixelated", "jpeg corrupted")


def _blur(img: np.ndarray, level: float, index: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=float(level))))


def _downscale(img: np.ndarray, level: float, index: int) -> np.ndarray:
    if level <= 1:
        return img
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, round(w / level)), max(1, round(h / level))), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def _jpeg(img: np.ndarray, level: float, index: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(round(100 - level)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _noise(img: np.ndarray, level: float, index: int) -> np.ndarray:
    # the same noise for the same image at every run: seeded by its index in the split
    rng = np.random.default_rng(index)
    return np.clip(img.astype(np.float32) + rng.normal(0.0, float(level), img.shape), 0, 255).round().astype(np.uint8)


CORRUPTIONS = {"blur": _blur, "downscale": _downscale, "jpeg": _jpeg, "noise": _noise}
LIMITS = {"blur": 1e9, "downscale": 1e9, "jpeg": 99, "noise": 1e9}  # jpeg: quality >= 1


def corrupt(img: np.ndarray, kind: str, level: float, index: int = 0) -> np.ndarray:
    """`img` (uint8 HWC, RGB) corrupted by `kind` at `level` (0: unchanged); `index` seeds
    the noise."""
    img = np.asarray(img, np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    if level == 0:
        return img
    return CORRUPTIONS[kind](img, level, index)


def parse_corruption(spec: str) -> tuple[str, list[float]]:
    """"blur:0,1,2,4,8" -> ("blur", [0, 1, 2, 4, 8]); ValueError naming what is wrong."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip()
    if kind not in CORRUPTIONS:
        raise ValueError(f"--corruption {spec!r}: unknown corruption {kind!r}; use one of "
                         f"{', '.join(CORRUPTIONS)} as KIND:LEVEL,LEVEL,... (e.g. blur:0,1,2,4,8)")
    if not sep or not rest.strip():
        raise ValueError(f"--corruption {spec!r}: give the levels after the colon, e.g. {kind}:0,1,2,4,8")
    levels = []
    for part in rest.split(","):
        try:
            level = float(part)
        except ValueError:
            raise ValueError(f"--corruption {spec!r}: level {part.strip()!r} is not a number") from None
        if not 0 <= level <= LIMITS[kind]:
            raise ValueError(f"--corruption {spec!r}: {kind} levels must lie in [0, {LIMITS[kind]:g}] (got {part.strip()})")
        levels.append(int(level) if level.is_integer() else level)
    if len(set(levels)) != len(levels):
        raise ValueError(f"--corruption {spec!r}: a level is repeated")
    return kind, levels


def degraded_templates() -> list[str]:
    """CLIP's ImageNet templates that name a degraded photo (8 of the 80)."""
    return [t for t in imagenet_templates() if any(w in t for w in DEGRADED_WORDS)]


def template_sets(templates: list[str]) -> dict[str, list[str]]:
    """The prompt ensembles compared: the dataset's, and the dataset's plus the degraded-photo
    prompts it does not have already."""
    extra = [t for t in degraded_templates() if t not in templates]
    return {"dataset": list(templates), "dataset+degraded": list(templates) + extra}


def load_split(builder, split: str, examples: int, batch: int, progress: bool):
    """(list of uint8 images, labels) of the first `examples` of `split` (0: all), decoded once
    and corrupted at each level from memory."""
    images, labels = [], []
    with progress_bar(split_size(builder, split, examples), f"read {split}", progress) as bar:
        for imgs, lab in labelled_batches(builder, split, batch, examples):
            images.extend(imgs)
            labels.append(lab)
            bar.update(len(imgs))
    return images, np.concatenate(labels)


def corrupted_features(encode_pixels, preprocess, images, kind: str, level, batch: int, progress: bool):
    """Normalised image features of `images` corrupted at `level`."""
    def batches():
        for i in range(0, len(images), batch):
            chunk = [corrupt(img, kind, level, i + j) for j, img in enumerate(images[i:i + batch])]
            yield preprocess(chunk), np.zeros(len(chunk), np.int64)

    with progress_bar(len(images), f"{kind}={level}", progress) as bar:
        feats, _ = labelled_features(encode_pixels, batches(), bar.update)
    return feats


def robustness_curve(feature_fn, classifiers: dict, labels, kind: str, levels) -> dict:
    """`feature_fn(level) -> features`, `classifiers` {name: (classes, embed)} -> the metrics:
    corruption, levels, top1 {classifier name: [top-1 per level]}, and flat scalars
    "top1/<kind>=<level>/<name>" for the table."""
    top1 = {name: [] for name in classifiers}
    flat = {}
    for level in levels:
        feats = feature_fn(level)
        for name, cls in classifiers.items():
            acc = classification_metrics(feats @ np.asarray(cls).T, labels)["top1"]
            top1[name].append(acc)
            flat[f"top1/{kind}={level}/{name}"] = acc
    return {"corruption": kind, "levels": list(levels), "top1": top1, **flat}


def zeroshot_under_corruption(encoders, variables, builder, split: str, examples: int, classnames, templates,
                              kind: str, levels, progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task zeroshot --corruption: zero-shot top-1 of `split` at each level of
    `kind`, per template set (template_sets). `encoders`: evaluation.encode.CLIPEncoders."""
    encode_pixels, encode_texts = encoders.bind(variables)
    sets = template_sets(templates)
    classifiers = {name: text_classifier(encode_texts, classnames, ts) for name, ts in sets.items()}
    images, labels = load_split(builder, split, examples, encoders.batch, progress)
    preprocess = lambda chunk: preprocess_images(chunk, encoders.image_size)  # noqa: E731 - as clipjax.load does

    metrics = robustness_curve(
        lambda level: corrupted_features(encode_pixels, preprocess, images, kind, level, encoders.batch, progress),
        classifiers, labels, kind, levels)
    return metrics, dict(classnames=list(classnames), template_sets=sets, examples_used=len(labels))


def linear_probe_under_corruption(encoders, variables, builder, train_split: str, val_split: str, split: str,
                                  examples: int, probe_examples: int, kind: str, levels,
                                  progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task linear_probe --corruption: the probe of evaluation.linear_probe (C
    swept on validation, refit on train + validation) fitted once on clean features, then
    scored on `split` corrupted at each level: what a classifier trained on clean images keeps
    under the shift. Metrics as robustness_curve's, with one classifier, "linear_probe"."""
    from sklearn.linear_model import LogisticRegression

    encode_pixels, _ = encoders.bind(variables)
    preprocess = lambda chunk: preprocess_images(chunk, encoders.image_size)  # noqa: E731

    def clean_features(name):
        imgs, y = load_split(builder, name, probe_examples, encoders.batch, progress)
        return corrupted_features(encode_pixels, preprocess, imgs, kind, 0, encoders.batch, progress), y

    train_x, train_y = clean_features(train_split)
    val_split = val_split or ("validation" if "validation" in builder.info.splits else "")
    if val_split:
        val_x, val_y = clean_features(val_split)
    else:  # the last 20% of the training features, as linear_probe_on_dataset does
        k = int(len(train_x) * 0.8)
        train_x, val_x, train_y, val_y = train_x[:k], train_x[k:], train_y[:k], train_y[k:]
    images, labels = load_split(builder, split, examples, encoders.batch, progress)
    test = {level: corrupted_features(encode_pixels, preprocess, images, kind, level, encoders.batch, progress)
            for level in levels}
    # the C sweep, on clean data as the probe is chosen without knowing the shift
    best = linear_probe(train_x, train_y, val_x, val_y, test[levels[0]], labels)["best_C"]
    clf = LogisticRegression(C=best, max_iter=1000).fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]))
    k = int(max(train_y.max(), val_y.max(), labels.max())) + 1
    weights = np.zeros((k, train_x.shape[1]), np.float32)
    bias = np.zeros(k, np.float32)
    if len(clf.classes_) == 2:  # one row: the second class's score against the first's
        weights[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
    else:  # multinomial: one row per class
        weights[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    metrics = robustness_curve(lambda level: np.concatenate([test[level], np.ones((len(labels), 1))], 1),
                               {"linear_probe": np.concatenate([weights, bias[:, None]], 1)}, labels, kind, levels)
    return metrics, dict(best_C=best, train_examples=len(train_x), validation_examples=len(val_x),
                         validation_split=val_split or f"last 20% of {train_split}", examples_used=len(labels))


def curve_png(metrics: dict, path: str, title: str = "") -> None:
    """Top-1 against corruption level, one line per classifier / template set."""
    import matplotlib  # the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = metrics["levels"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, accs in metrics["top1"].items():
        ax.plot(range(len(levels)), accs, marker="o", label=name)
    ax.set_xticks(range(len(levels)), [str(v) for v in levels])
    ax.set_xlabel(f"{metrics['corruption']} level")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"zero-shot top-1 under {metrics['corruption']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
