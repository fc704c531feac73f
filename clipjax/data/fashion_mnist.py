"""clipjax_fashion_mnist: Fashion-MNIST from local IDX files, as a TFDS builder (no download).

Source: the four gzipped IDX files of Zalando's Fashion-MNIST (MIT), by default from Debian's
`dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist). Another directory can be
given as `ClipjaxFashionMnist(source_dir=...)`, through the environment variable
CLIPJAX_FASHION_MNIST_DIR, or as `DownloadConfig(manual_dir=...)`; the first that is set wins
(source_dir, then manual_dir, then the environment, then the Debian path).

Features:
  image    uint8 (28, 28, 1), PNG, grayscale as in the source. Not converted to RGB here:
           the input pipeline tiles the channel (`tf.image.grayscale_to_rgb`) when it resizes
           for the image tower; keeping one channel keeps the files 3x smaller.
  label    ClassLabel over CLASSNAMES (prompt-friendly lower-case names, source order)
  caption  one template caption, chosen deterministically by the example's index

Splits (deterministic; records are stored in source order, shuffle when reading):
  train       source train images 0..54999   (55,000)
  validation  source train images 55000..59999 (5,000; the last 5,000)
  test        source t10k images              (10,000)
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from clipjax.data.data_dir import preparing, resolve_data_dir

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Source label order: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker,
# Bag, Ankle boot.
CLASSNAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
              "sneaker", "bag", "ankle boot")
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}, a type of clothing.",
    "a grayscale photo of a {}.",
)
NUM_VALIDATION = 5000
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim


class IdxFormatError(ValueError):
    pass


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install Debian's copy with "
            "`apt-get install dataset-fashion-mnist` (files land in "
            f"{DEFAULT_DIR}), or pass source_dir= / manual_dir= pointing at a directory with "
            f"{', '.join(FILES.values())}.")
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes; validates magic number and size."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 8:
        raise IdxFormatError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise IdxFormatError(f"{path}: bad IDX magic number 0x{magic:08x} "
                             f"(want 0x{IMAGES_MAGIC:08x} images or 0x{LABELS_MAGIC:08x} labels)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise IdxFormatError(f"{path}: header says {dims} = {count} bytes of data, "
                             f"file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_arrays(source_dir: str = DEFAULT_DIR):
    """-> dict split -> (images uint8 (N, 28, 28), labels uint8 (N,)) for the source files."""
    out = {}
    for part in ("train", "test"):
        images = read_idx(os.path.join(source_dir, FILES[f"{part}_images"]))
        labels = read_idx(os.path.join(source_dir, FILES[f"{part}_labels"]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IdxFormatError(f"{source_dir}: {part} images {images.shape} and labels "
                                 f"{labels.shape} do not match")
        if labels.size and labels.max() >= len(CLASSNAMES):
            raise IdxFormatError(f"{source_dir}: {part} label {labels.max()} out of range")
        out[part] = (images, labels)
    return out


class ClipjaxFashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST read from local IDX files; see the module docstring."""

    name = "clipjax_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Optional: put {', '.join(FILES.values())} in manual_dir. Without it the builder "
        f"reads {DEFAULT_DIR} (apt-get install dataset-fashion-mnist).")

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self._source_dir = os.fspath(source_dir) if source_dir else None
        self._original_state["source_dir"] = self._source_dir  # survives pickling

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=CLASSNAMES),
                "caption": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            # Keep the source order on disk (record i of a split is example i): lets readers
            # check against the IDX files. Shuffle when reading.
            disable_shuffling=True,
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation="Xiao, Rasul, Vollgraf. Fashion-MNIST (2017). arXiv:1708.07747",
            # what evaluation reads instead of importing this module: zero-shot prompts
            metadata=tfds.core.MetadataDict(prompt_templates=list(CAPTION_TEMPLATES)),
        )

    def source_dir(self, dl_manager=None) -> str:
        if self._source_dir:
            return self._source_dir
        if dl_manager is not None:
            try:
                manual = dl_manager.manual_dir
            except (AssertionError, ValueError):  # tfds: manual_dir unset or missing
                manual = None
            if manual is not None and os.path.isdir(os.fspath(manual)) and os.path.exists(
                    os.path.join(os.fspath(manual), FILES["train_images"])):
                return os.fspath(manual)
        return os.environ.get("CLIPJAX_FASHION_MNIST_DIR", DEFAULT_DIR)

    def _split_generators(self, dl_manager):
        arrays = load_arrays(self.source_dir(dl_manager))
        tr_x, tr_y = arrays["train"]
        te_x, te_y = arrays["test"]
        n = len(tr_x) - NUM_VALIDATION
        return {
            "train": self._generate_examples(tr_x[:n], tr_y[:n], 0),
            "validation": self._generate_examples(tr_x[n:], tr_y[n:], n),
            "test": self._generate_examples(te_x, te_y, 0),
        }

    def _generate_examples(self, images, labels, offset: int):
        import io

        from PIL import Image

        for i, (img, lab) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=6)
            key = offset + i
            name = CLASSNAMES[int(lab)]
            yield key, {
                "image": buf.getvalue(),
                "label": int(lab),
                "caption": CAPTION_TEMPLATES[key % len(CAPTION_TEMPLATES)].format(name),
            }


def build_fashion_mnist(data_dir: str | os.PathLike | None = None, source_dir: str | None = None):
    """Prepare clipjax_fashion_mnist under data_dir (no-op when present); return the builder."""
    builder = ClipjaxFashionMnist(data_dir=resolve_data_dir(data_dir), source_dir=source_dir)
    with preparing(builder.data_dir_root, builder.name):  # one process writes, the others wait
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder
