"""The docs/planning.md figures table from plan.py's JSON outputs.

    python benchmarks/plan_table.py docs/plans/*.json

Each file is named RECIPE__TOPOLOGY.json (benchmarks/plan_recipes.sh writes them that way).
open_clip's A100 column is derived from its PRETRAINED.md (LAION-400M runs, samples/s per GPU)."""

import json
import os
import sys

OPEN_CLIP_A100 = {"clip_vit_b32": 770, "clip_vit_b16": 330, "clip_vit_l14": 70, "siglip_vit_b16": 330,
                  "lit_vit_b16": 330}
ORDER = ["clip_vit_b32", "clip_vit_b16", "clip_vit_l14", "siglip_vit_b16", "lit_vit_b16"]
TOPOLOGIES = ["v5e:16x16", "v5p:4x4x4", "v6e:16x16", "v4:4x4x8"]


def row(recipe: str, p: dict) -> str:
    mesh = p["mesh"]
    fits = f"{'yes' if p['fits'] else 'NO'} ({p['per_chip_batch']:g})"
    if p.get("max_per_chip_batch"):
        best = f"{p['max_per_chip_batch']:g} (verified)"
    else:
        best = f"~{p['estimated_max_per_chip_batch']:.0f} (estimate)"
    sps = p.get("projected_samples_per_s_per_chip")
    mfu = p.get("projected_mfu")
    return (f"| {recipe} | {p['topology']} ({p['chips']} chips) | {mesh['data']}×{mesh['fsdp']} | {fits} | "
            f"{p['total_per_chip_gib']:.2f} ({p['hbm_per_chip_gib']}) | {best} | "
            f"{sps:.0f} | {100 * mfu:.0f}% | {len(p['remat_events'])} | {OPEN_CLIP_A100.get(recipe, '')} |"
            if sps else f"| {recipe} | {p['topology']} | compiler refused | | | | | | | |")


def main(paths):
    plans = {}
    for path in paths:
        recipe, topo = os.path.basename(path)[:-len(".json")].split("__")
        with open(path) as f:
            plans[(recipe, json.load(f)["topology"])] = json.load(open(path))
    print("| recipe | slice (topology) | mesh data×fsdp | fits at 32768 (per chip) | GiB per chip (of HBM) | "
          "max per-chip batch | roofline samples/s per chip | roofline MFU | remat events | "
          "open_clip A100 samples/s per GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for topo in TOPOLOGIES:
        for recipe in ORDER:
            if (recipe, topo) in plans:
                print(row(recipe, plans[(recipe, topo)]))
    missing = [f"{r} on {t}" for t in TOPOLOGIES for r in ORDER if (r, t) not in plans]
    if missing:
        print(f"\nnot compiled: {', '.join(missing)}")


if __name__ == "__main__":
    main(sys.argv[1:])
