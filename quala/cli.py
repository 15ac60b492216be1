"""The `quala` command: argument parsing and printing only; the work happens in the modules."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from quala import __version__
from quala.config import SCORER_INPUTS, LengthConfig, QualaError, default_model_dir, squad_path
from quala.longdoc import PASSAGES, WHOLE_TOKENS


TRAIN_EXTRA = ("torch", "transformers", "safetensors", "matplotlib")  # top-level modules of `quala[train]`


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    value = whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a clear message instead of a traceback later)."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: 0 or more, finite (an infinite wait would hold a lone request for good)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def layer_or_none(text: str) -> int | str:
    """argparse type: a layer number >= 0, or "none"."""
    if text.lower() == "none":
        return "none"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a layer number nor 'none'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"layers count from 0, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def positive_fraction(text: str) -> float:
    """argparse type: a number in (0, 1] (a grid step or a smallest ratio: 0 would divide by zero later)."""
    value = fraction(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0 and at most 1, got 0")
    return value


def speedup_range(text: str) -> tuple[float, float]:
    """argparse type: 'LO:HI', factors of fewer MACs with 1 <= LO < HI."""
    lo, sep, hi = text.partition(":")
    try:
        values = (finite_float(lo), finite_float(hi)) if sep else None
    except argparse.ArgumentTypeError:
        values = None
    if values is None or not 1 <= values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"give LO:HI with 1 <= LO < HI (times fewer MACs, e.g. 1.4:1.75), "
                                         f"got {text!r}")
    return values


def output_file(text: str) -> Path:
    """argparse type: a file we can write, checked before any work (its folder exists, it is not a folder)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent}: no such folder")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{path.parent}: not writable")
    return path


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="model directory (config.json, model.int8.onnx or model.safetensors, tokenizer); default: "
                        "the released model shipped with quala")
    p.add_argument("--length-config", default=None,
                   help="tokens kept after each layer as ratios of each input's length ('1,0.8,0.6,0.5,0.4,0.3'), "
                        "or absolute token counts with a 'tokens:' prefix ('tokens:315,251,242,159,142,33'); "
                        "ratios with '@B' ('0.6,0.4,0.4,0.3,0.13,0.13@0.5') are shares r of a 384-token window: "
                        "a window of n tokens keeps r*384*(n/384)^B (shorter windows keep a larger share); "
                        "'full' for no dropping; default: the model's")
    p.add_argument("--budget", default=None,
                   help="pick the most accurate configuration of the model's length_configs.json (written by "
                        "`quala search`) that fits: a latency ('20ms'), a cost ('2.5GMACs'), a speedup over the "
                        "full length ('3x') or a named point (fastest, balanced, accurate, full)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="features per forward pass (default 32)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast (torch runtime; fast on CPUs with AVX512-BF16/AMX)")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto",
                   help="inference engine: torch (model.safetensors, needs PyTorch), onnx (model.onnx) or "
                        "onnx-int8 (model.int8.onnx) in ONNX Runtime; auto (default) takes the first of "
                        "model.int8.onnx, model.onnx, model.safetensors that the directory holds (torch for bf16)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the model's files against its SHA256SUMS.json (models under development)")


def load_answerer(args):
    """The model of --model as a QuestionAnswerer, and the configuration of --budget / --length-config."""
    from quala.pipeline import load
    qa = load(args.model, getattr(args, "runtime", "auto"), verify=not getattr(args, "no_verify", False),
              dtype=getattr(args, "dtype", "fp32"))
    lc, point = qa.resolve(getattr(args, "budget", None), getattr(args, "length_config", None))
    chosen = f"{args.budget} -> {point.describe()}" if point else None
    return qa, lc, chosen


def load_predictor(args):
    """(predictor, tokenizer, config, length config, model dir) for commands that drive the engine directly."""
    qa, lc, _ = load_answerer(args)
    return qa.predictor, qa.tokenizer, qa.config, lc, qa.model_dir


