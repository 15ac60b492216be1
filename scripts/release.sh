#!/usr/bin/env bash
# From a trained LengthDrop model directory to every figure of the README's results table, then into the package:
# ONNX export, dynamic INT8 (fp16 word embeddings), length search (held-out train articles, INT8 runtime; every front
# point then scored on the full dev set), the front timed on this machine, official-dev EM/F1 (fp32 full; INT8 at
# the named points), the latency, load and trade-off benchmarks, INT8 against float at every front point, and
# scripts/ship.sh.
#
#   scripts/release.sh runs/v1/model [results-dir]
#   STEPS="latency load" scripts/release.sh runs/v1/model   # only some steps (after an interruption, say)
#
# Run it on an otherwise idle machine: every timing is a median, but 2 cores shared with anything else are noisy.
set -euo pipefail
MODEL=${1:?model directory}
OUT=${2:-$MODEL/release}
mkdir -p "$OUT"
STEPS=${STEPS:-export search report eval latency load tradeoff ship}
# the front on the full dev set (about 50 min on 2 cores; --dev-limit 2000 for a quicker look); configurations within
# 1 search F1 of the front are scored again on 2,000 more held-out questions, whose front is the one kept
SEARCH_ARGS=${SEARCH_ARGS:---population 16 --iterations 8 --mutations 12 --crossovers 12 --limit 400 --confirm-margin 1}
# every front point already has its full-dev EM/F1 from the search; these are checked again end to end
POINTS=${POINTS:-balanced}
step() { [[ " $STEPS " == *" $1 "* ]]; }

if step export; then
  quala export --model "$MODEL"
  quala quantize --model "$MODEL" --mode dynamic --embeddings fp16
fi
step search && quala search --model "$MODEL" --runtime onnx-int8 $SEARCH_ARGS --latency | tee "$OUT/search.txt"
step report && quala report --model "$MODEL" --time --runtime onnx-int8 | tee "$OUT/front.md"
if step eval; then
  quala eval --model "$MODEL" --runtime torch --output "$OUT/dev-full-fp32.json" | tee "$OUT/dev-full-fp32.txt"
  for point in $POINTS; do
    quala eval --model "$MODEL" --runtime onnx-int8 --budget "$point" --output "$OUT/dev-$point-int8.json" \
      | tee "$OUT/dev-$point-int8.txt"
  done
fi
if step latency; then
  python benchmarks/latency.py --model "$MODEL" --features 64 --repeats 3 --eval-limit 300 --json "$OUT/latency.json" \
    | tee "$OUT/latency.md"
fi
step load && python benchmarks/load.py --model "$MODEL" --runtime onnx-int8 --seconds 8 --json "$OUT/load.json" \
  | tee "$OUT/load.md"
if step tradeoff; then
  python benchmarks/tradeoff.py --model "$MODEL" --limit 500 --json "$OUT/tradeoff.json" --png "$OUT/tradeoff.png" \
    | tee "$OUT/tradeoff.md"
  python benchmarks/tradeoff.py --model "$MODEL" --limit 500 --runtime onnx-int8 --repeats 0 \
    --json "$OUT/tradeoff-int8.json" --png "$OUT/tradeoff-int8.png" | tee "$OUT/tradeoff-int8.md"
  # every front point on 500 dev questions, those losing over 1 F1 there again on the whole dev set (cached, resumable)
  python benchmarks/int8_vs_float.py --model "$MODEL" --json "$OUT/int8-vs-float.json" | tee "$OUT/int8-vs-float.md"
fi
step ship && scripts/ship.sh "$MODEL"
true
