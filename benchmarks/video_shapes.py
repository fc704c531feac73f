"""Video on clipjax_shapes scenes: zero-shot video classification, text->video retrieval and
temporal localisation with a CLIP, and (given a Tag2Text / RAM run) tags over time -- all
against the generator's ground truth (clipjax/apps/shapes_video.py).

    python benchmarks/video_shapes.py --clip runs/clip_shapes --tag2text runs/tag2text_shapes \
        --galleries 5 --videos-dir /tmp/shape_videos --output /tmp/video_shapes.json

The videos (H.264 MP4, 64 px, 8 fps, 8 s) are written with PyAV into --videos-dir (kept, with
one ground-truth JSON each) and read back through video.py's own reader, so the codec's
colour loss is part of the measurement. Galleries of --per-gallery videos with distinct main
objects; distractors only from pairs that are no video's main object in that gallery.

  classification   30-way zero-shot label of each video (the clipjax_shapes prompt templates) = its
                   main object, with each pooling of clipjax/apps/video.py (mean embedding, mean
                   of frame softmaxes, best segment); baseline: the middle frame alone
  retrieval        query "a photo of a {colour} {shape}." for each main object, ranked over its
                   gallery by best segment: R@1, R@5 (chance 1 / per_gallery, 5 / per_gallery)
  localisation     the returned span of that query in the right video: start and end each within
                   +-1 s of the truth (and the best segment inside the truth); baseline: the fixed
                   span of the mean true length centred in the video
  tags             (--tag2text) per key frame, the predicted colour and shape tags against the
                   objects visible at that instant (micro precision / recall), and per video
                   against every object that ever appears; with --captions also each key
                   frame's caption: does it name (colour and shape) an object visible then
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pr(tp, fp, fn) -> dict:
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    return dict(precision=round(p, 4), recall=round(r, 4), f1=round(2 * p * r / max(p + r, 1e-12), 4),
                tp=int(tp), fp=int(fp), fn=int(fn))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", required=True, help="a CLIP checkpoint trained on clipjax_shapes")
    p.add_argument("--tag2text", help="a Tag2Text / RAM run: also measure tags over time")
    p.add_argument("--galleries", type=int, default=5)
    p.add_argument("--per-gallery", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    p.add_argument("--segment", type=float, default=1.0)
    p.add_argument("--captions", action="store_true", help="with --tag2text: also caption every key frame")
    p.add_argument("--null-prompt", default="a photo.", help="video.py search's --null-prompt ('' for none)")
    p.add_argument("--tolerance", type=float, default=1.0, help="seconds: localisation is right within this")
    p.add_argument("--videos-dir", required=True, help="where the MP4s (and ground truth) are written")
    p.add_argument("--output", help="JSON file for the figures")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from tqdm import tqdm

    import clipjax
    from clipjax.apps import video as V
    from clipjax.apps.shapes_video import ALL_PAIRS, galleries, write_scene
    from clipjax.data.shapes_dataset import COLOR_NAMES, PROMPT_TEMPLATES, SHAPES
    from clipjax.evaluation.zeroshot import text_classifier

    t0 = time.time()
    gals = galleries(args.seed, args.galleries, args.per_gallery)
    clip = clipjax.load(args.clip)
    classnames = [f"{c} {s}" for c, s in ALL_PAIRS]
    classifier = text_classifier(clip.encode_text, classnames, PROMPT_TEMPLATES)
    t2t = clipjax.load(args.tag2text) if args.tag2text else None
    null = clip.encode_text([args.null_prompt])[0] if args.null_prompt else None

    n = sum(len(g) for g in gals)
    bar = tqdm(total=n, desc="videos", unit="video", disable=args.no_progress, file=sys.stderr)
    cls_hits = dict.fromkeys(V.POOLS, 0)
    mid_hits = 0
    r1 = r5 = loc_hits = inside_hits = base_hits = 0
    tag_frame = np.zeros(3)  # tp, fp, fn over key frames
    tag_video = np.zeros(3)
    cap_named = cap_frames = 0
    examples = []
    mean_len = float(np.mean([s.main.exit - s.main.enter for g in gals for s in g]))
    for gi, gallery in enumerate(gals):
        embeds = []
        for scene in gallery:
            path = write_scene(scene, args.videos_dir)
            v = V.embed_video(clip.encode_image, path, args.fps)
            embeds.append(v)
            label = classnames.index(scene.label)
            for pool in V.POOLS:
                probs = V.class_probs(v, classifier, clip.logit_scale, pool, args.segment)
                cls_hits[pool] += int(np.argmax(probs) == label)
            mid = v.embeds[int(np.argmin(np.abs(v.times - scene.duration / 2)))]
            mid_hits += int(np.argmax(classifier @ mid) == label)
            if t2t is not None:
                cap = V.caption_video(t2t, path, args.segment, rate=4.0, captions=args.captions)
                vocab = set(COLOR_NAMES) | set(SHAPES)
                seen = set()
                for seg in cap["segments"]:
                    pred = {x.strip() for x in seg["tags"].split("|")} & vocab
                    truth = {w for o in scene.objects if o.visible(seg["time"]) for w in (o.color, o.shape)}
                    seen |= pred
                    visible = [o for o in scene.objects if o.visible(seg["time"])]
                    if args.captions and visible:
                        words = set(seg["caption"].lower().replace(",", " ").split())
                        cap_frames += 1
                        cap_named += int(any({o.color, o.shape} <= words for o in visible))
                    tag_frame += (len(pred & truth), len(pred - truth), len(truth - pred))
                truth_v = {w for o in scene.objects for w in (o.color, o.shape)}
                tag_video += (len(seen & truth_v), len(seen - truth_v), len(truth_v - seen))
            bar.update(1)
        for j, scene in enumerate(gallery):
            query = f"a photo of a {scene.main.color} {scene.main.shape}."
            text = clip.encode_text([query])[0]
            ranked = V.search(embeds, text, args.segment, null_embed=null)
            order = [h["video"] for h in ranked]
            rank = order.index(embeds[j].path)
            r1 += int(rank == 0)
            r5 += int(rank < 5)
            hit = next(h for h in ranked if h["video"] == embeds[j].path)
            ok = (abs(hit["start"] - scene.main.enter) <= args.tolerance
                  and abs(hit["end"] - scene.main.exit) <= args.tolerance)
            loc_hits += int(ok)
            mid_best = sum(hit["best_segment"]) / 2
            inside_hits += int(scene.main.enter <= mid_best <= scene.main.exit)
            b0 = scene.duration / 2 - mean_len / 2
            base_hits += int(abs(b0 - scene.main.enter) <= args.tolerance
                             and abs(b0 + mean_len - scene.main.exit) <= args.tolerance)
            if gi == 0 and j < 5:
                examples.append(dict(video=os.path.basename(embeds[j].path), query=query, rank=rank,
                                     truth=[scene.main.enter, scene.main.exit], found=[hit["start"], hit["end"]]))
    bar.close()

    out = dict(
        clip=args.clip, tag2text=args.tag2text, videos=n, galleries=args.galleries, per_gallery=args.per_gallery,
        seed=args.seed, fps=args.fps, null_prompt=args.null_prompt, segment=args.segment, tolerance=args.tolerance,
        video_size=gals[0][0].size, video_fps=gals[0][0].fps, video_seconds=gals[0][0].duration,
        classification=dict(**{f"top1_pool_{k}": round(h / n, 4) for k, h in cls_hits.items()},
                            top1_middle_frame=round(mid_hits / n, 4),
                            chance=round(1 / len(classnames), 4)),
        retrieval=dict(r1=round(r1 / n, 4), r5=round(r5 / n, 4), chance_r1=round(1 / args.per_gallery, 4),
                       chance_r5=round(min(5, args.per_gallery) / args.per_gallery, 4)),
        localisation=dict(within_tolerance=round(loc_hits / n, 4), best_segment_inside=round(inside_hits / n, 4),
                          baseline_centred_mean_span=round(base_hits / n, 4), mean_true_seconds=round(mean_len, 3)),
        examples=examples, seconds=round(time.time() - t0, 1))
    if t2t is not None:
        out["tags"] = dict(key_frames=_pr(*tag_frame), videos=_pr(*tag_video))
        if args.captions:
            out["captions"] = dict(key_frames_with_objects=cap_frames,
                                   names_a_visible_object=round(cap_named / max(cap_frames, 1), 4))
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
