"""Segment what prompts refer to in an image with a CLIPSeg model.

    python segment.py --checkpoint PATH --image photo.jpg --prompt "the red circle" --prompt example.png \
        --output out/

PATH: a clipjax CLIPSeg checkpoint or training workdir, or a transformers CLIPSeg directory. A
prompt is text, or the path of an example image (a visual prompt). The model sees the whole
image (resized to its input size, no crop, with the checkpoint's preprocessing) and its mask
logits are resized back to the image's own height x width (LoadedCLIPSeg.segment). Writes, per
prompt, `mask_<k>.png` (the probability map, 0-255, at the image's size) and `overlay.png` (the image,
then for each prompt the predicted mask over it, titled with the prompt — the layout of the
CLIPSeg paper's examples). Prints the foreground fraction per prompt at --threshold.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _prompts(raw):
    """Strings that name an existing image file become RGB images (visual prompts, decoded as
    every image is: clipjax.preprocess.to_rgb). A prompt that looks like an image path (one word
    ending in an image suffix) but names no readable image is an error, not a text prompt: a
    typo in a file name must not silently segment the words "exmaple.png"."""
    from clipjax.preprocess import to_rgb

    out = []
    for p in raw:
        looks_like_path = p.lower().endswith(IMAGE_SUFFIXES) and " " not in p.strip()
        if os.path.isfile(p) or looks_like_path:
            if not os.path.isfile(p):
                raise ValueError(f"--prompt {p!r} looks like an image file but there is no such file "
                                 "(a text prompt with spaces is read as text)")
            out.append(to_rgb(p))  # ValueError naming the file when it is not a readable image
            continue
        out.append(p)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", action="append", required=True, help="text, or an example image path; repeatable")
    p.add_argument("--output", required=True, help="directory for mask_<k>.png and overlay.png")
    p.add_argument("--threshold", type=float, default=0.5)
    args = p.parse_args(argv)

    from PIL import Image

    import clipjax
    from clipjax.preprocess import to_rgb
    from clipjax.variables import CheckpointError
    from clipjax.evaluation.segmentation import overlay_png

    try:
        seg = clipjax.load(args.checkpoint)
        if not hasattr(seg, "segment"):
            raise ValueError(f"{args.checkpoint} is a CLIP model, not CLIPSeg")
        image = np.asarray(to_rgb(args.image))
        prompts = _prompts(args.prompt)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"segment.py: error: {e}", file=sys.stderr)
        return 2
    logits = np.asarray(seg.segment([image], prompts))  # (K, H, W): at the image's own size
    resized = 1.0 / (1.0 + np.exp(-logits))
    os.makedirs(args.output, exist_ok=True)
    labels = [a if isinstance(pr, str) else f"[image] {os.path.basename(a)}" for a, pr in zip(args.prompt, prompts)]
    for k, (pr, label) in enumerate(zip(resized, labels)):
        Image.fromarray(np.clip(pr * 255, 0, 255).astype(np.uint8)).save(os.path.join(args.output, f"mask_{k}.png"))
        print(f"{label}: foreground {np.mean(pr > args.threshold):.3f}")
    overlay_png(image, resized, labels, os.path.join(args.output, "overlay.png"), args.threshold)
    print(f"wrote {args.output}/overlay.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
