"""Convert CLIP and CLIPSeg checkpoints between clipjax, transformers and the original layouts.

    python convert.py --src PATH --dst PATH --to {clipjax,hf,openai}
    python convert.py --src rd64-uni.pth --clip ViT-B-16.pt --dst DIR --to clipjax   # original CLIPSeg
    python convert.py --src SEG --dst rd64-uni.pth --to original                       # CLIPSeg decoder

The source format is detected: a clipjax (Orbax) directory of a CLIP or CLIPSeg, a transformers
CLIPModel or CLIPSegForImageSegmentation directory, a transformers 4.x FlaxCLIPModel directory
(flax_model.msgpack; `--to flax` writes one), or an OpenAI-layout CLIP state-dict file
(.pt / .bin / .safetensors). An original CLIPSeg decoder file (timojl/clipseg: rd64-uni.pth, ...)
needs --clip, the CLIP it was trained on (any format above); --extract-layers defaults to the
released models' 3 6 9. `--to openai` writes a CLIP; `--to original` a CLIPSeg decoder (its
CLIP beside it as <dst>.clip.pt).

Tag2Text / RAM / RAM++ (recognize-anything .pth files) need --ram: a released model name
(tag2text_swin_14m, ram_swin_large_14m, ram_plus_swin_large_14m) or a JSON file of a
Tag2TextConfig; --to clipjax also writes <dst>/tag2text/ (the tag list, RAM's per-class
thresholds, and --vocab, bert-base-uncased's vocab.txt, which captioning needs) so that
clipjax.load(dst) is ready for tag.py. `--to ram` writes a clipjax Tag2Text back to a .pth.

    python convert.py --src ram_swin_large_14m.pth --ram ram_swin_large_14m --vocab vocab.txt --dst ram/ --to clipjax
    python convert.py --src ram/ --dst ram_again.pth --to ram
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="checkpoint to read")
    p.add_argument("--dst", required=True, help="where to write (directory for clipjax/hf, file for openai)")
    p.add_argument("--to", required=True, choices=["clipjax", "hf", "flax", "openai", "original", "ram"])
    p.add_argument("--clip", default="", help="CLIPSeg original decoder sources: the CLIP checkpoint it runs on")
    p.add_argument("--extract-layers", type=int, nargs="+", default=[3, 6, 9])
    p.add_argument("--decoder-heads", type=int, default=4, help="original decoders: attention heads (not stored)")
    p.add_argument("--image-size", type=int, default=None,
                   help="CLIPSeg input resolution (default: a transformers directory's preprocessor_config.json; "
                        "352 for original decoder files)")
    p.add_argument("--ram", default="", help="recognize-anything sources: released model name or config JSON")
    p.add_argument("--vocab", default="", help="Tag2Text / RAM: the WordPiece vocab.txt to keep with the model")
    p.add_argument("--arch", default=None,
                   help="OpenAI-layout sources: open_clip's model name (ViT-B-32, ViT-B-32-quickgelu, ViT-H-14, RN50, "
                        "...); the weights cannot tell the activation and head count, and without it OpenAI's rules "
                        "(QuickGELU, 64-wide heads) are assumed, with a warning")
    args = p.parse_args(argv)
    if args.ram or args.to == "ram":
        return convert_ram(args)

    from clipjax import storage
    from clipjax.convert.formats import detect_format, read_any
    from clipjax.convert import hf_clipseg
    from clipjax.variables import CheckpointError
    from clipjax.models.clipseg import CLIPSegConfig

    try:
        if storage.exists(args.dst):
            raise CheckpointError(f"{args.dst} already exists: choose another --dst (convert.py never replaces "
                                  "existing files)")
        if args.clip:
            src_fmt = "clipseg original decoder"
            cfg, variables = hf_clipseg.load_original(args.src, read_any(args.clip), tuple(args.extract_layers),
                                                      args.decoder_heads, image_size=args.image_size or 352)
        elif not storage.is_remote(args.src) and hf_clipseg.is_hf_clipseg_dir(args.src):
            src_fmt = "hf clipseg"
            cfg, variables = hf_clipseg.load_hf_clipseg(args.src, image_size=args.image_size)
        else:
            src_fmt = detect_format(args.src)
            cfg, variables = read_any(args.src, args.arch)
        seg = isinstance(cfg, CLIPSegConfig)
        if args.to == "original" and not seg:
            raise CheckpointError("--to original writes CLIPSeg decoders; this is a CLIP (use --to openai)")
        if args.to == "openai" and seg:
            raise CheckpointError("--to openai writes CLIP models; for a CLIPSeg use --to original or hf")
        if args.to == "clipjax":  # Orbax writes object storage itself
            from clipjax.convert.formats import save_clipjax

            save_clipjax(args.dst, variables, cfg)
        else:
            with storage.local_output(args.dst) as dst:  # written here, uploaded when remote
                if args.to == "hf" and seg:
                    hf_clipseg.save_hf_clipseg(variables, cfg, dst)
                elif args.to == "hf":
                    from clipjax.convert.hf_clip import save_hf_clip

                    save_hf_clip(variables, cfg, dst)
                elif args.to == "flax":  # what transformers 4.x FlaxCLIPModel.from_pretrained reads
                    if seg:
                        raise CheckpointError("--to flax writes CLIP models (FlaxCLIPModel); this is a CLIPSeg")
                    from clipjax.convert.flax_clip import save_flax_clip

                    save_flax_clip(variables, cfg, dst)
                elif args.to == "original":
                    hf_clipseg.save_original(variables, cfg, dst, clip_path=dst + ".clip.pt")
                else:
                    from clipjax.convert.openai_clip import save_openai

                    save_openai(variables, cfg, dst)
    except (CheckpointError, storage.StorageError, FileNotFoundError) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    n = sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(variables))
    print(f"converted {args.src} ({src_fmt}) -> {args.dst} ({args.to}): {n:,} values")
    return 0


def _ram_config(spec: str):
    import json
    import os

    from clipjax.models.tag2text import Tag2TextConfig, released_config

    if os.path.isfile(spec):
        with open(spec) as f:
            return Tag2TextConfig.from_dict(json.load(f))
    return released_config(spec)


def convert_ram(args) -> int:
    import os
    import shutil

    from clipjax.convert.formats import read_any
    from clipjax.convert import recognize_anything as ra
    from clipjax.variables import CheckpointError
    from clipjax.models.tag2text import Tag2TextConfig

    try:
        if args.to == "ram":
            cfg, variables = read_any(args.src)
            if not isinstance(cfg, Tag2TextConfig):
                raise CheckpointError(f"{args.src} is not a Tag2Text / RAM checkpoint")
            ra.save_ram_checkpoint(variables, cfg, args.dst)
        elif args.to == "clipjax":
            cfg = _ram_config(args.ram)
            variables = ra.load_ram_checkpoint(args.src, cfg)
            from clipjax.convert.formats import save_clipjax
            from clipjax.models.tagging import load_ram_tags, load_tag2text_tags

            save_clipjax(args.dst, variables, cfg)
            assets = os.path.join(args.dst, "tag2text")
            os.makedirs(assets, exist_ok=True)
            shipped = {3429: load_tag2text_tags, 4585: load_ram_tags}.get(cfg.tagging.num_tags)
            if shipped is not None:  # the release's tag list and thresholds (Tag2Text: 0.68, people 0.7)
                tags, thresholds = shipped()
                with open(os.path.join(assets, "tag_list.txt"), "w", encoding="utf-8") as f:
                    f.write("\n".join(tags) + "\n")
                with open(os.path.join(assets, "thresholds.txt"), "w") as f:
                    f.write("\n".join(f"{t:g}" for t in thresholds) + "\n")
                if cfg.variant == "tag2text":  # tags the release never passes to the captioner
                    from clipjax.models.tagging import TAG2TEXT_DELETE_TAG_INDEX

                    with open(os.path.join(assets, "delete_tags.txt"), "w") as f:
                        f.write("\n".join(str(i) for i in TAG2TEXT_DELETE_TAG_INDEX) + "\n")
            if args.vocab:
                shutil.copyfile(args.vocab, os.path.join(assets, "vocab.txt"))
        else:
            raise CheckpointError("recognize-anything checkpoints convert --to clipjax (with --ram) or --to ram")
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    n = sum(int(x.size) for x in __import__("jax").tree_util.tree_leaves(variables))
    print(f"converted {args.src} -> {args.dst} ({args.to}): {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