def cmd_eval(args) -> None:
    from quala.data import load_squad
    from quala.files import write_json_atomic
    from quala.runtime import cpu_description
    data = args.data or squad_path("dev")
    examples = load_squad(data, limit=args.limit)
    qa, lc, chosen = load_answerer(args)
    t0 = time.perf_counter()
    r = qa.evaluate(examples, lc, args.batch_size)
    seconds = time.perf_counter() - t0
    if args.output:
        write_json_atomic(args.output, r.predictions(examples))
    print(f"model          {qa.model_dir}")
    print(f"engine         {qa.predictor.describe()}")  # quala.load makes an OnnxPredictor or a TorchPredictor
    print(f"cpu            {cpu_description()}")
    print(f"data           {data}")
    print(f"questions      {r.questions} ({r.features} features, {r.tokens:.1f} tokens each on average)")
    if chosen:
        print(f"budget         {chosen}")
    print(f"length config  {lc or 'full'}")
    print("kept tokens    " + " ".join(f"{k:.1f}" for k in r.kept_per_layer) + "  (mean per layer)")
    print(f"exact match    {r.exact_match:.2f}")
    print(f"F1             {r.f1:.2f}")
    print(f"time           {seconds:.1f} s ({1000 * seconds / r.features:.1f} ms per feature)")
    if args.output:
        print(f"predictions    {args.output}")


def read_context(args) -> str:
    if args.context_file and args.context is not None:
        raise QualaError("give --context or --context-file, not both")
    if args.context_file:
        from quala.files import read_text
        return read_text(args.context_file)
    if args.context is not None:
        return args.context
    if sys.stdin.isatty():
        raise QualaError("no context: give --context TEXT, --context-file FILE, or pipe the text to standard input")
    return sys.stdin.read()


def cmd_answer(args) -> None:
    context = read_context(args)
    if not context.strip():
        raise QualaError("the context is empty: give --context, --context-file or text on standard input")
    questions = [q.strip() for q in args.question]
    for q in questions:
        if not q:
            raise QualaError("a --question is empty")
    from quala.data import unencodable
    for name, text in [("the context", context)] + [(f"--question {q!a}", q) for q in questions]:
        if problem := unencodable(text):
            raise QualaError(f"{name} {problem}")
    qa, lc, chosen = load_answerer(args)
    if chosen:
        print(f"budget {chosen}", file=sys.stderr)
    answers = qa.answer_pairs([(q, context) for q in questions], lc, args.top_k, args.batch_size,
                              progress=sys.stderr.isatty(), passages=None if args.read_all else args.passages)
    for q, ranked in zip(questions, answers):
        print(f"Q: {q}")
        for a in ranked:
            print(f"A: {a.text}  (score {a.score:.3f}, characters {a.start}-{a.end})")


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
                      temperature=args.temperature, alpha=args.alpha,
                      bf16=None if args.dtype == "auto" else args.dtype == "bf16", seed=args.seed,
                      checkpoint_minutes=args.checkpoint_minutes, eval_limit=args.eval_limit, resume=args.resume,
                      scorer_loss=args.scorer_loss, refit_scorers=args.refit_scorers,
                      front_sample=str(args.front_sample or ""), front_share=args.front_share,
                      front_jitter=args.front_jitter, attention_dropout=args.attention_dropout)
    final = train(cfg)
    print(f"model saved in {final}")


def cmd_export(args) -> None:
    from quala.export import export_dir
    overrides = {}
    if args.question_last_layer is not None:
        overrides["question_last_layer"] = None if args.question_last_layer == "none" else args.question_last_layer
    path = export_dir(args.model, args.output, args.layer_skips, args.ranking, overrides)
    if overrides:  # once the graph is written: the directory's config says it too, so PyTorch ranks as the graph does
        from quala.files import read_json, write_json_atomic
        raw = read_json(args.model / "config.json")
        raw.setdefault("quala", {}).update(overrides)
        write_json_atomic(args.model / "config.json", raw)
        print(f"{args.model / 'config.json'}: question_last_layer {overrides['question_last_layer']}")
    print(f"ONNX model (token_counts as an input: one graph for every length config) written to {path}")


