"""Pointing game on clipjax_shapes: for every object of every image, is the peak of the heatmap
for its referring phrase ("the small red circle on the left") inside the object's mask?

    python benchmarks/pointing_game.py --clip /tmp/loc_runs/clip_shapes \
        --clipseg /tmp/loc_runs/clipseg_shapes --split test --output /tmp/loc_runs/pointing.json

Heatmaps: MaskCLIP from the CLIP (clipjax/apps/localisation.py), the CLIPSeg mask, and, as an
ablation, the CLIP's final patch tokens taken as they are (ln_post + projection, the query-key
attention kept), which MaskCLIP argues carry little location; for both, the argmin's hit rate and
how often the map's mean on the object exceeds its mean off it (an inverted map -- objects below
the background, CLIP Surgery's "opposite visualization" -- shows there). Baselines: a uniformly random
point (expected hit rate = the mask's share of the image) and the image centre. Reported overall
and for images with 2-3 objects, where the phrase must pick one object among several.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def final_token_embeds(clip, pixels):
    """Ablation: the last layer's patch tokens, ln_post and projection applied as to the class
    token (no MaskCLIP change): (B, g, g, D) normalised."""
    import jax.numpy as jnp

    toks = np.asarray(clip.model.apply(clip.variables, jnp.asarray(pixels),
                                       method=lambda m, im: m.visual(im)["tokens"]))[:, 1:]
    p = clip.variables["params"]["visual"]
    mu = toks.mean(-1, keepdims=True)
    var = toks.var(-1, keepdims=True)
    x = (toks - mu) / np.sqrt(var + clip.cfg.vision.ln_eps) * np.asarray(p["ln_post"]["scale"]) + np.asarray(p["ln_post"]["bias"])
    x = x @ np.asarray(p["proj"]["kernel"])
    g = int(round(np.sqrt(x.shape[1])))
    x = x.reshape(len(x), g, g, -1)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _segment_fixed(seg, images, phrases, chunk):
    """CLIPSeg logits (N, S, S) of image-phrase pairs, run in chunks of exactly `chunk` pairs (the
    last padded by repetition) so the model compiles once."""
    out = []
    for i in range(0, len(images), chunk):
        ims, phs = images[i:i + chunk], phrases[i:i + chunk]
        n = len(ims)
        ims, phs = ims + [ims[-1]] * (chunk - n), phs + [phs[-1]] * (chunk - n)
        out.append(np.asarray(seg.segment(ims, phs))[:n])
    return np.concatenate(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", help="a CLIP (ViT) checkpoint")
    p.add_argument("--clipseg", help="a CLIPSeg checkpoint")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="first N images of the split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir")
    p.add_argument("--builder-kwargs", default="{}", help="JSON: clipjax_shapes parameters (tests: a small variant)")
    p.add_argument("--output", help="JSON file for the figures")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not args.clip and not args.clipseg:
        p.error("give --clip and/or --clipseg")

    import clipjax
    from clipjax.apps.localisation import clip_pixels, maskclip_grid, patch_embeds, pointing_hit
    from clipjax.apps.shapes_questions import read_examples
    from clipjax.evaluation.progress import progress_bar
    from clipjax.inference.clipseg import resize_logits

    t0 = time.time()
    examples = list(read_examples(args.split, args.limit, args.data_dir, **json.loads(args.builder_kwargs)))
    clip = clipjax.load(args.clip) if args.clip else None
    seg = clipjax.load(args.clipseg) if args.clipseg else None
    # every distinct phrase encoded once (fixed batch shapes: jit compiles once, not per batch)
    phrase_embed = {}
    if clip:
        unique = sorted({o["phrase"] for e in examples for o in e["objects"]})
        phrase_embed = dict(zip(unique, clip.encode_text(unique)))
    hits = {k: [] for k in (["maskclip", "final_tokens", "maskclip_argmin", "final_tokens_argmin"] if clip else [])
            + (["clipseg"] if seg else [])}
    above = {"maskclip": [], "final_tokens": []}  # per object: mean of the map on the object > off it
    hits.update(random=[], center=[])
    multi = []  # per object: its image has 2-3 objects
    bs = args.batch_size
    with progress_bar(len(examples), f"pointing game ({args.split})", not args.no_progress) as bar:
        for i in range(0, len(examples), bs):
            batch = examples[i:i + bs]
            images = [e["image"] for e in batch]
            objs = [(j, o) for j, e in enumerate(batch) for o in e["objects"]]
            phrases = [o["phrase"] for _, o in objs]
            if clip:
                pixels = clip_pixels(clip, images)
                text = [phrase_embed[ph] for ph in phrases]
                for name, dense in (("maskclip", patch_embeds(clip, pixels)), ("final_tokens", final_token_embeds(clip, pixels))):
                    for (j, o), t in zip(objs, text):
                        h, w = o["mask"].shape
                        heat = resize_logits(maskclip_grid(dense[j], t[None])[0], h, w)
                        hits[name].append(pointing_hit(heat, o["mask"]))
                        # diagnostics: is the map inverted (objects below background)?
                        hits[f"{name}_argmin"].append(pointing_hit(-heat, o["mask"]))
                        above[name].append(bool(heat[o["mask"]].mean() > heat[~o["mask"]].mean()))
            if seg:
                logits = _segment_fixed(seg, [images[j] for j, _ in objs], phrases, bs)
                for (j, o), lg in zip(objs, logits):
                    hits["clipseg"].append(pointing_hit(lg, o["mask"]))
            for j, o in objs:
                m = o["mask"]
                hits["random"].append(float(m.mean()))
                hits["center"].append(bool(m[m.shape[0] // 2, m.shape[1] // 2]))
                multi.append(len(batch[j]["objects"]) > 1)
            bar.update(len(batch))
    multi = np.asarray(multi)
    res = dict(split=args.split, images=len(examples), objects=int(len(multi)), objects_in_multi_object_images=int(multi.sum()),
               pointing_accuracy={k: float(np.mean(v)) for k, v in hits.items()},
               pointing_accuracy_multi_object={k: float(np.mean(np.asarray(v)[multi])) for k, v in hits.items()},
               object_mean_above_background={k: float(np.mean(v)) for k, v in above.items() if v},
               checkpoints=dict(clip=args.clip, clipseg=args.clipseg), seconds=round(time.time() - t0, 1))
    print(json.dumps(res, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
