#!/usr/bin/env python3
"""The full training recipe on a lent GPU machine, inside one time budget, and back.

The GPU machine reaches nothing outside the repository and returns at most 64 MiB, so:

  python scripts/gpu_train.py prepare            # here: .carry/ = backbone (fp16) + SQuAD (xz), ~55 MiB
  python scripts/gpu_train.py run --out $OUT     # there: stage 1, stage 2 sized to the time left, fp16 pieces
  python scripts/gpu_train.py unpack FETCHED runs/release-gpu   # here: a model directory again (fp32 safetensors)

Measured on one H100 (2026-11-26, batch 32, bf16): stage 1 985 features/s (3 epochs in 4 min 13 s), LengthDrop
204-282 features/s (sandwich of 4), i.e. about 5-7 minutes per LengthDrop epoch. To continue LengthDrop from the
release model in a later lease: `prepare --start-from runs/v1/model`, then `run --out $OUT --start-from start
--lr-lengthdrop 3e-5 --warmup-ratio 0.05` with carry [".carry/start", ".carry/squad"] (28 MiB beside the
repository's 35, under the 64 MiB a call may send: the word embeddings come from the shipped graph, whose fp16
table holds the same values).

Measured on one H200 (2026-11-26, same settings, from release 2): LengthDrop 264 features/s, 1.15 epochs in 6 min 2 s
within a 550 s deadline (about 65 s of start-up before training: unpacking, tokenizing, loading). While that machine
is still warm (30 s), a second call can go on from the first one's result without carrying it:
`run --out $OUT --start-from runs/gpu/lengthdrop ...` with carry [".carry/squad"].

A model with the learned ranking (config "ranking": "learned") takes its scorers along and trains with them; the
cheap half of the front wants sub-models down to 3.6x fewer MACs: `prepare --start-from quala/models/quala-minilm`,
then `run --out $OUT --start-from start --lr-lengthdrop 2e-5 --warmup-ratio 0.02 --length-drop-ratio-bound 0.4`.
A stage that ends normally fits the scorers again on its final weights; after one stopped early, run
`quala fit-scorer --model DIR` on the unpacked directory.

Stage 2's epochs are chosen from stage 1's measured throughput so that the run ends before --deadline; if it still
runs late it gets SIGTERM, which `quala train` turns into a checkpoint, and the weights are taken from that.
"""
from __future__ import annotations

import argparse
import lzma
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".carry"
PIECE = 15 * 1024 * 1024
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
SHIPPED = ROOT / "quala" / "models" / "quala-minilm" / "model.int8.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
SCORERS = "scorer.safetensors"  # the learned ranking's, fp32: 19 KB


def prepare(start_from: Path | None = None) -> None:
    """.carry/backbone (or, with start_from, .carry/start: that model without its word embeddings, which the
    repository already carries in fp16 inside the shipped INT8 graph) and .carry/squad."""
    sys.path.insert(0, str(ROOT))
    from quala.config import backbone_dir, squad_path
    src = start_from or backbone_dir()
    dest = CARRY / ("start" if start_from else "backbone")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", SCORERS) + TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    weights = {k: v.half() for k, v in load_file(str(src / "model.safetensors")).items()}
    if start_from:  # the device takes them from the shipped graph: they must be this model's
        table = weights.pop(WORD_EMBEDDINGS)
        if not torch.equal(table, shipped_word_embeddings().half()):
            raise SystemExit(f"{src}: its word embeddings differ from those of {SHIPPED}, which the GPU machine "
                             f"would use instead; ship this model first (scripts/ship.sh {src})")
    save_file(weights, str(dest / "model.safetensors"))
    squad = CARRY / "squad"
    squad.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        with open(squad_path(split), "rb") as f, lzma.open(squad / f"{split}-v1.1.json.xz", "wb") as g:
            shutil.copyfileobj(f, g)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB")


def shipped_word_embeddings() -> torch.Tensor:
    """The fp16 word-embedding table of the shipped INT8 graph (quantize --embeddings fp16), as fp32."""
    import onnx
    from onnx import numpy_helper
    table = next(i for i in onnx.load(str(SHIPPED)).graph.initializer if i.name.endswith("_fp16"))
    return torch.from_numpy(numpy_helper.to_array(table).astype("float32"))


def start_dir(start_from: str, lengthdrop_out: Path) -> Path:
    """A folder in .carry/, or else a path in the repository such as runs/gpu/lengthdrop: the result of the last
    call, still there while the machine stays warm; that one is moved aside so the new stage can write its own."""
    src = CARRY / start_from if (CARRY / start_from).is_dir() else ROOT / start_from
    if not (src / "model.safetensors").is_file():
        raise SystemExit(f"--start-from {start_from}: no model.safetensors in {CARRY / start_from} or {src}")
    if src.resolve() == lengthdrop_out.resolve():
        n = 1 + sum(1 for _ in src.parent.glob("previous-*"))
        src = src.rename(src.parent / f"previous-{n}")
        (src / "checkpoint.pt").unlink(missing_ok=True)
    return src