def cmd_fit_scorer(args) -> None:
    from quala.files import read_json, write_json_atomic
    from quala.scorer import fit_dir
    configs = [lc for c in args.length_configs.split(";") if (lc := LengthConfig.parse(c)) is not None]
    path = fit_dir(args.model, args.questions, str(args.train_file or ""), args.heldout_fraction, configs,
                   args.inputs)
    print(f"scorer weights written to {path}")
    if not args.keep_ranking:  # only quala.ranking changes: other keys (e.g. transformers' "dtype") stay as they are
        raw = read_json(args.model / "config.json")  # read and checked by fit_dir's model load
        raw.setdefault("quala", {})["ranking"] = "learned"
        write_json_atomic(args.model / "config.json", raw)
        print(f"{args.model / 'config.json'}: ranking 'learned' (export bakes it into the graph)")


def cmd_quantize(args) -> None:
    from quala.quantize import quantize_model
    path = quantize_model(args.model, args.mode, args.output, args.keep_float, args.calibration_features,
                          args.train_file, args.embeddings, args.activations)
    print(f"INT8 ({args.mode}) model written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def add_onnx_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a model directory to ONNX (DIR/model.onnx)",
                       description="Export to ONNX with the length configuration as a runtime input "
                                   "(token_counts), so one graph serves every configuration.")
    p.add_argument("--model", type=Path, required=True, help="model directory with model.safetensors")
    p.add_argument("--output", type=Path, default=None, help="ONNX file to write (default: DIR/model.onnx)")
    p.add_argument("--ranking", choices=["attention", "question", "cls", "learned"], default=None,
                   help="how each layer ranks the tokens it keeps (default: the model's own, config.json's "
                        "quala.ranking): attention received, attention from the question and [CLS], from [CLS], or "
                        "the learned scorers of DIR/scorer.safetensors (quala fit-scorer)")
    p.add_argument("--layer-skips", action="store_true",
                   help="let the graph skip a layer (a 0 in a length config); costs 7-14%% more time at full length")
    p.add_argument("--question-last-layer", type=layer_or_none, default=None, metavar="L",
                   help="from layer L on (0-based) the question's tokens are dropped before any context token "
                        "([CLS] stays); 'none' ranks them as the ranking does. Saved in DIR/config.json "
                        "(quala.question_last_layer) and baked into the graph (default: the config's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fit-scorer", help="fit the learned token ranking's scorers (DIR/scorer.safetensors)",
                       description="Fit one linear scorer per layer (ridge regression, no gradient steps, the weights "
                                   "unchanged) to where the full-length model puts its answer, on training articles "
                                   "only (never the held-out ones the search scores, never dev); the model then "
                                   "ranks tokens with it (config.json quala.ranking = 'learned').")
    p.add_argument("--model", type=Path, required=True, help="model directory with model.safetensors")
    p.add_argument("--questions", type=positive_int, default=2000,
                   help="training questions to fit on, spread over the training articles (default 2000)")
    p.add_argument("--train-file", type=Path, default=None,
                   help="SQuAD v1.1 file (default: the model's training file, else the shared train set)")
    p.add_argument("--heldout-fraction", type=fraction, default=None,
                   help="articles held out for the search, left out here (default: the model's training setting)")
    p.add_argument("--length-configs", default="",
                   help="also fit on the states these sub-models' layers rank (ratio configurations separated by "
                        "';', e.g. front points at 1.5x, 2x and 3x): a layer that sees fewer tokens has other "
                        "states than at full length (default: full length only)")
    p.add_argument("--inputs", choices=SCORER_INPUTS, default="lexical",
                   help="what each scorer reads: 'states' (the token's input state and attended context), "
                        "'question' (those, the state matched to the question's mean state, and the attention the "
                        "question pays the token) or 'lexical' (those, where the question's rarer word pieces occur "
                        "in the context and how near, and how much of the question the nearby context holds: an idf "
                        "table counted on the training articles; default)")
    p.add_argument("--keep-ranking", action="store_true", help="write the scorers, leave config.json's ranking")
    p.set_defaults(func=cmd_fit_scorer)

    p = sub.add_parser("quantize", help="INT8-quantize DIR/model.onnx to DIR/model.int8.onnx (ONNX Runtime)",
                       description="Post-training INT8 quantization of the linear layers with ONNX Runtime "
                                   "(exports DIR/model.onnx first when missing).")
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--mode", choices=["dynamic", "static"], default="dynamic",
                   help="dynamic (default: the faster and more accurate one on the AVX-512 VNNI CPU it was "
                        "measured on): per-channel int8 weights, activations quantized per batch at run time; "
                        "static: QDQ with activation ranges calibrated on SQuAD train features")
    p.add_argument("--output", type=Path, default=None, help="file to write (default: DIR/model.int8.onnx)")
    p.add_argument("--keep-float", default=None, metavar="PATTERN",
                   help="regular expression on ONNX node names to keep in float (mixed precision), e.g. "
                        "'layers\\.5/ffn_out'")
    p.add_argument("--calibration-features", type=positive_int, default=256,
                   help="SQuAD train features for static calibration (default 256)")
    p.add_argument("--train-file", type=Path, default=None,
                   help="SQuAD v1.1 train JSON for calibration (default: the shared train set; never dev)")
    p.add_argument("--embeddings", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="storage of the word-embedding table, 80%% of the file: fp32 (default), fp16 (the file "
                        "shrinks 1.7x, no accuracy change) or int8 with a scale per row (2.6x; about -0.8 F1)")
    p.add_argument("--activations", choices=["per-tensor", "per-row"], default="per-tensor",
                   help="dynamic mode's activation scales: per-tensor (default: ONNX Runtime's, one per batch, so "
                        "a row's answer depends on its batch-mates) or per-row (one scale and zero point per "
                        "token: batch-invariant, so the server may batch requests together)")
    p.set_defaults(func=cmd_quantize)


