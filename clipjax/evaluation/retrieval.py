"""Image <-> text retrieval recall@k with several captions per image (CLIP_benchmark's
definition: an image->text query is a hit when any of the image's captions ranks in the top k;
a text->image query when its image does).

`image_text_retrieval` is the one evaluator: training's periodic evaluation (datasets with
captions) calls it on the sharded training state, `retrieval_on_dataset` (evaluate.py --task
retrieval) on a split or collection with a loaded model."""

from __future__ import annotations

import numpy as np

from clipjax.evaluation.datasets import iterate_captioned, nonempty
from clipjax.evaluation.progress import progress_bar


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray, text_to_image: np.ndarray,
                      ks=(1, 5, 10)) -> dict:
    """Features L2-normalised; text_to_image[j] = index of the image text j describes."""
    sim = np.asarray(image_features, np.float32) @ np.asarray(text_features, np.float32).T
    text_to_image = np.asarray(text_to_image)
    out = {}
    i2t = np.argsort(-sim, axis=1, kind="stable")
    t2i = np.argsort(-sim.T, axis=1, kind="stable")
    for k in ks:
        hit = text_to_image[i2t[:, :k]] == np.arange(len(sim))[:, None]
        out[f"image_to_text_R@{k}"] = float(np.mean(hit.any(axis=1)))
        out[f"text_to_image_R@{k}"] = float(np.mean((t2i[:, :k] == text_to_image[:, None]).any(axis=1)))
    return out


def image_text_retrieval(encode_pixels, encode_texts, batches, ks=(1, 5, 10), progress=None):
    """-> (retrieval_metrics, images, texts) of (pixels, caption lists) `batches`: every
    image against every caption of every image; `progress(n)` after each batch."""
    img, txt, owner = [], [], []
    n_img = 0
    for pixels, captions in batches:
        img.append(encode_pixels(pixels))
        txt.append(encode_texts([c for caps in captions for c in caps]))
        owner += [n_img + i for i, caps in enumerate(captions) for _ in caps]
        n_img += len(pixels)
        if progress is not None:
            progress(len(pixels))
    return retrieval_metrics(np.concatenate(img), np.concatenate(txt), np.asarray(owner), ks), n_img, len(owner)


def retrieval_on_dataset(encoders, variables, source, split: str, examples: int,
                         progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task retrieval: the first `examples` (0: all) of `split` of a TFDS builder
    with captions, or of an ImageTextCollection. `encoders`: encode.CLIPEncoders.
    -> (metrics at R@1/5/10, extra: images, texts)."""
    encode_pixels, encode_texts = encoders.bind(variables)
    batches = nonempty(iterate_captioned(source, split, encoders.batch, examples), f"no examples in split {split!r}")
    with progress_bar(examples or 0, "retrieval", progress) as bar:
        metrics, images, texts = image_text_retrieval(encode_pixels, encode_texts, encoders.preprocessed(batches),
                                                      progress=bar.update)
    return metrics, dict(images=images, texts=texts)
