#!/usr/bin/env bash
# Issue 22's held-out test of the pessimistic last round for one seed (docs/pessimism.md, "The held-out test"):
# `wm demo` with --final-ensemble 4 --final-pessimism halt from nothing, then the same rounds 0-3 (and round 4's
# data) copied to a second folder and the demo rerun with one final M and no pessimism: only round 4's M and C are
# made again, on the tau ladder. Both finals meet the run's same 100 real episodes; rerun to resume.
#   scripts/final_round_heldout.sh SEED [ROOT]     e.g. scripts/final_round_heldout.sh 3 data
set -euo pipefail
s=$1; root=${2:-data}; WM=${WM:-wm}
cand=$root/demo-cand-seed$s; ladder=$root/demo-ladder-seed$s
opts=(--seed "$s" --detail-weight 30 --workers "${WORKERS:-2}")
$WM demo "${opts[@]}" --final-ensemble 4 --final-pessimism halt --data "$cand" --results "results/demo-cand-seed$s"
mkdir -p "$ladder/round4"
for k in 0 1 2 3; do [ -d "$ladder/round$k" ] || cp -r "$cand/round$k" "$ladder/"; done
for f in rollouts.h5 rollouts.metrics.jsonl series.h5 series.metrics.jsonl; do
  [ -f "$ladder/round4/$f" ] || cp "$cand/round4/$f" "$ladder/round4/"; done
for f in "$cand"/baseline_*; do [ ! -f "$f" ] || [ -f "$ladder/${f##*/}" ] || cp "$f" "$ladder/"; done
$WM demo "${opts[@]}" --final-ensemble 1 --final-pessimism off --data "$ladder" --results "results/demo-ladder-seed$s"