def cmd_search(args) -> None:
    from quala.budget import front_path
    from quala.report import PLOT_FILE, markdown_table
    from quala.search import SearchSettings, run_search, start_configs
    if args.length_config or args.budget:
        raise QualaError("`quala search` explores the length configurations itself: drop --length-config/--budget")
    predictor, tokenizer, _, _, model_dir = load_predictor(args)
    s = SearchSettings(population=args.population, iterations=args.iterations, mutations=args.mutations,
                       crossovers=args.crossovers, mutation_prob=args.mutation_prob, seed=args.seed,
                       min_ratio=args.min_ratio, step=args.step, limit=args.limit,
                       confirm_limit=args.confirm_limit, confirm_margin=args.confirm_margin,
                       dev_limit=args.dev_limit,
                       train_file=str(args.train_file or ""), dev_file=str(args.dev_file or ""),
                       heldout_fraction=args.heldout_fraction, batch_size=args.batch_size, latency=args.latency,
                       latency_features=args.latency_features, latency_repeats=args.latency_repeats,
                       work_dir=str(args.work_dir or ""), length_exponent=args.length_exponent,
                       focus=args.focus or ())
    if args.start_configs:
        s.start_configs = start_configs(args.start_configs, s)
    front = run_search(model_dir, s, predictor, tokenizer)
    print(markdown_table(front))
    print(f"\nfront     {front_path(model_dir)}\nplot      {Path(model_dir) / PLOT_FILE}")


def cmd_report(args) -> None:
    from quala.budget import front_path, read_front
    from quala.report import PLOT_FILE, compare_markdown, markdown_table, plot_front
    if args.tradeoff:
        from quala.report import plot_tradeoff, read_tradeoff, tradeoff_markdown
        if args.model:
            raise QualaError("give --model or --tradeoff, not both")
        obj = read_tradeoff(args.tradeoff)
        plot = args.plot or args.tradeoff.with_suffix(".png")
        plot_tradeoff(obj, plot)
        print(tradeoff_markdown(obj))
        print(f"\nplot      {plot}")
        return
    model_dir = Path(args.model or default_model_dir())
    released = released_files(model_dir)
    if args.time:
        if front_path(model_dir).name in released:
            raise QualaError(f"{model_dir} is a released model (its files are checksummed): time a copy without its "
                             f"checksums, e.g. cp -r {model_dir} runs/model && rm runs/model/SHA256SUMS.json && "
                             f"quala report --model runs/model --time")
        from quala.runtime import load_predictor as load
        from quala.search import retime_front
        predictor, tokenizer, _ = load(model_dir, args.runtime, threads=args.threads)
        retime_front(model_dir, predictor, tokenizer, args.latency_repeats, args.latency_features)
    front = read_front(model_dir)
    compare = {str(d): read_front(d) for d in args.compare or []}
    plot = args.plot or Path(model_dir) / PLOT_FILE
    if args.plot or plot.name not in released:  # never edit a released model's files
        plot_front(front, plot, compare)
    print(markdown_table(front))
    if compare:
        print("\nBest point at or beyond each saving in MACs:\n")
        print(compare_markdown({str(model_dir): front, **compare}))
    print(f"\nfront     {front_path(model_dir)}\nplot      {plot}")


