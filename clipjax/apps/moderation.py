"""Content moderation with CLIP: a policy (clipjax.apps.moderation_policy) names categories,
each with positive and negative prompts and a threshold; an image is flagged for a category
when its score reaches the threshold. moderate.py is the command; calibration on labelled data
is clipjax.apps.moderation_calibration.

The score of category c for image x:

    e_p     = normalise(mean over templates t of normalise(text_embedding(t.format(p))))
              (CLIP's prompt ensembling, as clipjax.evaluation.zeroshot.text_classifier)
    l_p(x)  = logit_scale * cos(image_embedding(x), e_p)   for p in positives(c) + negatives(c)
    score_c = sum over p in positives(c) of softmax_p(l(x))

that is, the probability CLIP's own softmax gives to "one of the positives" when the choice is
among the category's positive and negative prompts. The softmax at the model's learned
temperature is what CLIP's contrastive loss trains, so scores are in [0, 1] and comparable
across categories and images, unlike raw cosines (which sit in a narrow, prompt-dependent band);
summing over positives scores the union (three kinds of footwear do not split the category's
mass, as a max or mean over positive prompts would); each category is its own softmax, so an
image can be flagged for several. A model's logit_bias (SigLIP) cancels in the softmax. The
score depends on what the negatives cover: calibrate thresholds on labelled data
(moderate.py --calibrate).

Images are read with clipjax.data.images (the robust reader of the training, evaluation and
search paths; decoded by clipjax.preprocess.pil_to_rgb_array), preprocessed as clipjax.load
models expect (clipjax.preprocess.preprocess_images) and embedded in batches by the
evaluators' sharded encoders (clipjax.evaluation.encode.CLIPEncoders, over every local device,
as clipjax.search.Embedder does). Unreadable images are skipped, counted and reported.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from clipjax import sharding as shd
from clipjax.apps.moderation_policy import Policy
from clipjax.data.collection import IMAGE_EXTS
from clipjax.data.images import Counts, decode_image, read_file
from clipjax.errors import ConfigError
from clipjax.evaluation.encode import CLIPEncoders, replicate_on_local_devices
from clipjax.evaluation.progress import progress_bar
from clipjax.inference.clip import LoadedCLIP
from clipjax.preprocess import preprocess_images

SCORE_DEFINITION = ("softmax over the category's positive and negative prompts (each a template ensemble) of "
                    "logit_scale * cosine similarity, summed over the positive prompts; flagged when score >= threshold")
SKIP_REASONS = {
    "skipped_missing": "missing or unreadable",
    "skipped_not_a_file": "not a regular file",
    "skipped_too_large": "larger than 64 MiB",
    "skipped_corrupt": "not a decodable image",
    "skipped_truncated": "truncated image file",
}


# ------------------------------------------------------------------------------ the model
class Encoders:
    """A loaded CLIP's image and text encoders: the evaluators' sharded ones
    (CLIPEncoders over every local device, padded global batches), bound to its weights."""

    def __init__(self, clip: LoadedCLIP, batch_size: int = 64):
        if not isinstance(clip, LoadedCLIP):
            raise ConfigError(f"moderation needs a CLIP checkpoint, not a {type(clip).__name__.replace('Loaded', '')} one")
        mesh, variables = replicate_on_local_devices(clip.variables)
        enc = CLIPEncoders(clip.cfg, mesh, shd.DEFAULT_RULES, batch_size, clip.tokenize)
        self.encode_pixels, self.encode_texts = enc.bind(variables)
        self.clip = clip
        self.image_size = clip.image_size
        self.logit_scale = clip.logit_scale

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, 3) images of any size -> normalised embeddings."""
        return np.asarray(self.encode_pixels(preprocess_images(list(images), self.image_size)), np.float32)


def load_clip(checkpoint: str) -> LoadedCLIP:
    from clipjax.inference.load import load

    clip = load(str(checkpoint))
    if not isinstance(clip, LoadedCLIP):
        raise ConfigError(f"{checkpoint} is a {type(clip).__name__.replace('Loaded', '')} checkpoint; "
                          "moderation needs a CLIP checkpoint")
    return clip


