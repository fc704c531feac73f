"""Multi-label tagging of a Tag2Text / RAM: sigmoid tag probabilities of images, scored by
tagging_metrics.tagging_report (mAP, macro / micro precision, recall, F1 at thresholds).

`tag_probs_encoder` + `tagging_quality` are the one evaluator: training's periodic evaluation
(clipjax.tasks.tag2text) calls them on the sharded training state, `tagging_on_dataset`
(evaluate.py --task tagging) with a loaded model replicated on the mesh."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from clipjax.data.tagging import eval_set
from clipjax.evaluation.encode import global_batch, sharded_encoder
from clipjax.evaluation.tagging_metrics import tagging_report
from clipjax.models.tag2text import Tag2Text, tie_tag_encoder


def tag_probs_encoder(model: Tag2Text, mesh, rules, batch: int):
    """`encode(variables, preprocessed images) -> (N, num_tags)` sigmoid probabilities on the
    host: `model` jitted once, batches sharded over `mesh`, every process's rows gathered. The
    tag encoder is tied to the tagging head first (a no-op on variables tied already)."""

    def probs(variables, images):
        v = {**variables, "params": tie_tag_encoder(variables["params"])}
        t = model.apply(v, images, method=Tag2Text.image_tokens)
        return jax.nn.sigmoid(model.apply(v, t, method=Tag2Text.tag_logits))

    return sharded_encoder(probs, mesh, rules, global_batch(batch, mesh))


def tagging_quality(encode_probs, images: np.ndarray, tags: np.ndarray, thresholds,
                    tag_names: Optional[Sequence[str]] = None) -> dict:
    """tagging_report of `encode_probs(images)` against the multi-hot `tags`; a tag is
    predicted above its threshold (one, or one per tag); with `tag_names`, per-tag rows too."""
    return tagging_report(encode_probs(images), tags, thresholds, tag_names=tag_names)


def tagging_on_dataset(model: Tag2Text, variables, mesh, rules, source, split: str, examples: int, batch: int,
                       tag_names: Sequence[str], thresholds, image_size: int, dataset: str = "the data"
                       ) -> tuple[dict, dict]:
    """evaluate.py --task tagging: the first `examples` images (0: all) of `split` of a TFDS
    builder with multi-hot `tags`, or of an ImageTextCollection (its tag names matched to
    `tag_names`). -> (metrics with per-tag rows, extra: images, thresholds (up to 8 distinct),
    unknown_tags)."""
    data = eval_set(source, split, examples or 10 ** 9, image_size, tag_names)
    if data["tags"].shape[1] != len(tag_names):
        raise ValueError(f"{dataset} has {data['tags'].shape[1]} tags, the model {len(tag_names)}")
    encode = tag_probs_encoder(model, mesh, rules, batch)
    metrics = tagging_quality(lambda x: encode(variables, x), data["images"], data["tags"], thresholds, tag_names)
    return metrics, dict(images=len(data["images"]), thresholds=sorted(set(float(t) for t in thresholds))[:8],
                         unknown_tags=data["unknown_tags"])
