"""Video with a CLIP (and a Tag2Text / RAM tagger): frames sampled at a rate, embedded one batch
at a time, pooled over the whole video (mean) and per fixed-length segment.

  classify   the mean frame embedding against a zero-shot text classifier (per segment too)
  search     a text against every segment of every video: the video whose best segment matches
             best wins, and the span around that segment is *when*
  caption    a tagger on one key frame per segment (the frame nearest the segment's middle):
             tags with the time spans they hold over, and captions merged over time

*When* (localise): the best segment, grown over neighbouring segments while their score stays
at or above half-way between the video's lowest and highest segment score (a half-maximum rule,
chosen here: it needs no absolute threshold, which a CLIP's cosine scale would make arbitrary),
on scores calibrated by a content-free prompt (`search`'s `null_embed`).

Memory stays bounded by one frame batch: only embeddings (T x D floats), or the tagger's strings,
are kept per video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipjax.apps.video_io import VideoFrames


@dataclass
class VideoEmbedding:
    path: str
    times: np.ndarray  # (T,) seconds of the sampled frames
    embeds: np.ndarray  # (T, D) normalised frame embeddings
    duration: float
    bad_packets: int = 0

    def pooled(self) -> np.ndarray:
        return _normalise(self.embeds.mean(axis=0))

    def segments(self, seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts (K,), ends (K,), normalised mean embeddings (K, D)) of the `seconds`-long
        segments that hold at least one sampled frame."""
        return segment_means(self.times, self.embeds, self.duration, seconds)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def segment_means(times, embeds, duration: float, seconds: float):
    if seconds <= 0:
        raise ValueError(f"the segment length must be positive, got {seconds}")
    idx = np.floor(np.asarray(times) / seconds + 1e-6).astype(int)
    keys = np.unique(idx)
    starts = keys * seconds
    ends = np.minimum((keys + 1) * seconds, max(duration, float(starts[-1]) + 1e-3))
    means = np.stack([embeds[idx == k].mean(axis=0) for k in keys])
    return starts.astype(np.float32), ends.astype(np.float32), _normalise(means)


def embed_video(encode_images, path: str, rate: float = 2.0, batch: int = 32) -> VideoEmbedding:
    """`encode_images(list of uint8 (H, W, 3))` -> normalised (N, D): a LoadedCLIP's encode_image."""
    reader = VideoFrames(path, rate=rate, batch=batch)
    times, embeds = [], []
    for t, frames in reader:
        times.append(t)
        embeds.append(np.asarray(encode_images(list(frames)), np.float32))
    return VideoEmbedding(path, np.concatenate(times), np.concatenate(embeds), reader.info.duration,
                          reader.bad_packets)


# ------------------------------------------------------------------------------ classify
POOLS = ("mean", "frames", "max")


