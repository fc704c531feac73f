"""Near-duplicate recall: the scikit-image photos plus five altered copies of each (JPEG quality
30, a 90 % centre crop, a half-size resize, a 5° rotation, grayscale). Two measures:

- originals index: only the originals are indexed; a copy is found when its original is the
  top-1 of a reverse search with the copy;
- mixed index: originals and copies all indexed (`search.py duplicates` sees this); a copy is
  found when its nearest other row is its original or another copy of the same photo.

    python benchmarks/search_duplicates.py --checkpoint random:ViT-B/32 --output runs/search_dup_vitb32.json
    python benchmarks/search_duplicates.py --checkpoint runs/fmnist --output runs/search_dup_fmnist.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "retina", "coins", "moon", "page", "text", "clock", "colorwheel", "brick", "grass", "gravel", "cell",
          "microaneurysms", "shepp_logan_phantom"]


def alterations(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=30)
    cw, ch = int(w * 0.9), int(h * 0.9)
    return {
        "jpeg30": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "crop90": img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)),
        "half": img.resize((max(2, w // 2), max(2, h // 2)), Image.BICUBIC),
        "rot5": img.rotate(5, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0)),
        "gray": img.convert("L").convert("RGB"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="a checkpoint, or random:PRESET for random weights")
    ap.add_argument("--output")
    args = ap.parse_args()
    import clipjax
    from clipjax import search
    from skimage import data as skd

    if args.checkpoint.startswith("random:"):
        preset = args.checkpoint.split(":", 1)[1]
        cfg = clipjax.get_preset(preset)
        emb = search.Embedder(clipjax.LoadedCLIP(cfg, clipjax.init_variables(cfg)), batch_size=32,
                              name=f"random {preset}")
    else:
        emb = search.Embedder(args.checkpoint, batch_size=32)
    tmp = tempfile.mkdtemp(prefix="search-dup-")
    try:
        orig, copies = os.path.join(tmp, "orig"), os.path.join(tmp, "copies")
        os.makedirs(orig)
        os.makedirs(copies)
        for n in PHOTOS:
            a = np.asarray(getattr(skd, n)())
            if a.dtype == bool:
                a = a.astype(np.uint8) * 255
            img = Image.fromarray(a).convert("RGB")
            img.save(os.path.join(orig, f"{n}.png"))
            for kind, alt in alterations(img).items():
                alt.save(os.path.join(copies, f"{n}__{kind}.png"))
        a_dir, b_dir = os.path.join(tmp, "idx_orig"), os.path.join(tmp, "idx_all")
        search.build_index(emb, orig, a_dir, progress=False)
        search.build_index(emb, orig, b_dir, progress=False)
        search.add_images(b_dir, copies, emb, progress=False)
        a, b = search.SearchIndex.open(a_dir, emb), search.SearchIndex.open(b_dir, emb)
        kinds = list(alterations(Image.new("RGB", (8, 8))).keys())
        found_a = {k: 0 for k in kinds}
        found_b = {k: 0 for k in kinds}
        e_all = b.store.embeddings()
        meta_b = b.store.metadata()
        key_id = {m["key"]: m["id"] for m in meta_b}
        for n in PHOTOS:
            for k in kinds:
                key = f"{n}__{k}.png"
                found_a[k] += a.search_vectors(e_all[key_id[key]][None], 1)[0][0].key == f"{n}.png"
                res = b.search_vectors(e_all[key_id[key]][None], 2)[0]
                nearest = next(r for r in res if r.key != key)
                found_b[k] += nearest.key.split("__")[0].removesuffix(".png") == n
        n = len(PHOTOS)
        out = {"checkpoint": args.checkpoint, "photos": n, "copies": n * len(kinds),
               "top1_original_recall": {k: v / n for k, v in found_a.items()},
               "top1_original_recall_all": sum(found_a.values()) / (n * len(kinds)),
               "nearest_same_photo_recall": {k: v / n for k, v in found_b.items()},
               "nearest_same_photo_recall_all": sum(found_b.values()) / (n * len(kinds))}
        # how well a duplicates threshold separates: groups found at a few thresholds
        out["groups"] = {}
        for t in (0.9, 0.95, 0.98, 0.99, 0.995):
            groups = b.duplicates(t)
            pure = sum(len({m["key"].split("__")[0].removesuffix(".png") for m in g}) == 1 for g in groups)
            out["groups"][str(t)] = {"groups": len(groups), "pure_groups": pure,
                                     "rows_in_groups": sum(len(g) for g in groups)}
        print(json.dumps(out, indent=1))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
