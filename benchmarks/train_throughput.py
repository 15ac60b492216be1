"""Training throughput (features per second) on this machine: fp32 vs bf16 autocast, fine-tuning vs LengthDrop.

    python benchmarks/train_throughput.py [--steps 6] [--batch-size 32] [--questions 400]

Real SQuAD train features (dynamic padding, length-grouped batches), the all-MiniLM-L6-v2 backbone.
The first step of each row is a warm-up and is not timed; the table shows the median step time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from quala.config import backbone_dir
from quala.train import TrainConfig, Trainer


def measure(stage: str, bf16: bool, args) -> dict:
    cfg = TrainConfig(model=str(backbone_dir()), output=tempfile.mkdtemp(), stage=stage, limit=args.questions,
                      batch_size=args.batch_size, bf16=bf16, lr=1e-4)
    t = Trainer(cfg, stage, cfg.model, __import__("pathlib").Path(cfg.output))
    batches = t.epoch_batches(0)[: args.steps + 1]
    times, feats = [], []
    for i, idx in enumerate(batches):
        from quala.data import collate
        from quala.train import to_device
        batch = to_device(collate([t.features[j] for j in idx]), t.device)
        t0 = time.perf_counter()
        t.train_step(batch, idx)
        if i:
            times.append(time.perf_counter() - t0)
            feats.append(len(idx) / times[-1])
    tokens = statistics.mean(len(t.features[j]) for idx in batches for j in idx)
    return {"stage": stage, "dtype": "bf16" if bf16 else "fp32", "features_per_s": statistics.median(feats),
            "step_s": statistics.median(times), "mean_tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--questions", type=int, default=400)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    rows = [measure(stage, bf16, args) for stage in ("finetune", "lengthdrop") for bf16 in (False, True)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}\n")
    print("| stage | dtype | features/s | s/step | mean tokens |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['dtype']} | {r['features_per_s']:.2f} | {r['step_s']:.2f} | {r['mean_tokens']:.0f} |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
