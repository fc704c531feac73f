"""Convert CLIP checkpoints between clipjax, transformers and the OpenAI / open_clip layout.

    python convert.py --src PATH --dst PATH --to {clipjax,hf,openai}

The source format is detected: a clipjax (Orbax) directory, a transformers CLIPModel
directory, or an OpenAI-layout state-dict file (.pt / .bin / .safetensors).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="checkpoint to read")
    p.add_argument("--dst", required=True, help="where to write (directory for clipjax/hf, file for openai)")
    p.add_argument("--to", required=True, choices=["clipjax", "hf", "openai"])
    args = p.parse_args(argv)

    from clipjax.api import detect_format, read_any
    from clipjax.convert.common import CheckpointError

    try:
        src_fmt = detect_format(args.src)
        cfg, variables = read_any(args.src)
        if args.to == "clipjax":
            from clipjax.checkpoint import save_clipjax

            save_clipjax(args.dst, variables, cfg)
        elif args.to == "hf":
            from clipjax.convert.hf_clip import save_hf_clip

            save_hf_clip(variables, cfg, args.dst)
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
