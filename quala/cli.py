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
    from quala.data import Example, make_features, postprocess
    from quala.evaluate import run_features
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
    examples = [Example(str(i), q, context) for i, q in enumerate(questions)]
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    starts, ends, _ = run_features(predictor, features, lc, args.batch_size, progress=False)
    for q, a in zip(questions, postprocess(examples, features, starts, ends)):
        print(f"Q: {q}\nA: {a.text}  (score {a.score:.3f}, characters {a.start}-{a.end})")


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
