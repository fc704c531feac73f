#!/usr/bin/env bash
# The docs/planning.md figures: every paper recipe compiled by plan.py for v5e-256, v5p-128,
# v6e-256 and v4-256, one JSON each in docs/plans/ (RECIPE__TOPOLOGY.json), then the table:
#   bash benchmarks/plan_recipes.sh && python benchmarks/plan_table.py docs/plans/*.json
# Each compile takes 2-15 min on a 2-core machine; a JSON already there is kept (delete it to redo).
# FSDP: 8 on v5e:16x16 (the recipes' documented mesh); 16 elsewhere (8 is no product of whole
# torus axes on 16x16 v6e or 4x4x4 v5p, see docs/planning.md).
set -u
cd "$(dirname "$0")/.."
for topo in v5e:16x16 v5p:4x4x4 v6e:16x16 v4:4x4x8; do
  fsdp=16; [ "$topo" = v5e:16x16 ] && fsdp=8
  for recipe in clip_vit_b32 clip_vit_b16 clip_vit_l14 siglip_vit_b16 lit_vit_b16; do
    out="docs/plans/${recipe}__${topo/:/_}.json"
    [ -f "$out" ] && continue
    echo "$(date +%T) $recipe on $topo (fsdp $fsdp)"
    .venv/bin/python plan.py --config "configs/$recipe.py" --topology "$topo" --config.mesh.fsdp=$fsdp --json "$out" \
      > "/tmp/plan_${recipe}_${topo/:/_}.txt" 2>&1 || echo "  exit $? (see /tmp/plan_${recipe}_${topo/:/_}.txt)"
  done
done
