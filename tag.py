"""Tag and caption images with a Tag2Text / RAM model.

    python tag.py --checkpoint runs/tag2text_shapes IMAGE [IMAGE ...]
    python tag.py --checkpoint runs/tag2text_shapes IMAGE --tags "red | circle | small"
    python tag.py --checkpoint RAM_RUN IMAGE --new-tags "rhombus,teal shape" --clip CLIP_CHECKPOINT

Prints, per image, the predicted tags (per-class thresholds of the model) and a caption
written by beam search guided by those tags — or by --tags you give (one " | "-separated
string used for every image). RAM models recognise --new-tags (comma-separated names) without
retraining: their CLIP text embeddings (RAM's 63-prompt ensemble, from --clip) become the tag
queries; --openset-threshold (0.5, RAM's default for unseen names) decides. --json writes the
results as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a Tag2Text / RAM training run (clipjax checkpoint)")
    p.add_argument("images", nargs="+")
    p.add_argument("--tags", default=None, help='guide the caption with these tags ("a | b | c")')
    p.add_argument("--new-tags", default="", help="RAM open vocabulary: comma-separated new tag names")
    p.add_argument("--clip", default="", help="the CLIP whose text tower embeds --new-tags (RAM)")
    p.add_argument("--openset-threshold", type=float, default=0.5)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=30)
    p.add_argument("--min-length", type=int, default=5)
    p.add_argument("--sample", action="store_true", help="nucleus sampling (top_p 0.9) instead of beam search")
    p.add_argument("--no-caption", action="store_true")
    p.add_argument("--json", default="", help="write results as JSON lines here")
    args = p.parse_args(argv)

    import clipjax

    try:
        model = clipjax.load(args.checkpoint)
        if not hasattr(model, "tag_probs"):
            raise ValueError(f"{args.checkpoint} is not a Tag2Text / RAM model")
        images = model.preprocess(args.images)
        probs = model.tag_probs(images)
        tags = model.tags(images, probs)
        rows = [dict(image=path, tags=t) for path, t in zip(args.images, tags)]
        if args.new_tags:
            names = [n.strip() for n in args.new_tags.split(",") if n.strip()]
            if not args.clip:
                raise ValueError("--new-tags needs --clip: the CLIP text tower that embeds the new names")
            from clipjax.models.tagging import build_label_embeddings

            clip = clipjax.load(args.clip)
            emb = build_label_embeddings(names, lambda texts: clip.encode_text(texts, normalize=False))
            for row, t in zip(rows, model.openset_tags(images, names, emb, args.openset_threshold)):
                row["new_tags"] = t
        if not args.no_caption and model.cfg.captioning:
            guide = None if args.tags is None else [args.tags] * len(images)
            caps, used = model.caption(images, guide, num_beams=args.num_beams, max_length=args.max_length,
                                       min_length=args.min_length, sample=args.sample)
            for row, c, u in zip(rows, caps, used):
                row.update(caption=c, caption_tags=u)
    except (clipjax.CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"tag.py: error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['image']}\n  tags:    {row['tags'] or '(none)'}")
        if "new_tags" in row:
            print(f"  new:     {row['new_tags'] or '(none)'}")
        if "caption" in row:
            print(f"  caption: {row['caption']}" + ("" if args.tags is None else f"   (tags: {row['caption_tags']})"))
    if args.json:
        with open(args.json, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
