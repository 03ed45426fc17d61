#!/usr/bin/env bash
# One prepared GPU check: the test suite on a CUDA machine, the benchmarks on CUDA (first benchmarks/paper_doom.py:
# the paper's Doom run projected from every stage measured at its real size), then the small Doom demo timed end to
# end. Every part writes into $OUT as it goes, so a run cut short still returns what it measured.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh [WHEELS_DIR]
#   OUT=/tmp/gpu TESTS="tests/test_dream.py" BENCH="dream" DEMO_S=300 bash benchmarks/gpu_check.sh   # another mix
#
# Time budget (a session has ≈ 15 min of device time, the machine's start included, and ≤ 600 s a command): the
# default run is setup (≈ 1 min) + tests (≤ 120 s) + paper_doom (≤ 240 s) + collect (≤ 90 s: `overhead` on 16
# idle cores, which a shared 2-core CPU cannot show) ≈ 8.5 min. The other parts go in a second command if the
# session has time: BENCH="mdn dream vae" (≤ 60 + 120 + 45 s) with TESTS="" and DEMO_S=270 (the demo; 0, the
# default, skips it).
#
# WHEELS_DIR holds wheels the machine lacks (cma, gymnasium, vizdoom, isal, ...), installed with --no-deps; the
# machine's own torch is used as is.
set -u
OUT=${OUT:-/tmp/gpu_check}
WHEELS=${1:-.wheels}
DEMO_S=${DEMO_S:-0}
TESTS=${TESTS-tests}
BENCH=${BENCH-paper_doom collect}
mkdir -p "$OUT"
PY=${PY:-python3}
stamp() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }

stamp setup
[ -d "$WHEELS" ] && $PY -m pip install -q --no-deps "$WHEELS"/*.whl >>"$OUT/log.txt" 2>&1
$PY -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/log.txt" 2>&1
nvidia-smi -L | tee -a "$OUT/log.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/log.txt"

if [ -n "$TESTS" ]; then
    stamp tests
    timeout 120 $PY -m pytest -q -p no:cacheprovider -n 12 -m "not slow and not faults" $TESTS >"$OUT/tests.txt" 2>&1
    echo "rc=$?" >>"$OUT/tests.txt"; tail -5 "$OUT/tests.txt"
fi

for b in $BENCH; do
    stamp bench $b
    case $b in
        dream) timeout 120 $PY benchmarks/dream.py >>"$OUT/bench.txt" 2>&1 ;;
        paper_doom) timeout 240 $PY benchmarks/paper_doom.py --device cuda >>"$OUT/bench.txt" 2>&1 ;;
        mdn) timeout 60 $PY benchmarks/mdn.py --device cuda >>"$OUT/bench.txt" 2>&1 ;;
        collect) timeout 90 $PY benchmarks/collect.py --quick >>"$OUT/bench.txt" 2>&1 ;;
        *) timeout 45 $PY benchmarks/$b.py --device cuda >>"$OUT/bench.txt" 2>&1 ;;
    esac
    echo "$b rc=$?" >>"$OUT/bench.txt"
done
tail -40 "$OUT/bench.txt"

[ "$DEMO_S" -gt 0 ] || { stamp done; exit 0; }
stamp demo
WM=$(dirname "$(command -v $PY)")/wm
[ -x "$WM" ] || WM="$PY -m worldmodels_cli"
timeout "$DEMO_S" $WM demo --data /tmp/demo-gpu --results /tmp/demo-gpu-results --seed 0 --workers 14 --device cuda \
    >"$OUT/demo.txt" 2>&1
echo "demo rc=$?" >>"$OUT/demo.txt"
cp /tmp/demo-gpu/iterate.json "$OUT/iterate.json" 2>/dev/null
cp /tmp/demo-gpu-results/results.md "$OUT/results.md" 2>/dev/null
tail -30 "$OUT/demo.txt"
stamp done
