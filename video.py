"""Video with CLIP: zero-shot classification, text search with the time span, and tags/captions
over time. Frames are read with PyAV, sampled at --fps, embedded in batches (memory bounded by
one batch, whatever the video's length).

    python video.py classify --checkpoint runs/clip_shapes --labels "red circle,blue star" clips/*.mp4
    python video.py search   --checkpoint runs/clip_shapes --text "a photo of a red circle." clips/*.mp4
    python video.py caption  --checkpoint runs/tag2text_shapes clips/a.mp4

classify: frame embeddings against the labels through --templates, pooled by --pool (default:
the mean of the frames' softmaxes); --per-segment adds each segment's label. search: every
video's S-second segments against the text; videos ranked by their best segment, each with the
span around it where the text holds (clipjax/apps/video.py: a half-maximum rule on the cosine
minus that of --null-prompt, default "a photo."). caption: a Tag2Text / RAM run on one key frame
per segment: tags with the spans they hold over, and captions merged over time.

Output: JSON on stdout (or --output FILE). A video that cannot be read is skipped, named on
stderr and counted in the JSON ("skipped"); exit code 2 when none could be read.
"""

from __future__ import annotations

import argparse
import json
import sys


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, what):
        q.add_argument("--checkpoint", required=True, help=what)
        q.add_argument("videos", nargs="+", help="video files (anything FFmpeg reads: mp4, webm, mkv, avi, ...)")
        q.add_argument("--segment", type=float, default=1.0, help="segment length in seconds (default 1)")
        q.add_argument("--output", help="write the JSON here instead of stdout")
        q.add_argument("--batch-size", type=int, default=32)
        q.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("classify", help="zero-shot label of each video")
    common(c, "a CLIP checkpoint / workdir")
    c.add_argument("--labels", help="comma-separated class names")
    c.add_argument("--labels-file", help="class names, one per line")
    c.add_argument("--templates", default="a photo of a {}.",
                   help="'|'-separated prompt templates with {} for the label (default 'a photo of a {}.')")
    c.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    c.add_argument("--top", type=int, default=5)
    c.add_argument("--pool", choices=("mean", "frames", "max"), default="frames",
                   help="how frames make the video's label: the mean embedding, the mean of the frames' "
                        "softmaxes (default: best on the validation scenes, docs/video.md), or each "
                        "label's best --segment")
    c.add_argument("--per-segment", action="store_true", help="also label each --segment")

    s = sub.add_parser("search", help="which videos show a text, and when")
    common(s, "a CLIP checkpoint / workdir")
    s.add_argument("--text", required=True, help="what to look for (encoded as given, like search.py)")
    s.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    s.add_argument("--top", type=int, default=10)
    s.add_argument("--null-prompt", default="a photo.",
                   help="a content-free prompt whose similarity is subtracted before finding the span "
                        "(default 'a photo.'; '' to find it on the plain cosine; see docs/video.md)")

    k = sub.add_parser("caption", help="tags and captions of key frames, over time")
    common(k, "a Tag2Text or RAM run")
    k.add_argument("--fps", type=float, default=4.0,
                   help="frames decoded per second to pick key frames from (default 4)")
    k.add_argument("--no-captions", action="store_true", help="tags only (RAM++ has no caption decoder)")
    k.add_argument("--beams", type=int, default=3)
    return p.parse_args(argv)


def _labels(args) -> list[str]:
    if bool(args.labels) == bool(args.labels_file):
        raise ValueError("give the class names with exactly one of --labels or --labels-file")
    if args.labels:
        names = [x.strip() for x in args.labels.split(",")]
    else:
        with open(args.labels_file) as f:
            names = [line.strip() for line in f if line.strip()]
    if len(names) < 2 or not all(names):
        raise ValueError("classification needs at least two non-empty labels")
    if len(set(names)) != len(names):
        raise ValueError("a label is repeated")
    return names


def _templates(text: str) -> list[str]:
    ts = [t.strip() for t in text.split("|") if t.strip()]
    if not ts or any("{}" not in t for t in ts):
        raise ValueError(f"--templates must be '|'-separated templates each holding {{}}: {text!r}")
    return ts


def main(argv=None) -> int:
    args = _args(argv)
    import os

    from tqdm import tqdm

    import clipjax
    from clipjax.apps import video as V
    from clipjax.apps.video_io import VideoError
    from clipjax.errors import CheckpointError

    def fail(msg):
        print(f"video.py: error: {msg}", file=sys.stderr)
        return 2

    try:
        if args.segment <= 0 or args.fps <= 0 or args.batch_size <= 0:
            raise ValueError("--segment, --fps and --batch-size must be positive")
        missing = [v for v in args.videos if not os.path.exists(v)]
        if missing and len(missing) == len(args.videos):
            raise ValueError(f"no such video: {', '.join(missing)}")
        if args.command == "classify":
            names, templates = _labels(args), _templates(args.templates)
        model = clipjax.load(args.checkpoint)
        if args.command == "caption":
            if not hasattr(model, "tags"):
                raise ValueError(f"{args.checkpoint} is not a Tag2Text / RAM run")
            if not args.no_captions and not model.cfg.captioning:
                raise ValueError(f"{args.checkpoint} has no caption decoder (RAM++): pass --no-captions for tags only")
        elif not hasattr(model, "encode_text") or hasattr(model, "segment"):
            raise ValueError(f"{args.checkpoint} is not a CLIP checkpoint")
    except (CheckpointError, ValueError, OSError) as e:
        return fail(e)

    results, skipped = [], []
    bar = tqdm(args.videos, desc=args.command, unit="video", disable=args.no_progress, file=sys.stderr)
    embeds = []
    for path in bar:
        try:
            if args.command == "caption":
                results.append(V.caption_video(model, path, args.segment, args.fps, captions=not args.no_captions,
                                               batch=args.batch_size, num_beams=args.beams))
            else:
                embeds.append(V.embed_video(model.encode_image, path, args.fps, args.batch_size))
        except (VideoError, OSError) as e:
            skipped.append(dict(video=path, reason=str(e)))
            if len(args.videos) > 1:
                tqdm.write(f"video.py: skipped: {e}", file=sys.stderr)
    bar.close()
    if not results and not embeds:
        return fail(skipped[0]["reason"] if len(args.videos) == 1 else
                    f"none of the {len(args.videos)} videos could be read")

    if args.command == "classify":
        from clipjax.evaluation.zeroshot import text_classifier

        classifier = text_classifier(model.encode_text, names, templates)
        results = [V.classify(v, classifier, names, model.logit_scale, args.top,
                              args.segment if args.per_segment else None, pool=args.pool) for v in embeds]
    elif args.command == "search":
        text = model.encode_text([args.text])[0]
        null = model.encode_text([args.null_prompt])[0] if args.null_prompt else None
        results = V.search(embeds, text, args.segment, args.top, null)
    out = dict(command=args.command, checkpoint=args.checkpoint, results=results)
    if args.command == "search":
        out.update(text=args.text, null_prompt=args.null_prompt)
    if skipped:
        out["skipped"] = skipped
        print(f"video.py: {len(skipped)} of {len(args.videos)} videos skipped (unreadable)", file=sys.stderr)
    text = json.dumps(out, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
