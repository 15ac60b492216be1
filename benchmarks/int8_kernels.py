"""Which int8 kernel runs a model on this CPU, whether it is exact, and what each kernel scores.

    python benchmarks/int8_kernels.py [--models DIR[,DIR2...]] [--kernels u8s8,u8u8,u8s7] [--float]
                                      [--configs "full;1,0.99,0.8,0.54,0.35,0.12"] [--limit 500] [--offset 0]

Three things, on the CPU it runs on (printed with its instruction sets):
1. a MatMulInteger of random full-range operands (64 x 384 x 256) per kernel, against numpy's exact int64 product:
   ONNX Runtime's u8s8 kernel saturates on x86 without VNNI/AMX, u8u8 never does, nor u8s8 on 7-bit weights (u8s7);
2. per model and kernel, the median of 5 session creations (the u8u8 rewrite happens at load);
3. F1 of every model x kernel (and with --float the first model's PyTorch fp32 weights) at each configuration on
   held-out *training* questions (the search's split, questions offset..offset+limit; never dev); for the first two
   columns, their paired per-question F1 difference with its standard error and the largest start-logit difference.
Speed of the kernels is in benchmarks/latency.py, which times the kernel quala does not pick beside the one it does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from quala.config import LengthConfig, ModelConfig, QualaError, default_model_dir, exit_status
from quala.data import make_features, postprocess
from quala.evaluate import question_f1, run_features
from quala.files import read_json
from quala.metrics import paired
from quala.runtime import INT8_KERNELS, OnnxPredictor, cpu_description, u8s8_exact
from quala.search import heldout_questions
from quala.tokenizer import load_tokenizer


def matmul_errors(kernel: str, m: int = 64, k: int = 384, n: int = 256) -> tuple[float, int]:
    """(share of wrong outputs, largest error) of one MatMulInteger with `kernel`'s weight type, full-range operands."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-64, 65, (k, n)) if kernel == "u8s7" else rng.integers(-127, 128, (k, n))
    signed = kernel in ("u8s8", "u8s7")
    stored = w.astype(np.int8) if signed else (w + 128).astype(np.uint8)
    zero = np.array(0 if signed else 128, stored.dtype)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "", "wz"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
                              [numpy_helper.from_array(stored, "w"), numpy_helper.from_array(zero, "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    error = np.abs(y.astype(np.int64) - a.astype(np.int64) @ w)
    return float((error > 0).mean()), int(error.max())


def load_seconds(path: Path, config: ModelConfig, kernel: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        OnnxPredictor(path, config, int8_kernel=kernel)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="model directories with model.int8.onnx, ',' between them "
                                                "(default: the released model)")
    p.add_argument("--kernels", default="u8s8,u8u8", help="int8 kernels, ',' between them (auto, u8s8, u8u8, u8s7)")
    p.add_argument("--float", action="store_true", help="also score the first model's PyTorch fp32 weights")
    p.add_argument("--configs", default="full;1,0.99,0.8,0.54,0.35,0.12", help="length configurations, ';' between")
    p.add_argument("--limit", type=int, default=500, help="held-out training questions scored (default 500)")
    p.add_argument("--offset", type=int, default=0, help="first held-out question (default 0)")
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    models = [Path(m) for m in args.models.split(",") if m.strip()] or [default_model_dir()]
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or any(k not in INT8_KERNELS for k in kernels):
        raise QualaError(f"--kernels {args.kernels!r}: choose from {', '.join(INT8_KERNELS)}")
    configs = [(c.strip(), LengthConfig.parse(c)) for c in args.configs.split(";") if c.strip()]
    config = ModelConfig.from_dict(read_json(models[0] / "config.json"))
    tokenizer = load_tokenizer(models[0])
    examples, _ = heldout_questions(config, args.offset, args.limit)
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    print(f"CPU: {cpu_description()}; u8s8 exact here: {u8s8_exact()}\n")
    for kernel in ("u8s8", "u8u8", "u8s7"):
        share, worst = matmul_errors(kernel)
        print(f"MatMulInteger 64 x 384 x 256, full-range operands, {kernel}: {100 * share:.1f}% of outputs wrong, "
              f"largest error {worst}")
    predictors = {}
    for model in models:
        for kernel in kernels:
            predictors[f"{model.name} {kernel}"] = OnnxPredictor(model / "model.int8.onnx", config, int8_kernel=kernel)
            print(f"{model} {kernel}: runs {predictors[f'{model.name} {kernel}'].int8_kernel}, session created in "
                  f"{load_seconds(model / 'model.int8.onnx', config, kernel):.3f} s (median of 5)")
    if args.float:
        from quala.evaluate import TorchPredictor
        from quala.modeling import QualaForQuestionAnswering
        predictors[f"{models[0].name} fp32"] = TorchPredictor(QualaForQuestionAnswering.from_pretrained(models[0]))
    names = list(predictors)
    print(f"\n{len(examples)} held-out training questions ({len(features)} windows) from {args.offset}, F1:\n")
    compared = len(names) > 1  # the first two columns, side by side
    print("| configuration | " + " | ".join(names) + " |"
          + (" first - second (std. error) | max start-logit difference, first two |" * compared))
    print("| --- | " + " | ".join("---:" for _ in names) + " |" + (" ---: | ---: |" * compared))
    for text, lc in configs:
        runs = [run_features(predictors[n], features, lc, progress=False) for n in names]
        f1 = [question_f1(examples, postprocess(examples, features, starts, ends)) for starts, ends, _ in runs]
        row = f"| {text} | " + " | ".join(f"{v.mean():.2f}" for v in f1) + " |"
        if compared:
            p = paired(f1[0], f1[1])
            logits = max(float(np.abs(a - b).max()) for a, b in zip(runs[0][0], runs[1][0]))
            row += f" {p.difference:+.2f} ({p.stderr:.2f}) | {logits:.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
