#!/usr/bin/env bash
# From a trained LengthDrop model directory to every figure of the README's results table:
# ONNX export, dynamic INT8, length search (held-out train articles, INT8 runtime, latency on this machine),
# official-dev EM/F1 of the full model (fp32 and INT8) and of each front point (INT8), and the latency benchmark.
#
#   scripts/release.sh runs/release/lengthdrop [out-dir]
#
# Search sizes are options of `quala search`; the defaults below fit a 2-core CPU in well under an hour.
set -euo pipefail
MODEL=${1:?model directory}
OUT=${2:-$MODEL/release}
mkdir -p "$OUT"
SEARCH_ARGS=${SEARCH_ARGS:---population 16 --iterations 4 --mutations 12 --crossovers 12 --limit 400 --dev-limit 2000}

quala export --model "$MODEL"
quala quantize --model "$MODEL" --mode dynamic
quala search --model "$MODEL" --runtime onnx-int8 $SEARCH_ARGS --latency | tee "$OUT/search.txt"
quala report --model "$MODEL" | tee "$OUT/front.md"
quala eval --model "$MODEL" --runtime torch --output "$OUT/dev-full-fp32.json" | tee "$OUT/dev-full-fp32.txt"
quala eval --model "$MODEL" --runtime onnx-int8 --output "$OUT/dev-full-int8.json" | tee "$OUT/dev-full-int8.txt"
for point in $(python -c "import json,sys; print(' '.join(p['name'] for p in json.load(open(sys.argv[1]))['configs']))" "$MODEL/length_configs.json"); do
  quala eval --model "$MODEL" --runtime onnx-int8 --budget "$point" | tee "$OUT/dev-$point-int8.txt"
done
python benchmarks/latency.py --model "$MODEL" --features 64 --repeats 3 --json "$OUT/latency.json" | tee "$OUT/latency.md"
