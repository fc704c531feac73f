"""Captioning of a Tag2Text: captions generated for images, scored with BLEU-1..4 and CIDEr-D
against every reference caption of each image (captioning_metrics.caption_scores).

Generation (beam search) is inference's, not this room's: the evaluator takes it as a function
`caption(preprocessed images) -> (captions, tags used)`, e.g. a bound LoadedTag2Text.caption."""

from __future__ import annotations

from typing import Sequence

from clipjax.data.tagging import eval_set
from clipjax.evaluation.captioning_metrics import caption_scores
from clipjax.evaluation.progress import progress_bar

# images per generate() call: beam search holds num_beams copies of each
CAPTION_BATCH = 64


def caption_quality(caption, images, references: Sequence[Sequence[str]], batch: int, progress=None):
    """-> (caption_scores, predicted captions, tag strings used) of `images` in batches of
    `batch`; `references[i]`: the reference captions of image i; `progress(n)` after each batch."""
    preds, used = [], []
    for i in range(0, len(images), batch):
        caps, tags = caption(images[i:i + batch])
        preds += caps
        used += tags
        if progress is not None:
            progress(len(caps))
    return caption_scores(dict(enumerate(preds)), dict(enumerate(references))), preds, used


def captioning_on_dataset(caption, source, split: str, examples: int, batch: int, image_size: int,
                          tag_names: Sequence[str], progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task captioning: the first `examples` images (0: all) of `split` of a TFDS
    builder with `captions`, or of an ImageTextCollection (its caption the one reference).
    -> (metrics, extra: images, samples = per image its tags, caption and references)."""
    data = eval_set(source, split, examples or 10 ** 9, image_size, tag_names)
    with progress_bar(len(data["images"]), "captioning", progress) as bar:
        metrics, preds, used = caption_quality(caption, data["images"], data["captions"],
                                               min(batch, CAPTION_BATCH), bar.update)
    samples = [dict(tags=t, caption=c, references=r) for t, c, r in zip(used, preds, data["captions"])]
    return metrics, dict(images=len(preds), samples=samples)