def prompt_embeddings(encode_texts: Callable, prompts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(len(prompts), d): per prompt, the normalised mean of its templates' normalised text
    embeddings (CLIP's ensembling; clipjax.evaluation.zeroshot.text_classifier's rule)."""
    texts = [t.format(p) for p in prompts for t in templates]
    emb = np.asarray(encode_texts(texts), np.float64).reshape(len(prompts), len(templates), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def long_prompts(clip: LoadedCLIP, policy: Policy) -> list[str]:
    """Template-filled prompts longer than the text tower's context (cut there when encoded)."""
    if clip.cfg.text.kind != "causal":
        return []
    from clipjax.tokenizer import tokenize

    ctx = clip.cfg.text.context_length
    texts = sorted({t.format(p) for c in policy.categories for p in c.prompts for t in c.templates})
    lengths = np.count_nonzero(tokenize(texts, context_length=4096), axis=1)
    return [f"{t!r} ({n} tokens)" for t, n in zip(texts, lengths) if n > ctx]


class PolicyScorer:
    """Scores of a policy's categories for image embeddings (see the module docstring)."""

    def __init__(self, policy: Policy, encode_texts: Callable, logit_scale: float):
        self.policy = policy
        self.logit_scale = float(logit_scale)
        self.embeddings = [prompt_embeddings(encode_texts, c.prompts, c.templates) for c in policy.categories]

    def scores(self, image_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N, C) float64 in [0, 1], index of the highest-scoring prompt (N, C) into
        each category's positives + negatives)."""
        x = np.asarray(image_embeddings, np.float64)
        scores = np.zeros((len(x), len(self.embeddings)))
        top = np.zeros((len(x), len(self.embeddings)), np.int64)
        for j, (c, e) in enumerate(zip(self.policy.categories, self.embeddings)):
            logits = self.logit_scale * x @ e.T
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            scores[:, j] = np.clip(p[:, :len(c.positive)].sum(axis=1), 0.0, 1.0)
            top[:, j] = logits.argmax(axis=1)
        return scores, top


# ------------------------------------------------------------------------------ images
def expand_images(args: Sequence[str]) -> list[str]:
    """Image paths from files, folders (every image file under them, recursively, sorted) and
    globs (`**` recursive), in the order given, each once. A named file is kept even when it
    does not exist (it is skipped and reported when read); a glob matching nothing, a folder
    holding no image file, or nothing at all is a ConfigError."""
    if not args:
        raise ConfigError("no images given: name image files, folders or globs")
    exts = tuple("." + e for e in IMAGE_EXTS)
    out: list[str] = []
    for a in args:
        if os.path.isdir(a):
            found = []
            for dirpath, dirnames, filenames in os.walk(a, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames
                          if f.lower().endswith(exts) and not f.startswith(".")]
            if not found:
                raise ConfigError(f"folder {a} holds no image file ({', '.join(IMAGE_EXTS)})")
            out += sorted(found)
        elif glob.has_magic(a):
            found = sorted(p for p in glob.glob(a, recursive=True) if not os.path.isdir(p))
            if not found:
                raise ConfigError(f"no file matches {a!r}")
            out += found
        else:
            out.append(a)
    return list(dict.fromkeys(out))


def read_images(paths: Sequence[str], counts: Counts) -> Iterator[tuple[str, Optional[np.ndarray], str]]:
    """(path, uint8 (H, W, 3) image or None, why it was skipped) for each path, through
    clipjax.data.images (every skip counted in `counts` by its policy)."""
    for path in paths:
        before = counts.as_dict()
        data = read_file(path, counts)
        image = decode_image(data, counts) if data is not None else None
        if image is not None:
            counts.decoded += 1
            yield path, image, ""
            continue
        after = counts.as_dict()
        why = next((SKIP_REASONS.get(k, k) for k in SKIP_REASONS if after[k] > before[k]), "unreadable")
        yield path, None, why


@dataclasses.dataclass
class Scored:
    paths: list[str]  # the images scored, in input order
    index: np.ndarray  # their positions in the paths given
    scores: np.ndarray  # (N, C)
    top: np.ndarray  # (N, C) index of the best prompt of each category
    skipped: list[tuple[str, str]]  # (path, reason)
    counts: Counts


def score_paths(policy: Policy, encoders: Encoders, paths: Sequence[str], *, batch_size: int = 64,
                progress: bool = True, on_skip: Optional[Callable[[str, str], None]] = None,
                scorer: Optional[PolicyScorer] = None) -> Scored:
    """Read, embed and score `paths` in batches (a progress bar on stderr); unreadable images
    are skipped (on_skip(path, reason) for each)."""
    scorer = scorer or PolicyScorer(policy, encoders.encode_texts, encoders.logit_scale)
    counts = Counts()
    kept, index, skipped, scores, tops = [], [], [], [], []
    batch: list[tuple[int, str, np.ndarray]] = []

    def flush():
        if batch:
            s, t = scorer.scores(encoders.encode_images([im for _, _, im in batch]))
            index.extend(i for i, _, _ in batch)
            kept.extend(p for _, p, _ in batch)
            scores.append(s)
            tops.append(t)
            bar.update(len(batch))
            batch.clear()

    with progress_bar(len(paths), "scoring images", progress) as bar:
        for i, (path, image, why) in enumerate(read_images(paths, counts)):
            if image is None:
                skipped.append((path, why))
                bar.update(1)
                if on_skip is not None:
                    on_skip(path, why)
                continue
            batch.append((i, path, image))
            if len(batch) >= batch_size:
                flush()
        flush()
    c = len(policy.categories)
    return Scored(kept, np.asarray(index, np.int64), np.concatenate(scores) if scores else np.zeros((0, c)),
                  np.concatenate(tops) if tops else np.zeros((0, c), np.int64), skipped, counts)


# ------------------------------------------------------------------------------ output
def result_document(policy: Policy, scored: Scored, checkpoint: str = "") -> dict:
    """The JSON document of a moderation run (see docs/moderation.md)."""
    cats = policy.categories
    images = []
    flagged_counts = {c.name: 0 for c in cats}
    any_flagged = 0
    for i, path in enumerate(scored.paths):
        row_scores = {c.name: round(float(scored.scores[i, j]), 6) for j, c in enumerate(cats)}
        flagged = {c.name: row_scores[c.name] for j, c in enumerate(cats) if scored.scores[i, j] >= c.threshold}
        for name in flagged:
            flagged_counts[name] += 1
        any_flagged += bool(flagged)
        images.append({"image": path, "flagged": flagged, "scores": row_scores,
                       "top_prompt": {c.name: c.prompts[int(scored.top[i, j])] for j, c in enumerate(cats)}})
    n = len(scored.paths)
    return {
        "checkpoint": str(checkpoint),
        "policy": {"path": policy.source, "name": policy.name},
        "score": SCORE_DEFINITION,
        "categories": {c.name: {"threshold": c.threshold, "positive": list(c.positive), "negative": list(c.negative),
                                "templates": list(c.templates)} for c in cats},
        "images": images,
        "skipped": [{"image": p, "reason": r} for p, r in scored.skipped],
        "summary": {"images": n, "skipped": len(scored.skipped), "flagged": flagged_counts,
                    "flagged_any": any_flagged},
    }


def summary_table(doc: dict, max_rows: int = 50) -> str:
    """Per image (up to max_rows; 0: all) its scores and flagged categories, then per category
    its threshold and how many images it flagged."""
    names = list(doc["categories"])
    rows = doc["images"] if max_rows <= 0 else doc["images"][:max_rows]
    width = max([len("image")] + [len(r["image"]) for r in rows])
    width = min(width, 60)
    colw = [max(8, len(n)) for n in names]

    def cut(s):
        return s if len(s) <= width else "…" + s[-(width - 1):]

    lines = ["  ".join([f"{'image':<{width}}"] + [f"{n:>{w}}" for n, w in zip(names, colw)] + ["flagged"])]
    for r in rows:
        cells = [f"{r['scores'][n]:>{w}.3f}" for n, w in zip(names, colw)]
        lines.append("  ".join([f"{cut(r['image']):<{width}}"] + cells + [", ".join(r["flagged"]) or "-"]))
    more = len(doc["images"]) - len(rows)
    if more > 0:
        lines.append(f"... and {more} more images (--max-rows 0 shows all; --json has every score)")
    s = doc["summary"]
    w = max([len("category")] + [len(n) for n in names])
    lines += ["", f"{'category':<{w}}  threshold  flagged"]
    for n in names:
        k = s["flagged"][n]
        frac = f" ({k / s['images']:.1%})" if s["images"] else ""
        lines.append(f"{n:<{w}}  {doc['categories'][n]['threshold']:>9.4f}  {k} of {s['images']}{frac}")
    lines.append(f"{s['flagged_any']} of {s['images']} images flagged for at least one category; "
                 f"{s['skipped']} skipped as unreadable")
    return "\n".join(lines)
