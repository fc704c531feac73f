"""Convert CLIP and CLIPSeg checkpoints between clipjax, transformers and the original layouts.

    python convert.py --src PATH --dst PATH --to {clipjax,hf,openai}
    python convert.py --src rd64-uni.pth --clip ViT-B-16.pt --dst DIR --to clipjax   # original CLIPSeg
    python convert.py --src SEG --dst rd64-uni.pth --to original                       # CLIPSeg decoder

The source format is detected: a clipjax (Orbax) directory of a CLIP or CLIPSeg, a transformers
CLIPModel or CLIPSegForImageSegmentation directory, or an OpenAI-layout CLIP state-dict file
(.pt / .bin / .safetensors). An original CLIPSeg decoder file (timojl/clipseg: rd64-uni.pth, ...)
needs --clip, the CLIP it was trained on (any format above); --extract-layers defaults to the
released models' 3 6 9. `--to openai` writes a CLIP; `--to original` a CLIPSeg decoder (its
CLIP beside it as <dst>.clip.pt).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="checkpoint to read")
    p.add_argument("--dst", required=True, help="where to write (directory for clipjax/hf, file for openai)")
    p.add_argument("--to", required=True, choices=["clipjax", "hf", "openai", "original"])
    p.add_argument("--clip", default="", help="CLIPSeg original decoder sources: the CLIP checkpoint it runs on")
    p.add_argument("--extract-layers", type=int, nargs="+", default=[3, 6, 9])
    p.add_argument("--decoder-heads", type=int, default=4, help="original decoders: attention heads (not stored)")
    p.add_argument("--image-size", type=int, default=352, help="CLIPSeg input resolution")
    args = p.parse_args(argv)

    from clipjax.api import detect_format, read_any
    from clipjax.convert import hf_clipseg
    from clipjax.convert.common import CheckpointError
    from clipjax.models.clipseg import CLIPSegConfig

    try:
        if args.clip:
            src_fmt = "clipseg original decoder"
            cfg, variables = hf_clipseg.load_original(args.src, args.clip, tuple(args.extract_layers),
                                                      args.decoder_heads, image_size=args.image_size)
        elif hf_clipseg.is_hf_clipseg_dir(args.src):
            src_fmt = "hf clipseg"
            cfg, variables = hf_clipseg.load_hf_clipseg(args.src, image_size=args.image_size)
        else:
            src_fmt = detect_format(args.src)
            cfg, variables = read_any(args.src)
        seg = isinstance(cfg, CLIPSegConfig)
        if args.to == "original" and not seg:
            raise CheckpointError("--to original writes CLIPSeg decoders; this is a CLIP (use --to openai)")
        if args.to == "openai" and seg:
            raise CheckpointError("--to openai writes CLIP models; for a CLIPSeg use --to original or hf")
        if args.to == "clipjax":
            from clipjax.checkpoint import save_clipjax

            save_clipjax(args.dst, variables, cfg)
        elif args.to == "hf" and seg:
            hf_clipseg.save_hf_clipseg(variables, cfg, args.dst)
        elif args.to == "hf":
            from clipjax.convert.hf_clip import save_hf_clip

            save_hf_clip(variables, cfg, args.dst)
        elif args.to == "original":
            hf_clipseg.save_original(variables, cfg, args.dst, clip_path=args.dst + ".clip.pt")
        else:
            from clipjax.convert.openai_clip import save_openai

            save_openai(variables, cfg, args.dst)
    except CheckpointError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    n = sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(variables))
    print(f"converted {args.src} ({src_fmt}) -> {args.dst} ({args.to}): {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
