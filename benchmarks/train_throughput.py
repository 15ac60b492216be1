"""Training throughput on this machine, paired: the same batches and the same sub-models for every row.

    python benchmarks/train_throughput.py [--model DIR] [--stages finetune,lengthdrop] [--dtypes fp32,bf16]
                                          [--attention-dropouts config,0] [--scorer-loss 0.1] [--steps 6]

Real SQuAD train features (dynamic padding, length-grouped batches, the batches nearest the mean length), from
--model (default: the all-MiniLM-L6-v2 backbone; the released model with --scorer-loss times the LengthDrop run
that trains its scorers). Each row is a Trainer of its own; the rows take turns, one optimizer step each on the
same batch with the same sub-model draws, after one warm-up step. The table gives the median step time, features
per second, and the speed-up over the first row. bf16 without native bf16 instructions is emulated and slow.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quala.config import QualaError, backbone_dir
from quala.data import collate
from quala.runtime import cpu_description
from quala.train import TrainConfig, Trainer, to_device


def trainer(args, stage: str, dtype: str, attention_dropout: float | None) -> Trainer:
    cfg = TrainConfig(model=str(args.model or backbone_dir()), output=tempfile.mkdtemp(), stage=stage,
                      limit=args.questions, batch_size=args.batch_size, bf16=dtype == "bf16", lr=1e-5,
                      heldout_fraction=0.0, scorer_loss=args.scorer_loss if stage == "lengthdrop" else 0.0,
                      attention_dropout=attention_dropout, length_drop_ratio_bound=0.4, layer_dropout_prob=0.0)
    return Trainer(cfg, stage, cfg.model, Path(cfg.output))


def parse_dropouts(text: str) -> list[float | None]:
    try:
        return [None if v.strip() == "config" else float(v) for v in text.split(",")]
    except ValueError:
        raise QualaError(f"--attention-dropouts {text!r}: give 'config' or probabilities, e.g. config,0") from None


def run(args) -> list[dict]:
    rows = [dict(stage=s, dtype=d, dropout=p) for s in args.stages.split(",") for d in args.dtypes.split(",")
            for p in parse_dropouts(args.attention_dropouts)]
    for row in rows:
        if row["stage"] not in ("finetune", "lengthdrop") or row["dtype"] not in ("fp32", "bf16"):
            raise QualaError(f"stage {row['stage']!r} / dtype {row['dtype']!r}: stages finetune, lengthdrop; "
                             f"dtypes fp32, bf16")
        row["trainer"] = trainer(args, row["stage"], row["dtype"], row["dropout"])
        row["times"] = []
    first = rows[0]["trainer"]
    batches = first.epoch_batches(0)
    mean_lengths = np.array([np.mean([first.lengths[i] for i in idx]) for idx in batches])
    picked = [batches[i] for i in np.argsort(np.abs(mean_lengths - np.mean(first.lengths)))[: args.steps + 1]]
    for step, idx in enumerate(picked):
        batch = to_device(collate([first.features[i] for i in idx]), first.device)
        draws = rows[0]["trainer"].sampler.bit_generator.state
        for row in rows:
            t = row["trainer"]
            t.sampler.bit_generator.state = draws  # the same sub-models for every row
            t0 = time.perf_counter()
            t.train_step(batch, idx)
            if step:  # the first step warms up
                row["times"].append(time.perf_counter() - t0)
    for row in rows:
        row["step_s"] = statistics.median(row["times"])
        row["features_per_s"] = args.batch_size / row["step_s"]
        row["tokens"] = float(np.mean([first.lengths[i] for idx in picked for i in idx]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the backbone)")
    p.add_argument("--stages", default="finetune,lengthdrop", help="comma-separated stages (default both)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)")
    p.add_argument("--attention-dropouts", default="config",
                   help="comma-separated attention dropout probabilities; 'config': the model's (default config)")
    p.add_argument("--scorer-loss", type=float, default=0.0,
                   help="LengthDrop rows train the learned ranking's scorers with this weight (needs a model with "
                        "scorers, e.g. the released one)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per row (default 6)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--questions", type=int, default=400, help="train questions read (default 400)")
    args = p.parse_args(argv)
    try:
        if args.steps < 1:
            raise QualaError("--steps must be at least 1")
        rows = run(args)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"CPU: {cpu_description()}\ntorch {torch.__version__}, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, {rows[0]['tokens']:.0f} tokens a window on average, median of {args.steps} steps\n")
    print("| stage | dtype | attention dropout | s/step | features/s | vs first row |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        dropout = r["trainer"].model.config.attention_probs_dropout_prob
        print(f"| {r['stage']} | {r['dtype']} | {dropout:g} | {r['step_s']:.2f} | {r['features_per_s']:.2f} | "
              f"{rows[0]['step_s'] / r['step_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