def released_files(model_dir: Path) -> set[str]:
    """Names listed in the directory's SHA256SUMS.json: a released model whose files quala must not rewrite."""
    from quala.files import read_json
    sums = model_dir / "SHA256SUMS.json"
    return set(read_json(sums)) if sums.is_file() else set()


def add_search_parsers(sub) -> None:
    p = sub.add_parser("search", help="evolutionary search for the best length configuration at each cost",
                       description="Evolutionary search (Length-Adaptive Transformer) over ratio length "
                                   "configurations, scored on held-out training articles; the Pareto front of F1 "
                                   "against GMACs is reported on the dev set and written to "
                                   "MODEL/length_configs.json (used by --budget) with a plot. Resumable: scores are "
                                   "cached and the state saved every generation.")
    add_model_args(p)
    a = p.add_argument
    a("--population", type=positive_int, default=20, help="configurations of generation 0, spread over cost (default 20)")
    a("--iterations", type=positive_int, default=30, help="generations after the first (default 30)")
    a("--mutations", type=positive_int, default=30, help="mutants per generation (default 30)")
    a("--crossovers", type=positive_int, default=30, help="crossover children per generation (default 30)")
    a("--mutation-prob", type=fraction, default=0.5, help="probability that a layer's ratio mutates (default 0.5)")
    a("--seed", type=int, default=0, help="random seed of the evolution (default 0)")
    a("--start-configs", default=None, help="also put these in generation 0: a length_configs.json or a model "
      "directory (the points of its front, e.g. the last release's after more training) or ratio configurations "
      "separated by ';'")
    a("--min-ratio", type=positive_fraction, default=0.05,
      help="smallest ratio of tokens a layer may keep (default 0.05)")
    a("--step", type=positive_fraction, default=0.01, help="ratios are multiples of this (default 0.01)")
    a("--length-exponent", type=fraction, default=1.0, help="search configurations 'r,r,...@B' with this exponent "
      "B: each ratio is the share of a 384-token window and a window of n tokens keeps r*384*(n/384)^B, so long "
      "windows keep a smaller share (default 1: plain ratios, r*n)")
    a("--focus", type=speedup_range, default=None, metavar="LO:HI", help="after generation 0, only add "
      "configurations with LO to HI times fewer MACs than full length on the search's sample, bred from the "
      "front's points there (e.g. 1.4:1.75 to fill a front's gap around 1.5x; default: anywhere)")
    a("--limit", type=positive_int, default=None, help="score on the first N questions of the search split (default all)")
    a("--confirm-limit", type=int, default=2000, help="score the front again on the N held-out questions after "
      "the first --limit (default 2000; 0: no) and choose names and budgets by that larger sample: a few hundred "
      "questions rank points within a point of F1 of each other noisily")
    a("--confirm-margin", type=non_negative_float, default=0.0, help="also score again every configuration whose "
      "search F1 is within this many points of the front at its cost, and report the front of those larger-sample "
      "scores (default 0: only the front's points): with --limit 400, configurations a point apart swap places by "
      "chance")
    a("--dev-limit", type=positive_int, default=None, help="score the front on the first N dev questions (default "
      "all); its GMACs are priced over every dev window")
    a("--train-file", type=Path, default=None, help="SQuAD v1.1 train JSON whose held-out articles are scored "
      "(default: the model's training file, else the shared train set)")
    a("--heldout-fraction", type=fraction, default=None, help="fraction of train articles held out (default: the "
      "model's training setting, else 0.05); must match training, or the search scores trained-on articles")
    a("--dev-file", type=Path, default=None, help="SQuAD v1.1 dev JSON (default: the shared dev set)")
    a("--latency", action="store_true", help="also time each front configuration (batch 1) on this runtime")
    a("--latency-features", type=positive_int, default=32, help="features timed per configuration (default 32)")
    a("--latency-repeats", type=positive_int, default=5, help="timings per feature; the median counts (default 5)")
    a("--work-dir", type=Path, default=None, help="folder of the score cache and search state (default: MODEL)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="print the searched front as a table and redraw its plot",
                       description="Print MODEL/length_configs.json as a markdown table and redraw "
                                   "MODEL/length_configs.png.")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the released model)")
    p.add_argument("--plot", type=Path, default=None, help="PNG to write (default: MODEL/length_configs.png)")
    p.add_argument("--compare", type=Path, action="append", default=None, metavar="DIR",
                   help="another model directory whose front joins the plot and a table of the best point at each "
                        "saving in MACs (repeatable), e.g. the previous release")
    p.add_argument("--tradeoff", type=Path, default=None, metavar="FILE",
                   help="instead, print and plot a benchmarks/tradeoff.py --json file (default plot: FILE.png)")
    p.add_argument("--time", action="store_true", help="first time every front point again on this machine "
                   "(batch 1, the search's sample of held-out features) and save the latencies; the scores stay")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto",
                   help="engine timed by --time (default auto: the INT8 graph when there is one)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads for --time (default: physical cores)")
    p.add_argument("--latency-features", type=positive_int, default=32, help="features timed by --time (default 32)")
    p.add_argument("--latency-repeats", type=positive_int, default=5, help="timings per feature for --time (default 5)")
    p.set_defaults(func=cmd_report)


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
    a("--limit", type=positive_int, default=None, help="train on the first N questions only")
    a("--heldout-fraction", type=fraction, default=0.05, help="fraction of train articles kept out of training for "
      "`quala search` (default 0.05; whole articles, fixed seed)")
    a("--epochs-finetune", type=positive_float, default=2.0, help="epochs of stage 1 (default 2; fractions allowed)")
    a("--epochs-lengthdrop", type=positive_float, default=5.0, help="epochs of stage 2 (default 5; fractions allowed)")
    a("--max-steps", type=positive_int, default=None, help="stop each stage after this many optimizer steps")
    a("--batch-size", type=int, default=32, help="features per step (per process under torchrun; default 32)")
    a("--lr", type=positive_float, default=3e-5, help="peak learning rate of AdamW (default 3e-5)")
    a("--warmup-ratio", type=fraction, default=0.1, help="fraction of steps with linear warm-up (default 0.1)")
    a("--max-seq-length", type=positive_int, default=384, help="window length in tokens (default 384)")
    a("--doc-stride", type=positive_int, default=128, help="overlap between windows of a long context (default 128)")
    a("--num-sandwich", type=int, default=2, help="random sub-models per step besides the smallest (default 2)")
    a("--length-drop-ratio-bound", type=fraction, default=0.2,
      help="each layer keeps between (1 - bound) and all of the previous layer's tokens (default 0.2)")
    a("--layer-dropout-prob", type=fraction, default=0.2,
      help="LayerDrop probability for each layer of the random sub-models (default 0.2; 0 turns it off)")
    a("--attention-dropout", type=fraction, default=None,
      help="dropout on the attention probabilities (default: the model's config, 0.1); 0 makes a LengthDrop step "
           "on a CPU about 1.3x faster (benchmarks/train_throughput.py)")
    a("--teacher", type=Path, default=None, help="Hugging Face question-answering model directory to distil "
      "from (same vocabulary); its logits are computed once and cached in the output folder")
    a("--temperature", type=positive_float, default=2.0, help="distillation temperature for the teacher (default 2)")
    a("--alpha", type=fraction, default=0.5, help="weight of the teacher loss vs the label loss (default 0.5)")
    a("--scorer-loss", type=fraction, default=0.0, help="train the learned ranking's scorers with the model: this "
      "weight on their squared error against the full model's answer mass near each token, whose gradient also "
      "shapes the early layers' states (default 0: the scorers stay as fitted)")
    a("--front-sample", type=Path, default=None, help="LengthDrop draws random sub-models near this front's points "
      "(a model directory or its length_configs.json) as well as uniformly: trains the configurations budgets pick")
    a("--front-share", type=fraction, default=0.5, help="with --front-sample: share of the random sub-models drawn "
      "from the front (default 0.5)")
    a("--front-jitter", type=fraction, default=0.1, help="with --front-sample: each drawn ratio is scaled by a "
      "uniform factor in [1 - J, 1 + J] (default 0.1)")
    a("--refit-scorers", action=argparse.BooleanOptionalAction, default=None,
      help="fit the learned ranking's scorers again on the final weights (default: after fine-tuning, where they "
      "played no part, yes; after LengthDrop, whose sub-models learned to work with the scorers they ranked by, no)")
    a("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
      help="bf16 autocast or fp32; auto (default): bf16 where the hardware computes it (a GPU that supports it, a "
      "CPU with AVX512-BF16 or AMX), else fp32 (emulated bf16 is far slower)")
    a("--seed", type=int, default=42, help="random seed (data order, dropout, sub-model sampling)")
    a("--checkpoint-minutes", type=positive_float, default=10.0,
      help="save a resumable checkpoint this often (default 10); OUT/checkpoint is then a model directory of the "
           "weights so far")
    a("--eval-limit", type=positive_int, default=None, help="dev questions scored at the end of each stage (default all)")
    a("--resume", action="store_true", help="continue from OUTPUT's checkpoint exactly where it stopped")


