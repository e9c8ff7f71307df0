#!/usr/bin/env bash
# Regenerate a study's committed artifacts from its sweep folder: every job's results.json and
# metrics.jsonl, the table as Markdown / LaTeX / CSV, and the offline report (HTML + PNGs).
#   bash experiments/publish.sh SWEEP_DIR OUT_DIR [BY_KEY ...]
#   bash experiments/publish.sh outputs/sweeps/rank_ablation experiments/rank_ablation lora.r
# METRICS="main params.adapter" picks the table's metric columns (default: harness-table's);
# SPLIT=eval shows the validation split instead of the test split (default: test, or eval with a note
# for records that have no test metrics).
set -euo pipefail
sweep=$1 out=$2
shift 2
by=()
if (($#)); then by=(--by "$@"); fi
metrics=()
split=(${SPLIT:+--split "$SPLIT"})
if [[ -n ${METRICS:-} ]]; then read -ra names <<<"$METRICS"; metrics=(--metric "${names[@]}"); fi
mkdir -p "$out/results"
for record in "$sweep"/*/results.json; do
    job=$(dirname "$record")
    mkdir -p "$out/results/$(basename "$job")"
    for file in "$record" "$job/metrics.jsonl"; do  # a job that failed early has no metrics.jsonl
        if [[ -e $file ]]; then cp "$file" "$out/results/$(basename "$job")/"; fi
    done
done
for format in md latex csv; do
    harness-table "$sweep" "${by[@]}" "${metrics[@]}" "${split[@]}" --format "$format" --out "$out/table.${format/latex/tex}"
done
harness-report "$sweep" "${by[@]}" "${split[@]}" --out "$out/report" --title "$(basename "$out")"
