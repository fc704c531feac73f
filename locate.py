"""Where in an image does a text match? A heatmap and its peak, without boxes.

    python locate.py --checkpoint runs/clip_shapes --image photo.png --text "the red star" --output out/
    python locate.py --checkpoint runs/clip_shapes --checkpoint runs/clipseg_shapes --image photo.png \
        --text "the red star" --text "the blue circle" --output out/

--checkpoint (repeatable): a CLIP with a ViT image tower (the heatmap is MaskCLIP's: each patch
token's cosine with the text, see clipjax/apps/localisation.py) or a CLIPSeg checkpoint (its mask
probability). Either map is resized to the image's own height x width and its peak is the argmax.
Prints and writes `locate.json` (per checkpoint and text: the peak (x, y) in pixels, its score, the
map's range) and `overlay.png` (the image, then each heatmap over it with its peak marked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a CLIP (ViT) or CLIPSeg checkpoint / workdir; repeatable")
    p.add_argument("--image", required=True)
    p.add_argument("--text", action="append", required=True, help="what to find; repeatable")
    p.add_argument("--output", required=True, help="directory for locate.json and overlay.png")
    args = p.parse_args(argv)

    import clipjax
    from clipjax.apps.localisation import heatmaps, overlay_png
    from clipjax.errors import CheckpointError
    from clipjax.preprocess import to_rgb

    try:
        texts = [t.strip() for t in args.text]
        if not all(texts):
            raise ValueError("--text must not be empty")
        image = to_rgb(args.image)  # ValueError naming the file when it is not a readable image
        results, labels = [], []
        for ckpt in args.checkpoint:
            model = clipjax.load(ckpt)
            for m in heatmaps(model, image, texts):  # ValueError for a model that cannot localise
                results.append((ckpt, m))
                labels.append(f"{m.method}: {m.text}")
    except (CheckpointError, ValueError, OSError) as e:
        print(f"locate.py: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    report = dict(image=args.image, height=image.height, width=image.width,
                  results=[dict(checkpoint=c, **m.as_json()) for c, m in results])
    with open(os.path.join(args.output, "locate.json"), "w") as f:
        json.dump(report, f, indent=2)
    overlay_png(np.asarray(image), [m for _, m in results], labels, os.path.join(args.output, "overlay.png"))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output}/locate.json and {args.output}/overlay.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
