"""The `quala` command: argument parsing and printing only; the work happens in the modules."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quala.config import LengthConfig, QualaError, default_model_dir, squad_path


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="model directory (config.json, model.safetensors, tokenizer); default: the released model "
                        "shipped with quala, else the untrained all-MiniLM-L6-v2 backbone")
    p.add_argument("--length-config", default=None,
                   help="tokens kept after each layer: ratios of each input's length ('1.0,0.8,0.6,0.5,0.4,0.3') "
                        "or token counts ('315,251,242,159,142,33'); 'full' for no dropping; default: the model's")
    p.add_argument("--batch-size", type=int, default=32, help="features per forward pass (default 32)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast (fast on CPUs with AVX512-BF16/AMX)")


def load_predictor(args):
    import torch

    from quala.evaluate import TorchPredictor
    from quala.modeling import load
    model_dir = args.model or default_model_dir()
    model, tokenizer = load(model_dir)
    lc = LengthConfig.parse(args.length_config) if args.length_config else model.default_length_config
    if lc is not None:
        lc.check(model.config.num_hidden_layers, model.config.max_seq_length)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    return TorchPredictor(model, dtype), tokenizer, model.config, lc, model_dir


def cmd_eval(args) -> None:
    from quala.data import load_squad
    from quala.evaluate import evaluate
    from quala.files import write_json_atomic
    data = args.data or squad_path("dev")
    examples = load_squad(data, limit=args.limit)
    predictor, tokenizer, config, lc, model_dir = load_predictor(args)
    t0 = time.perf_counter()
    r = evaluate(predictor, tokenizer, examples, lc, args.batch_size, config.max_seq_length, config.doc_stride,
                 config.max_query_length)
    seconds = time.perf_counter() - t0
    if args.output:
        write_json_atomic(args.output, r.predictions(examples))
    print(f"model          {model_dir}")
    print(f"data           {data}")
    print(f"questions      {r.questions} ({r.features} features, {r.tokens:.1f} tokens each on average)")
    print(f"length config  {lc or 'full'}")
    print("kept tokens    " + " ".join(f"{k:.1f}" for k in r.kept_per_layer) + "  (mean per layer)")
    print(f"exact match    {r.exact_match:.2f}")
    print(f"F1             {r.f1:.2f}")
    print(f"time           {seconds:.1f} s ({1000 * seconds / r.features:.1f} ms per feature)")
    if args.output:
        print(f"predictions    {args.output}")


def cmd_answer(args) -> None:
    from quala.evaluate import answer_questions
    if args.context_file:
        from quala.files import read_text
        context = read_text(args.context_file)
    elif args.context is not None:
        context = args.context
    else:
        context = sys.stdin.read()
    if not context.strip():
        raise QualaError("the context is empty: give --context, --context-file or text on standard input")
    questions = [q.strip() for q in args.question]
    for q in questions:
        if not q:
            raise QualaError("a --question is empty")
    predictor, tokenizer, config, lc, _ = load_predictor(args)
    answers = answer_questions(predictor, tokenizer, [(q, context) for q in questions], lc, 1, args.batch_size,
                               config.max_seq_length, config.doc_stride, config.max_query_length)
    for q, (a,) in zip(questions, answers):
        print(f"Q: {q}\nA: {a.text}  (score {a.score:.3f}, characters {a.start}-{a.end})")


def cmd_train(args) -> None:
    from quala.config import backbone_dir
    from quala.train import TrainConfig, train
    cfg = TrainConfig(model=str(args.model or backbone_dir()), output=str(args.output), stage=args.stage,
                      train_file=str(args.train_file or ""), dev_file=str(args.dev_file or ""), limit=args.limit,
                      heldout_fraction=args.heldout_fraction,
                      epochs_finetune=args.epochs_finetune, epochs_lengthdrop=args.epochs_lengthdrop,
                      max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_ratio=args.warmup_ratio, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                      num_sandwich=args.num_sandwich, length_drop_ratio_bound=args.length_drop_ratio_bound,
                      layer_dropout_prob=args.layer_dropout_prob, teacher=args.teacher,
                      temperature=args.temperature, alpha=args.alpha, bf16=args.dtype == "bf16", seed=args.seed,
                      checkpoint_minutes=args.checkpoint_minutes, eval_limit=args.eval_limit, resume=args.resume)
    final = train(cfg)
    print(f"model saved in {final}")


def add_train_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--model", type=Path, default=None, help="initial model directory (default: the all-MiniLM-L6-v2 backbone; "
      "for --stage lengthdrop, the output of --stage finetune)")
    a("--output", type=Path, required=True, help="output folder: model directories, checkpoint.pt, log.jsonl "
      "(with --stage both: OUTPUT/finetune and OUTPUT/lengthdrop)")
    a("--stage", default="both", choices=["finetune", "lengthdrop", "both"],
      help="finetune: full-length span-QA training; lengthdrop: sandwich-rule LengthDrop with in-place "
      "distillation; both: one after the other (default)")
    a("--train-file", type=Path, default=None, help="SQuAD v1.1 train JSON (default: the shared train set)")
    a("--dev-file", type=Path, default=None, help="SQuAD v1.1 dev JSON scored at the end of each stage")
    a("--limit", type=int, default=None, help="train on the first N questions only")
    a("--heldout-fraction", type=float, default=0.05, help="fraction of train articles kept out of training for "
      "`quala search` (default 0.05; whole articles, fixed seed)")
    a("--epochs-finetune", type=float, default=2.0, help="epochs of stage 1 (default 2; fractions allowed)")
    a("--epochs-lengthdrop", type=float, default=5.0, help="epochs of stage 2 (default 5; fractions allowed)")
    a("--max-steps", type=int, default=None, help="stop each stage after this many optimizer steps")
    a("--batch-size", type=int, default=32, help="features per step (per process under torchrun; default 32)")
    a("--lr", type=float, default=3e-5, help="peak learning rate of AdamW (default 3e-5)")
    a("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warm-up (default 0.1)")
    a("--max-seq-length", type=int, default=384, help="window length in tokens (default 384)")
    a("--doc-stride", type=int, default=128, help="overlap between windows of a long context (default 128)")
    a("--num-sandwich", type=int, default=2, help="random sub-models per step besides the smallest (default 2)")
    a("--length-drop-ratio-bound", type=float, default=0.2,
      help="each layer keeps between (1 - bound) and all of the previous layer's tokens (default 0.2)")
    a("--layer-dropout-prob", type=float, default=0.2,
      help="LayerDrop probability for each layer of the random sub-models (default 0.2; 0 turns it off)")
    a("--teacher", type=Path, default=None, help="Hugging Face question-answering model directory to distil "
      "from (same vocabulary); its logits are computed once and cached in the output folder")
    a("--temperature", type=float, default=2.0, help="distillation temperature for the teacher (default 2)")
    a("--alpha", type=float, default=0.5, help="weight of the teacher loss vs the label loss (default 0.5)")
    a("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 autocast (default) or fp32")
    a("--seed", type=int, default=42, help="random seed (data order, dropout, sub-model sampling)")
    a("--checkpoint-minutes", type=float, default=10.0, help="save a resumable checkpoint this often (default 10)")
    a("--eval-limit", type=int, default=None, help="dev questions scored at the end of each stage (default all)")
    a("--resume", action="store_true", help="continue from OUTPUT's checkpoint exactly where it stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quala", description="Fast extractive question answering on CPUs with "
                                     "one length-adaptive, quantized MiniLM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score a model on a SQuAD v1.1 file (EM/F1, official rules)",
                       description="Score a model on a SQuAD v1.1 file with the official EM/F1 rules.")
    add_model_args(p)
    p.add_argument("--data", type=Path, default=None,
                   help="SQuAD v1.1 JSON file; default: the official dev set in $QUALA_SHARED (../shared)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--output", type=Path, default=None, help="write predictions {id: answer} to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("answer", help="answer questions about a context",
                       description="Answer one or more questions about a context (long contexts are split into "
                                   "overlapping windows, never truncated).")
    add_model_args(p)
    p.add_argument("--question", "-q", action="append", required=True, help="a question (repeat for several)")
    p.add_argument("--context", "-c", default=None, help="the context text")
    p.add_argument("--context-file", type=Path, default=None,
                   help="read the context from this UTF-8 file (default: --context, else standard input)")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("train", help="fine-tune and LengthDrop-train a model on SQuAD v1.1",
                       description="Train a length-adaptive model: span-QA fine-tuning (optionally distilled from a "
                                   "teacher), then LengthDrop with the sandwich rule and in-place distillation. "
                                   "Runs on CPU, one GPU, or several under torchrun. Ctrl-C saves a checkpoint.")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
