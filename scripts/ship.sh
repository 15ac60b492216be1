#!/usr/bin/env bash
# Copy a released model directory into the package (quala/models/quala-minilm): the INT8 ONNX graph, config,
# tokenizer and searched front, plus the float weights stored in fp16 (model.safetensors, half the size; quala and
# transformers load them into an fp32 model: config.json says "dtype": "float32"). Without float weights in the
# source, they are rebuilt from the INT8 graph (scripts/dequantize.py). Then writes SHA256SUMS.json.
#
#   scripts/ship.sh runs/v3/model
#   scripts/ship.sh quala/models/quala-minilm       # in place: fp16 weights, dtype and checksums only
set -euo pipefail
MODEL=${1:?model directory}
DEST=${2:-quala/models/quala-minilm}
mkdir -p "$DEST"
if [ "$(realpath "$MODEL")" != "$(realpath "$DEST")" ]; then
  for f in model.int8.onnx config.json tokenizer.json tokenizer_config.json length_configs.json length_configs.png; do
    if [ -f "$MODEL/$f" ]; then cp "$MODEL/$f" "$DEST/$f"; else echo "missing: $MODEL/$f" >&2; exit 1; fi
  done
  # the learned ranking's scorers (config.json "ranking": "learned"); the ONNX graph has them baked in
  if [ -f "$MODEL/scorer.safetensors" ]; then cp "$MODEL/scorer.safetensors" "$DEST/scorer.safetensors"; fi
fi
if [ -f "$MODEL/model.safetensors" ]; then
  python - "$MODEL/model.safetensors" "$DEST/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
from quala.files import atomic_write
state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(sys.argv[1]).items()}
atomic_write(sys.argv[2], lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
PY
else
  python scripts/dequantize.py "$DEST"
fi
python - "$DEST" <<'PY'
import hashlib, json, sys
from pathlib import Path
dest = Path(sys.argv[1])
config = json.loads((dest / "config.json").read_text())
if config.get("dtype") != "float32":  # transformers would otherwise load the fp16 file as an fp16 model
    config["dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dest.iterdir()) if p.name not in ("SHA256SUMS.json", "README.md")}
(dest / "SHA256SUMS.json").write_text(json.dumps(sums, indent=1) + "\n")
print(f"{dest}: " + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(dest.iterdir())))
PY
