"""Which linear layers are sensitive to INT8: quantize with each group kept in float, score every variant at the
same length configurations on the same dev questions, print a table.

    python benchmarks/int8_sensitivity.py --model DIR [--limit 500] [--length-configs "full;0.97,...;..."]

A variant keeps in float the MatMuls whose ONNX node name matches its pattern (`quala quantize --keep-float`). The
reference row is PyTorch fp32. Use the winner's pattern with `quala quantize --keep-float PATTERN`.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from quala.config import LengthConfig, squad_path
from quala.data import load_squad, make_features
from quala.evaluate import TorchPredictor, evaluate
from quala.modeling import QualaForQuestionAnswering, load_tokenizer
from quala.quantize import quantize_model
from quala.runtime import OnnxPredictor


def variants(layers: int) -> dict[str, str | None]:
    out = {"all INT8": None, "query+key float (the ranking's scores)": r"/(query|key)/"}
    out |= {f"layer {i} float": rf"layers\.{i}/" for i in range(layers)}
    out["layers 0-1 float"] = r"layers\.[01]/"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model directory with model.safetensors")
    p.add_argument("--limit", type=int, default=500, help="first N dev questions (default 500)")
    p.add_argument("--length-configs", default="full", help="';' between configurations (default full)")
    p.add_argument("--embeddings", default="fp16", help="word-embedding storage of every variant (default fp16)")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = QualaForQuestionAnswering.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    examples = load_squad(squad_path("dev"), limit=args.limit)
    features = make_features(examples, tokenizer)
    configs = [LengthConfig.parse(c) for c in args.length_configs.split(";")]
    names = [str(c or "full") for c in configs]

    def scores(predictor) -> list[float]:
        return [evaluate(predictor, tokenizer, examples, lc, 32, features=features, progress=False).f1
                for lc in configs]

    rows = [("PyTorch fp32", scores(TorchPredictor(model)))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, pattern in variants(model.config.num_hidden_layers).items():
            path = quantize_model(args.model, "dynamic", Path(tmp) / "v.onnx", keep_float=pattern,
                                  embeddings=args.embeddings)
            rows.append((name, scores(OnnxPredictor(path, model.config, 2))))
            print(f"{name}: " + ", ".join(f"{f:.2f}" for f in rows[-1][1]), flush=True)
    print(f"\n| variant | {' | '.join(names)} |\n| --- |" + " ---: |" * len(names))
    for name, f1s in rows:
        print(f"| {name} | " + " | ".join(f"{f:.2f} ({f - ref:+.2f})" if name != rows[0][0] else f"{f:.2f}"
                                        for f, ref in zip(f1s, rows[0][1])) + " |")
    print(f"\nF1 on the first {args.limit} dev questions; in brackets the change from PyTorch fp32.")


if __name__ == "__main__":
    main()