def class_probs(v: VideoEmbedding, classifier: np.ndarray, logit_scale: float, pool: str = "mean",
                segment_seconds: float = 1.0) -> np.ndarray:
    """(C,) class probabilities of a video:
      mean    softmax of the mean frame embedding's logits (one embedding for the whole video)
      frames  the mean of every frame's softmax (late fusion: each frame votes)
      max     softmax over classes of each class's best segment logit (a class is as present as
              its best moment: what `search` ranks by)"""
    if pool == "mean":
        logits = logit_scale * (classifier @ v.pooled())
    elif pool == "frames":
        return _softmax(logit_scale * (v.embeds @ classifier.T)).mean(axis=0)
    elif pool == "max":
        _, _, means = v.segments(segment_seconds)
        logits = logit_scale * (means @ classifier.T).max(axis=0)
    else:
        raise ValueError(f"unknown pooling {pool!r}; choose from {', '.join(POOLS)}")
    return _softmax(logits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(v: VideoEmbedding, classifier: np.ndarray, classnames, logit_scale: float, top: int = 5,
             segment_seconds: float | None = None, pool: str = "mean") -> dict:
    """The video's zero-shot label (`class_probs` with `pool`), and, with `segment_seconds`, each
    segment's label from its mean embedding."""
    def ranked(p):
        order = np.argsort(-p)[:top]
        return [dict(label=classnames[i], prob=float(p[i])) for i in order]

    out = dict(video=v.path, duration=round(v.duration, 3), frames=len(v.times), pool=pool)
    out["top"] = ranked(class_probs(v, classifier, logit_scale, pool, segment_seconds or 1.0))
    out["label"] = out["top"][0]["label"]
    if segment_seconds:
        starts, ends, means = v.segments(segment_seconds)
        out["segments"] = [dict(start=float(s), end=float(e), **ranked(_softmax(logit_scale * (classifier @ m)))[0])
                           for s, e, m in zip(starts, ends, means)]
    if v.bad_packets:
        out["bad_packets"] = v.bad_packets
    return out


# -------------------------------------------------------------------------------- search
def localise(scores: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[int, float, float]:
    """(best segment, span start, span end): the best segment grown over contiguous neighbours
    whose score is at least half-way from the video's lowest to its highest segment score."""
    scores = np.asarray(scores, np.float64)
    best = int(np.argmax(scores))
    half = scores.min() + 0.5 * (scores.max() - scores.min())
    lo = hi = best
    while lo > 0 and scores[lo - 1] >= half and np.isclose(ends[lo - 1], starts[lo]):
        lo -= 1
    while hi < len(scores) - 1 and scores[hi + 1] >= half and np.isclose(starts[hi + 1], ends[hi]):
        hi += 1
    return best, float(starts[lo]), float(ends[hi])


def search(videos: list[VideoEmbedding], text_embed: np.ndarray, segment_seconds: float = 1.0,
           top: int | None = None, null_embed: np.ndarray | None = None) -> list[dict]:
    """Videos ranked by their best segment's cosine with the (normalised) text embedding, each
    with the span where the text matches (`localise`). With `null_embed` (a content-free
    prompt's embedding, "a photo.") the span is found on the cosine *minus* the segment's cosine
    with that prompt: a frame's similarity to any text has a baseline of its own (an empty
    background can sit near the object's score; a frame with other objects far below), and the
    difference leaves what the text adds (see docs/video.md for the measured effect). The ranking
    across videos stays on the plain cosine, which ranked better on the validation scenes."""
    hits = []
    for v in videos:
        starts, ends, means = v.segments(segment_seconds)
        scores = means @ text_embed
        best, s, e = localise(scores if null_embed is None else scores - means @ null_embed, starts, ends)
        hits.append(dict(video=v.path, score=float(scores.max()), start=s, end=e,
                         best_segment=[float(starts[best]), float(ends[best])]))
    hits.sort(key=lambda h: -h["score"])
    return hits[:top] if top else hits


# ------------------------------------------------------------------------------- caption
class KeyFrames:
    """Iterate (times, frames) batches holding one key frame per segment: the first sampled
    frame at or after the segment's middle, else the segment's last sampled frame. `reader`
    (duration, bad packets) is filled in as it goes."""

    def __init__(self, path: str, segment_seconds: float, rate: float, batch: int = 16):
        if segment_seconds <= 0:
            raise ValueError(f"the segment length must be positive, got {segment_seconds}")
        self.reader = VideoFrames(path, rate=rate, batch=batch)
        self.seconds, self.batch = segment_seconds, batch

    def __iter__(self):
        out_t, out_f = [], []
        seg, chosen, last = None, False, None
        for times, frames in self.reader:
            for t, f in zip(times, frames):
                k = int(np.floor(t / self.seconds + 1e-6))
                if k != seg:
                    if seg is not None and not chosen:
                        out_t.append(last[0])
                        out_f.append(last[1])
                    seg, chosen = k, False
                last = (float(t), f)
                if not chosen and t + 1e-6 >= (k + 0.5) * self.seconds:
                    out_t.append(float(t))
                    out_f.append(f)
                    chosen = True
                if len(out_f) >= self.batch:
                    yield np.asarray(out_t, np.float32), np.stack(out_f)
                    out_t, out_f = [], []
        if seg is not None and not chosen:
            out_t.append(last[0])
            out_f.append(last[1])
        if out_f:
            yield np.asarray(out_t, np.float32), np.stack(out_f)


def caption_video(tagger, path: str, segment_seconds: float = 1.0, rate: float = 4.0, captions: bool = True,
                  batch: int = 16, num_beams: int = 3) -> dict:
    """Tags and captions of one key frame per segment, aggregated over time: each tag with the
    spans it holds over (consecutive segments merged) and the fraction of key frames that carry
    it; captions with their spans (a caption repeated by consecutive segments merged into one)."""
    segs = []
    keys = KeyFrames(path, segment_seconds, rate, batch)
    for times, frames in keys:
        pixels = tagger.preprocess(list(frames))
        tags = tagger.tags(pixels)
        caps = tagger.caption(pixels, tags, num_beams=num_beams)[0] if captions else [None] * len(tags)
        for t, tg, c in zip(times, tags, caps):
            k = int(np.floor(t / segment_seconds + 1e-6))
            segs.append(dict(start=k * segment_seconds, end=(k + 1) * segment_seconds, time=float(t),
                             tags=[x.strip() for x in tg.split("|") if x.strip()], caption=c))
    reader = keys.reader
    duration = reader.info.duration
    for s in segs:
        s["end"] = min(s["end"], max(duration, s["start"]))
    tag_spans: dict[str, list] = {}
    for s in segs:
        for tg in s["tags"]:
            spans = tag_spans.setdefault(tg, [])
            if spans and np.isclose(spans[-1][1], s["start"]):
                spans[-1][1] = s["end"]
            else:
                spans.append([s["start"], s["end"]])
    tags = sorted(({"tag": tg, "spans": sp, "fraction": sum(tg in s["tags"] for s in segs) / len(segs)}
                   for tg, sp in tag_spans.items()), key=lambda d: (-d["fraction"], d["tag"]))
    out = dict(video=path, duration=round(duration, 3), key_frames=len(segs), tags=tags,
               segments=[dict(s, tags=" | ".join(s["tags"])) for s in segs])
    if captions:
        merged = []
        for s in segs:
            if merged and merged[-1]["caption"] == s["caption"] and np.isclose(merged[-1]["end"], s["start"]):
                merged[-1]["end"] = s["end"]
            else:
                merged.append(dict(start=s["start"], end=s["end"], caption=s["caption"]))
        out["captions"] = merged
    if reader.bad_packets:
        out["bad_packets"] = reader.bad_packets
    return out