def train(args, stage: str, init: Path, out: Path, epochs: float, lr: float, timeout: float, log: Path) -> int:
    cmd = [sys.executable, "-m", "quala.cli", "train", "--stage", stage, "--model", str(init), "--output", str(out),
           f"--epochs-{stage}", str(epochs), "--lr", str(lr), "--batch-size", str(args.batch_size),
           "--eval-limit", str(args.eval_limit), "--checkpoint-minutes", "3", "--warmup-ratio", str(args.warmup_ratio),
           "--length-drop-ratio-bound", str(args.length_drop_ratio_bound)]
    cmd += ["--limit", str(args.limit)] if args.limit else []
    cmd += ["--scorer-loss", str(args.scorer_loss)] if stage == "lengthdrop" and args.scorer_loss else []
    if stage == "lengthdrop" and args.front_sample:
        cmd += ["--front-sample", args.front_sample, "--front-share", str(args.front_share)]
    print(" ".join(cmd), flush=True)
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            return p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            print(f"{stage}: out of time, SIGTERM (checkpoint)", flush=True)
            p.terminate()
            return p.wait()


def last_rate(log_jsonl: Path) -> tuple[float, float]:
    """(features/s, steps per epoch) from the last training record of a log.jsonl."""
    records = [json.loads(line) for line in log_jsonl.read_text().splitlines()]
    last = [r for r in records if "features_per_s" in r][-1]
    return last["features_per_s"], last["step"] / last["epoch"]


