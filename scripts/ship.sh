#!/usr/bin/env bash
# Copy what inference needs from a released model directory into the package (quala/models/quala-minilm):
# the INT8 ONNX graph, config, tokenizer and searched front. No float weights (they stay in runs/).
#
#   scripts/ship.sh runs/v1/model
set -euo pipefail
MODEL=${1:?model directory}
DEST=${2:-quala/models/quala-minilm}
mkdir -p "$DEST"
for f in model.int8.onnx config.json tokenizer.json tokenizer_config.json length_configs.json length_configs.png; do
  if [ -f "$MODEL/$f" ]; then cp "$MODEL/$f" "$DEST/$f"; else echo "missing: $MODEL/$f" >&2; exit 1; fi
done
python - "$DEST" <<'PY'
import hashlib, json, sys
from pathlib import Path
dest = Path(sys.argv[1])
sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dest.iterdir()) if p.name not in ("SHA256SUMS.json", "README.md")}
(dest / "SHA256SUMS.json").write_text(json.dumps(sums, indent=1) + "\n")
print(f"{dest}: " + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(dest.iterdir())))
PY
