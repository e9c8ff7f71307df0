#!/usr/bin/env bash
# Regenerate a study's committed artifacts from its sweep folder: every job's results.json and
# metrics.jsonl, the table as Markdown / LaTeX / CSV, and the offline report (HTML + PNGs).
#   bash experiments/publish.sh SWEEP_DIR OUT_DIR [BY_KEY ...]
#   bash experiments/publish.sh outputs/sweeps/rank_ablation experiments/rank_ablation lora.r
set -euo pipefail
sweep=$1 out=$2
shift 2
by=()
if (($#)); then by=(--by "$@"); fi
mkdir -p "$out/results"
for record in "$sweep"/*/results.json; do
    job=$(dirname "$record")
    mkdir -p "$out/results/$(basename "$job")"
    cp "$record" "$job/metrics.jsonl" "$out/results/$(basename "$job")/"
done
for format in md latex csv; do
    harness-table "$sweep" "${by[@]}" --format "$format" --out "$out/table.${format/latex/tex}"
done
harness-report "$sweep" "${by[@]}" --out "$out/report" --title "$(basename "$out")"