def cmd_predict(args) -> None:
    from quala.predict import ModelSpec, Options, predict
    given = {"top_k": args.top_k, "part_rows": args.part_rows, "max_chars": args.max_chars}
    options = Options(args.budget, args.length_config, batch_size=args.batch_size, limit=args.limit,
                      passages=None if args.read_all else args.passages,
                      **{k: v for k, v in given.items() if v is not None})
    spec = ModelSpec(str(args.model) if args.model else None, args.runtime, args.threads,
                     not getattr(args, "no_verify", False), args.dtype)
    s = predict(args.input, args.output, options, spec, args.workers, args.ray, progress=not args.quiet)
    engine = {"ray": "Ray actors", "processes": "worker processes", "process": "process"}[s.engine]
    print(f"output         {s.output} ({s.parts} parts, {s.parts_skipped} done before this run)")
    print(f"rows           {s.rows}: {s.answered} answered, {s.rejected} rejected"
          + (" (reasons in _rejects-*.jsonl)" if s.rejected else ""))
    print(f"time           {s.seconds:.1f} s, {s.rows_per_second:.1f} rows/s "
          f"({s.workers} {engine} x {s.threads} thread{'s' if s.threads > 1 else ''})")


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="answer a JSONL or Parquet collection of questions, in resumable parts",
                       description="Answer every row (id, question, context, optional budget) of a JSONL or Parquet "
                                   "file or folder into a folder of parts (part-00000.jsonl ...), on every core or "
                                   "a Ray cluster. Memory stays flat; a rerun skips the parts already written; bad "
                                   "rows go to _rejects-*.jsonl with the reason.")
    p.add_argument("--input", type=Path, required=True,
                   help="a .jsonl or .parquet file, or a folder of them (read in name order)")
    p.add_argument("--output", type=Path, required=True,
                   help="folder of parts; a name ending in .jsonl or .parquet sets their format, else the input's")
    add_model_args(p)
    p.add_argument("--top-k", type=int, default=None, help="answers per row, best first (default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each with its own session (default: one per physical core; with --ray "
                        "the cluster's CPUs / --threads)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime threads per worker (default: physical cores / workers; 1 with --ray)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (pip install \"quala[ray]\"): the cluster at ADDRESS, or a local instance")
    p.add_argument("--part-rows", type=int, default=None, help="rows per part (default 1000)")
    p.add_argument("--max-chars", type=int, default=None,
                   help="reject questions or contexts longer than this (default 100000 characters)")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N rows")
    add_passage_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_serve(args) -> None:
    from quala.serve import Limits, serve
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_windows=args.max_windows,
                    request_timeout_s=args.request_timeout, max_connections=args.max_connections)
    serve(args.model or default_model_dir(), args.host, args.port, args.runtime, args.max_batch, args.max_wait_ms,
          limits, None if args.read_all else args.passages, threads=args.threads, verify=not args.no_verify)


