#!/usr/bin/env bash
# The whole chain on the embedded demo: adapt -> embed with each encoder (frozen DOFA, adapted,
# adapted without anchor, BotaSP) -> compare downstream models on the same folds.
# Usage: bash examples/demo_pipeline.sh [OUT_DIR]   (about 15 min on 2 CPU cores; embeddings are cached)
set -euo pipefail
out=${1:-runs/demo_pipeline}
mkdir -p "$out"
if [ ! -f "$out/adapt/report.json" ]; then
  if [ -f "$out/adapt/config.yaml" ]; then ecoalign adapt --resume "$out/adapt"; else ecoalign adapt --backbone dofa --out "$out/adapt"; fi
fi
for enc in frozen_dofa adapted anchor_off botasp; do
  src="$out/adapt/variants/$enc"
  [ -f "$out/emb_$enc.parquet" ] || ecoalign embed --encoder "$src" --manifest demo --out "$out/emb_$enc.parquet"
done
args=(--manifest demo --encoder "frozen_dofa=$out/emb_frozen_dofa.parquet" --encoder "adapted=$out/emb_adapted.parquet"
      --encoder "anchor_off=$out/emb_anchor_off.parquet" --encoder "botasp=$out/emb_botasp.parquet")
for spec in plant_presence butterfly_occurrence soil_trophic_groups; do
  ecoalign compare "$spec" "${args[@]}" --out "$out/compare_$spec"
done
