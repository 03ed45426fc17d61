#!/usr/bin/env bash
# The last round of a finished `wm demo` run taken apart (docs/pessimism.md, "The last round alone"):
# the final C evolved again on the run's own M (other CMA seeds, τ 1.15), and in an ensemble of 4 sibling Ms
# trained as the run's round-4 M was (alone, all members, penalty, halt); each scored on the run's 100 real episodes.
#   scripts/final_round_study.sh DEMO_DATA SEED OUT      e.g. data/demo-detail30-seed2 2 data/study-seed2
set -euo pipefail
D=$1; s=$2; O=$3; mkdir -p "$O"
WM=${WM:-wm}
last=$(ls -d "$D"/round* | sort -V | tail -1); k=${last##*round}; prev="$D/round$((k - 1))"
v="$D/round0/vae.h5"; rs=$((s + k))  # round k's stages use the run's seed + k
series=(); for r in $(seq 0 "$k"); do series+=(--series "$D/round$r/series.h5"); done
steps=${STEPS:-600}  # a later round's M steps: small's 1000 x later_mdn_steps_fraction 0.6
$WM train-mdn "${series[@]}" --ensemble 4 --preset small --seed $rs --init "$prev/mdn.h5" --steps "$steps" \
  --out "$O/mdn.ens.h5"
evolve() { $WM evolve --vae "$v" --in-dream --preset small --pop 64 "$@"; }
for cs in 101 102 103; do evolve --mdn "$last/mdn.h5" --temperature 1.5 --seed $cs --out "$O/own.t1.5.s$cs.h5"; done
evolve --mdn "$last/mdn.h5" --temperature 1.15 --seed 101 --out "$O/own.t1.15.s101.h5"
evolve --mdn "$O/mdn.ens.h5" --temperature 1.5 --seed $rs --out "$O/ens.alone.t1.5.h5"
evolve --mdn "$O/mdn.ens.h5" --temperature 1.15 --seed $rs --pessimism penalty --pessimism-penalty 0 --out "$O/ens.p0.h5"
evolve --mdn "$O/mdn.ens.h5" --temperature 1.15 --seed $rs --pessimism penalty --out "$O/ens.penalty.h5"
evolve --mdn "$O/mdn.ens.h5" --temperature 1.15 --seed $rs --pessimism halt --out "$O/ens.halt.h5"
for c in "$O"/own.*.h5 "$O"/ens.*.h5; do
  case $c in *.eval.h5) continue ;; esac
  [ -f "${c%.h5}.eval.h5" ] || $WM evaluate --controller "$c" --episodes 100 --seed "$s" --out "${c%.h5}.eval.h5"
done