def add_passage_args(p) -> None:
    p.add_argument("--passages", type=positive_int, default=PASSAGES,
                   help=f"a context of more than {WHOLE_TOKENS} tokens is read only in this many passages of ~160 "
                        f"tokens, the ones BM25 ranks best for the question (default {PASSAGES})")
    p.add_argument("--read-all", action="store_true", help="read every window of a long context instead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quala", description="Fast extractive question answering on CPUs with "
                                     "one length-adaptive, quantized MiniLM.")
    parser.add_argument("--version", action="version", version=f"quala {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score a model on a SQuAD v1.1 file (EM/F1, official rules)",
                       description="Score a model on a SQuAD v1.1 file with the official EM/F1 rules.")
    add_model_args(p)
    p.add_argument("--data", type=Path, default=None,
                   help="SQuAD v1.1 JSON file; default: the official dev set in $QUALA_SHARED (../shared)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N questions")
    p.add_argument("--output", type=output_file, default=None,
                   help="write predictions {id: answer} to this JSON file (checked before the run, written "
                        "atomically)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("answer", help="answer questions about a context",
                       description="Answer one or more questions about a context (long contexts are split into "
                                   "overlapping windows, never truncated).")
    add_model_args(p)
    p.add_argument("--question", "-q", action="append", required=True, help="a question (repeat for several)")
    p.add_argument("--context", "-c", default=None, help="the context text")
    p.add_argument("--context-file", type=Path, default=None,
                   help="read the context from this UTF-8 file (default: --context, else standard input)")
    p.add_argument("--top-k", type=positive_int, default=1, help="answers per question, best first (default 1)")
    add_passage_args(p)
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("train", help="fine-tune and LengthDrop-train a model on SQuAD v1.1",
                       description="Train a length-adaptive model: span-QA fine-tuning (optionally distilled from a "
                                   "teacher), then LengthDrop with the sandwich rule and in-place distillation. "
                                   "Runs on CPU, one GPU, or several under torchrun. Ctrl-C saves a checkpoint.")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("serve", help="HTTP API and web page; each request brings its own compute budget",
                       description="Serve the model over HTTP (FastAPI): POST /answer, POST /answer/batch, "
                                   "GET /configs, GET /health, OpenAPI docs at /docs, and a web page at /.")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the released model)")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "onnx-int8"], default="auto",
                   help="inference engine (default auto: INT8 ONNX when the directory holds it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime intra-op threads (default: physical cores)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the model's files against its SHA256SUMS.json (models under development)")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="most windows in one forward pass when the runtime's answers do not depend on batch-mates "
                        "(default 16)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a request waits for others to batch with, when the runtime's answers do not depend "
                        "on batch-mates (default 5 ms)")
    p.add_argument("--max-body-mb", type=positive_float, default=4.0,
                   help="largest request body accepted in MiB (1,048,576 bytes), counted as it arrives (default 4)")
    p.add_argument("--max-windows", type=positive_int, default=64,
                   help="most windows of 384 tokens one request may need, all its contexts together (default 64: "
                        "a context of about 12,000 tokens)")
    p.add_argument("--request-timeout", type=positive_float, default=30.0,
                   help="seconds before a request still waiting for its answer gets a 504 and its work is dropped "
                        "(default 30)")
    add_passage_args(p)
    p.add_argument("--max-connections", type=positive_int, default=1000,
                   help="open connections at most; beyond it the one waiting longest for its request is closed "
                        "(default 1000)")
    p.set_defaults(func=cmd_serve)
    add_onnx_parsers(sub)
    add_search_parsers(sub)
    add_predict_parser(sub)
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
    except ModuleNotFoundError as e:
        if e.name not in TRAIN_EXTRA:
            raise
        print(f"error: `quala {args.command}` needs {e.name}, part of the train extra: "
              f"pip install torch==2.13.0 'quala[train]'", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