def final_weights(stage_dir: Path, init: Path) -> Path:
    """The stage's model.safetensors; if the stage was stopped early, made from its checkpoint."""
    if (stage_dir / "model.safetensors").exists():
        return stage_dir
    sys.path.insert(0, str(ROOT))
    from quala.modeling import QualaForQuestionAnswering, load_tokenizer
    state = torch.load(stage_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = QualaForQuestionAnswering.from_pretrained(init)
    model.load_state_dict(state["model"])
    model.config.extra = {"trained_by": "quala train", "stage": state["stage"], "steps": state["step"],
                          "train_config": state["config"], "stopped_early": True}
    model.save_pretrained(stage_dir)
    load_tokenizer(init).save_pretrained(str(stage_dir))
    return stage_dir


def pack(model_dir: Path, out: Path, extra: list[Path]) -> None:
    blob = save({k: v.half().contiguous() for k, v in load_file(str(model_dir / "model.safetensors")).items()})
    for i in range(0, len(blob), PIECE):
        (out / f"weights.fp16.part{i // PIECE}").write_bytes(blob[i: i + PIECE])
    with tarfile.open(out / "meta.tar.gz", "w:gz") as tar:
        for p in [model_dir / "config.json", model_dir / SCORERS, *[model_dir / n for n in TOKENIZER_FILES], *extra]:
            if p.exists():
                tar.add(p, arcname=str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name)


def run(args) -> None:
    start = time.monotonic()
    left = lambda: args.deadline - (time.monotonic() - start)  # noqa: E731
    out = Path(args.out)
    squad = CARRY / "shared" / "data" / "squad"
    squad.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        with lzma.open(CARRY / "squad" / f"{split}-v1.1.json.xz") as g, open(squad / f"{split}-v1.1.json",
                                                                           "wb") as f:
            shutil.copyfileobj(g, f)
    os.environ.update(QUALA_SHARED=str(CARRY / "shared"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
                      TQDM_MININTERVAL="10", PYTHONUNBUFFERED="1")
    print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU: training on the CPU", flush=True)
    runs = ROOT / "runs" / "gpu"
    ft, ld = runs / "finetune", runs / "lengthdrop"
    logs = [ft / "log.jsonl", ft / "train_done.json", ld / "log.jsonl", ld / "train_done.json",
            out / "finetune.log", out / "lengthdrop.log"]
    if args.start_from:  # continue LengthDrop from a carried fp16 model, or from the last call's on a warm machine
        ft = start_dir(args.start_from, ld)
        weights = {k: v.float() for k, v in load_file(str(ft / "model.safetensors")).items()}
        if WORD_EMBEDDINGS not in weights:
            weights[WORD_EMBEDDINGS] = shipped_word_embeddings()
        save_file(weights, str(ft / "model.safetensors"))
        rate, features_per_epoch = args.lengthdrop_rate * args.lengthdrop_cost, args.features_per_epoch
    else:
        rc = train(args, "finetune", CARRY / "backbone", ft, args.epochs_finetune, args.lr_finetune,
                   left() - args.reserve - 60, out / "finetune.log")
        print(f"finetune rc={rc} after {time.monotonic() - start:.0f}s", flush=True)
        if rc != 0:
            subprocess.run(["tail", "-c", "3000", str(out / "finetune.log")])
            final_weights(ft, CARRY / "backbone")
            pack(ft, out, logs)
            return
        rate, steps_per_epoch = last_rate(ft / "log.jsonl")
        features_per_epoch = steps_per_epoch * args.batch_size
    budget = left() - args.reserve - args.startup  # tokenizing the train set again, loading
    epochs = min(args.max_epochs_lengthdrop, budget * rate / args.lengthdrop_cost / features_per_epoch)
    epochs = round(max(0.05, epochs), 2)
    print(f"stage 1: {rate:.0f} features/s; stage 2: {epochs} epochs in about {budget:.0f}s", flush=True)
    rc = train(args, "lengthdrop", ft, ld, epochs, args.lr_lengthdrop, left() - args.reserve / 2,
               out / "lengthdrop.log")
    print(f"lengthdrop rc={rc} after {time.monotonic() - start:.0f}s", flush=True)
    subprocess.run(["tail", "-c", "1500", str(out / "lengthdrop.log")])
    pack(final_weights(ld, ft), out, logs)
    for done in (ft / "train_done.json", ld / "train_done.json"):
        if done.exists():
            print(done, done.read_text(), flush=True)
    print(f"packed after {time.monotonic() - start:.0f}s: {sorted(p.name for p in out.iterdir())}")


def unpack(fetched: Path, dest: Path) -> None:
    parts = sorted(fetched.glob("weights.fp16.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if not parts:
        raise SystemExit(f"{fetched}: no weights.fp16.part* files")
    weights = load(b"".join(p.read_bytes() for p in parts))
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fetched / "meta.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    model_dir = next(p.parent for p in tmp.rglob("config.json"))
    save_file({k: v.float() for k, v in weights.items()}, str(model_dir / "model.safetensors"))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"{dest}: {sorted(str(p.relative_to(dest)) for p in dest.rglob('*') if p.is_file())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="write .carry/ (backbone in fp16, SQuAD in xz) for the device call")
    pr.add_argument("--start-from", type=Path, default=None, help="a trained model directory to continue "
                    "LengthDrop from (written to .carry/start without its word embeddings; run --start-from start)")
    r = sub.add_parser("run", help="train both stages within --deadline seconds and pack the result into --out")
    r.add_argument("--out", required=True, help="folder that comes back ($OUT)")
    r.add_argument("--deadline", type=float, default=540, help="seconds from start to packed result (default 540)")
    r.add_argument("--reserve", type=float, default=70, help="seconds kept for evaluation and packing (default 70)")
    r.add_argument("--epochs-finetune", type=float, default=3.0)
    r.add_argument("--max-epochs-lengthdrop", type=float, default=6.0)
    r.add_argument("--lr-finetune", type=float, default=8e-5)
    r.add_argument("--lr-lengthdrop", type=float, default=5e-5)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--length-drop-ratio-bound", type=float, default=0.2,
                   help="LengthDrop's ratio bound (0.4 trains sub-models down to 3.6x fewer MACs)")
    r.add_argument("--warmup-ratio", type=float, default=0.1)
    r.add_argument("--scorer-loss", type=float, default=0.0, help="LengthDrop trains the learned ranking's scorers "
                   "with the model at this weight (quala train --scorer-loss; a model with learned scorers only)")
    r.add_argument("--front-sample", default=None, help="LengthDrop also draws sub-models near this front (quala "
                   "train --front-sample; e.g. quala/models/quala-minilm, which travels with the working tree)")
    r.add_argument("--front-share", type=float, default=0.5, help="with --front-sample (quala train --front-share)")
    r.add_argument("--start-from", default=None, help="LengthDrop only, from a folder in .carry/ (an fp16 model) "
                   "or in the repository (runs/gpu/lengthdrop: the last call's result on a still-warm machine)")
    r.add_argument("--lengthdrop-rate", type=float, default=204, help="with --start-from: LengthDrop features/s "
                   "measured before (H100: 204)")
    r.add_argument("--features-per-epoch", type=float, default=83_264, help="with --start-from (SQuAD: 83,264)")
    r.add_argument("--startup", type=float, default=30, help="seconds to load and tokenize before stage 2")
    r.add_argument("--eval-limit", type=int, default=2000)
    r.add_argument("--limit", type=int, default=None, help="train on the first N questions (a dry run on CPU)")
    r.add_argument("--lengthdrop-cost", type=float, default=4.8,
                   help="time of a LengthDrop step over a fine-tuning step (H100, batch 32: 4.8)")
    u = sub.add_parser("unpack", help="rebuild a model directory (fp32 safetensors) from the fetched files")
    u.add_argument("fetched", type=Path)
    u.add_argument("dest", type=Path)
    args = p.parse_args()
    if args.command == "prepare":
        prepare(args.start_from)
    elif args.command == "run":
        run(args)
    else:
        unpack(args.fetched, args.dest)


if __name__ == "__main__":
    main()
