"""Latency of every inference path on the same real SQuAD dev features, in one run.

    python benchmarks/latency.py [--model DIR] [--features 64] [--spread] [--repeats 3]
                                 [--length-configs "1,.8,.6,.5,.4,.3;..."] [--eval-limit 200] [--json latency.json]

Features keep their real lengths (dynamic padding, length-grouped batches of 32), never padded to 384: the first
N dev windows (146 tokens on average for 64), or with --spread N spread evenly over all 10,784, whose lengths follow
the dev set's (173 tokens on average for 64; dev: 176), so a length-dependent configuration saves about what it saves
on dev. Batches of 32 then mix lengths: rows that run a batch in one piece pay for its padding. Rows are
timed in turn within each repeat, so background load hits them alike; the table shows the median over repeats,
in ms per feature, at batch 1 and batch 32, and each row's speed-up over BERT-base fp32 at the same batch size.
The BERT-base row is a *randomly initialised* BertForQuestionAnswering(BertConfig()) (12 layers, 768 hidden):
same shape and speed as a trained one, no F1. Length configurations come from --length-configs (';' between
configurations) or DIR/length_configs.json. GMAC/s of the INT8 rows is compared with a large int8 GEMM
(ONNX Runtime MatMulInteger, uint8 x int8) measured in the same run. quala's ONNX runtime runs a batch in
micro-batches of quala.runtime.MICRO_BATCH rows, side by side, one per thread; the plain export is timed in one run
per batch, in micro-batches one after another and side by side, and quala's rows also one after another (and its
full-length model in one run per batch), so each setting's share of a speed-up shows. "b32 time follows MACs" is
(full-length ms / the row's ms) / (full-length MACs / the row's MACs) at batch 32 against the full-length row run
the same way: 1 where time falls as fast as MACs.

--pad-to 384 adds a second table in the original work's protocol, speed only: the same features padded to 384
tokens that all count as input (attention mask 1, as a padded batch costs in a dense model) and each length
configuration as absolute token counts (ratio x 384, the `tokens:` form), for BERT-base, the plain dynamic-INT8
export and quala's INT8 rows. Most of the original 8.8x came from this padding; the first table is what real
inputs cost.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from quala.config import LengthConfig, QualaError, default_model_dir, exit_status, squad_path
from quala.data import collate, length_grouped_batches, load_squad, make_features
from quala.evaluate import TorchPredictor, evaluate
from quala.files import read_json, write_json_atomic
from quala.flops import mean_gmacs
from quala.modeling import ModelConfig, QualaForQuestionAnswering, load_tokenizer
from quala.runtime import (DISABLED_FUSIONS, INT8_KERNELS, MICRO_BATCH, OnnxPredictor, cpu_description, cpu_seconds,
                           others_cpu_share, run_micro_batches)

OTHERS_BUSY = 0.05  # share of the CPU time other processes may take before the table is flagged as noisy


class HFTorch:
    """A transformers question-answering model as a Predictor (no token dropping)."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, batch, length_config):
        out = self.model(**{k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
        return out.start_logits.numpy(), out.end_logits.numpy(), np.zeros((len(batch["input_ids"]), 1))


class HFOnnx:
    """A plain Hugging Face-style ONNX export (three inputs, two outputs) in ONNX Runtime."""

    def __init__(self, path: Path, threads: int, disabled_optimizers: tuple[str, ...] = (),
                 micro_batch: int | None = None, side_by_side: bool = False):
        import onnxruntime as ort
        self.micro_batch = micro_batch  # None: one run per batch
        self.pool = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(disabled_optimizers))
        if side_by_side:  # as quala's runtime runs several micro-batches: one per thread, on one-thread runs
            options.intra_op_num_threads = 1
            self.pool = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                              disabled_optimizers=list(disabled_optimizers)),
                         ThreadPoolExecutor(threads))

    def __call__(self, batch, length_config):
        feed = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        size = self.micro_batch or len(feed["input_ids"])
        session, pool = self.pool if self.pool and len(feed["input_ids"]) > size else (self.session, None)
        start, end = run_micro_batches(session, feed, size, 2, pool=pool)
        return start, end, np.zeros((len(start), 1))


def hf_dynamic_int8(model_dir: Path, out_dir: Path, threads: int) -> HFOnnx:
    """What a user would do: export BertForQuestionAnswering to ONNX, then quantize_dynamic with defaults."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertForQuestionAnswering

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    model = BertForQuestionAnswering.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    ids = torch.ones(1, 16, dtype=torch.long)
    axes = {n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids",
                                                       "start_logits", "end_logits")}
    fp32, int8 = out_dir / "hf.onnx", out_dir / "hf.int8.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(model), (ids, ids, torch.zeros_like(ids)), str(fp32), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["start_logits", "end_logits"], dynamic_axes=axes)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    return HFOnnx(int8, threads)


def quala_int8(model_dir: Path, config: ModelConfig, out_dir: Path, threads: int,
               micro_batch: int = MICRO_BATCH, side_by_side: bool = True) -> OnnxPredictor:
    """DIR/model.int8.onnx when shipped, else export + quantize (the default mode) into a scratch folder."""
    shipped = model_dir / "model.int8.onnx"
    if (out_dir / "model.int8.onnx").is_file():  # made by an earlier call
        return OnnxPredictor(out_dir / "model.int8.onnx", config, threads, micro_batch, side_by_side=side_by_side)
    if shipped.is_file():
        return OnnxPredictor(shipped, config, threads, micro_batch, side_by_side=side_by_side)
    from quala.export import export_onnx
    from quala.quantize import quantize_model
    export_onnx(QualaForQuestionAnswering.from_pretrained(model_dir), out_dir / "model.onnx")
    (out_dir / "config.json").write_text((model_dir / "config.json").read_text())
    return OnnxPredictor(quantize_model(out_dir), config, threads, micro_batch)


def fresh_int8(model_dir: Path, config: ModelConfig, out_dir: Path, threads: int
               ) -> tuple[OnnxPredictor, OnnxPredictor]:
    """The float weights exported by this version of quala and quantized both ways: per-tensor activations (ONNX
    Runtime's dynamic INT8) and per-row (quala quantize --activations per-row), embeddings fp16 as shipped."""
    from quala.export import export_onnx
    from quala.quantize import quantize_model
    d = out_dir / "fresh"
    d.mkdir()
    export_onnx(QualaForQuestionAnswering.from_pretrained(model_dir), d / "model.onnx")
    (d / "config.json").write_text((model_dir / "config.json").read_text())
    tensor = quantize_model(d, output=d / "tensor.int8.onnx", embeddings="fp16")
    row = quantize_model(d, output=d / "row.int8.onnx", embeddings="fp16", activations="per-row")
    return OnnxPredictor(tensor, config, threads), OnnxPredictor(row, config, threads)


def quala_static_int8(model_dir: Path, out_dir: Path, threads: int) -> OnnxPredictor:
    """The issue's first choice: static QDQ INT8, activation ranges calibrated on 128 SQuAD train features."""
    import shutil
    from quala.export import export_dir
    from quala.quantize import quantize_model
    d = out_dir / "static"
    d.mkdir()
    for name in ("config.json", "model.onnx", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, d / name)
    if not (d / "model.onnx").is_file():
        export_dir(d)
    config = ModelConfig.from_dict(read_json(d / "config.json"))
    return OnnxPredictor(quantize_model(d, "static", calibration_features=128), config, threads)


def parse_configs(text: str | None, model_dir: Path) -> list[tuple[str, LengthConfig]]:
    """--length-configs 'a,b,c;d,e,f', else DIR/length_configs.json (lenient about its shape), else none."""
    if text:
        parsed = [(part.strip(), LengthConfig.parse(part)) for part in text.split(";")]
        return [(name, lc) for name, lc in parsed if lc is not None]  # full length is a row already
    path = model_dir / "length_configs.json"
    if not path.is_file():
        return []
    data = read_json(path)
    entries = data.get("configs", []) if isinstance(data, dict) else data
    configs = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        lc = entry.get("length_config", entry.get("values")) if isinstance(entry, dict) else entry
        if isinstance(lc, dict):
            lc = lc if "values" in lc else None
        try:
            lc = LengthConfig.from_json(lc) if isinstance(lc, dict) else LengthConfig.parse(
                lc if isinstance(lc, str) or lc is None else ",".join(map(str, lc)))
        except TypeError as e:
            raise QualaError(f"{path}: configs[{i}]: cannot read a length config ({e})") from None
        if lc is not None:  # full length is a row already
            name = entry.get("name", str(lc)) if isinstance(entry, dict) else str(lc)
            configs.append((str(name), lc))
    return configs


def int8_gemm_peak(threads: int, kernel: str = "u8s8", n: int = 2048, repeats: int = 5) -> float:
    """GMAC/s of an n x n x n uint8 x int8 (kernel u8s8) or uint8 x uint8 (u8u8) MatMulInteger in ONNX Runtime
    (best of repeats)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8 if kernel == "u8s8" else TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
            "b": rng.integers(-127, 127, (n, n), dtype=np.int8) if kernel == "u8s8" else
            rng.integers(0, 255, (n, n), dtype=np.uint8)}
    session.run(None, feed)
    best = min(timed(lambda: session.run(None, feed)) for _ in range(repeats))
    return n ** 3 / best / 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_rows(args, model_dir: Path, config: ModelConfig, scratch: Path) -> list[dict]:
    from transformers import BertConfig, BertForQuestionAnswering
    torch.manual_seed(0)
    model = QualaForQuestionAnswering.from_pretrained(model_dir)
    bert_base = BertForQuestionAnswering(BertConfig())
    int8 = quala_int8(model_dir, config, scratch, args.threads)
    rows = [dict(name="BERT-base fp32 PyTorch (random init)", predictor=HFTorch(bert_base), lc=None, f1=False, padded=True,
                 config=ModelConfig(hidden_size=768, num_hidden_layers=12, intermediate_size=3072)),
            dict(name="MiniLM full, transformers forward fp32", predictor=HFTorch(
                BertForQuestionAnswering.from_pretrained(str(model_dir))), lc=None),
            dict(name="MiniLM full, ORT quantize_dynamic (plain HF export)",
                 predictor=hf_dynamic_int8(model_dir, scratch, args.threads), lc=None, padded=True),
            dict(name="MiniLM full, same, ORT SkipLayerNormFusion off (quala's session setting)",
                 predictor=HFOnnx(scratch / "hf.int8.onnx", args.threads, DISABLED_FUSIONS), lc=None),
            dict(name=f"MiniLM full, same, and micro-batches of {MICRO_BATCH} one after another",
                 predictor=HFOnnx(scratch / "hf.int8.onnx", args.threads, DISABLED_FUSIONS, MICRO_BATCH), lc=None),
            dict(name=f"MiniLM full, same, micro-batches of {MICRO_BATCH} side by side (quala's runtime setting)",
                 predictor=HFOnnx(scratch / "hf.int8.onnx", args.threads, DISABLED_FUSIONS, MICRO_BATCH, True),
                 lc=None),
            dict(name="quala fp32 PyTorch", predictor=TorchPredictor(model), lc=None),
            dict(name="quala bf16 PyTorch autocast", predictor=TorchPredictor(model, "bf16"), lc=None),
            dict(name="quala INT8 ORT", predictor=int8, lc=None, int8=True, padded=True, full_of="quala"),
            dict(name="quala INT8 ORT, one run per batch (no micro-batches)",
                 predictor=quala_int8(model_dir, config, scratch, args.threads, micro_batch=10**9), lc=None,
                 int8=True)]
    if args.static:
        rows.append(dict(name="quala INT8 ORT, static QDQ", predictor=quala_static_int8(model_dir, scratch,
                                                                                        args.threads),
                         lc=None, int8=True))
    configs = parse_configs(args.length_configs, model_dir)
    for name, lc in configs:
        lc.check(config.num_hidden_layers, config.max_seq_length)
        rows.append(dict(name=f"quala INT8 ORT, {name}", predictor=int8, lc=lc, int8=True, padded=True,
                         group="quala"))
    serial = quala_int8(model_dir, config, scratch, args.threads, side_by_side=False)
    for name, lc in [("full", None), *configs]:
        rows.append(dict(name=f"quala INT8 ORT, micro-batches one after another, {name}", predictor=serial, lc=lc,
                         int8=True, **({"full_of": "serial"} if lc is None else {"group": "serial"})))
    # the int8 kernels quala does not pick on this CPU (see quala.runtime.choose_int8_kernel), same graph
    for other in (k for k in INT8_KERNELS if args.other_kernels and k not in ("auto", int8.int8_kernel)):
        other_int8 = OnnxPredictor(int8.path, config, args.threads, int8_kernel=other)
        exact = ("7-bit weights, " if other == "u8s7" else "") + (
            "exact" if other_int8.int8_exact else "saturating on this CPU")
        for name, lc in [("full", None), *configs]:
            rows.append(dict(name=f"quala INT8 ORT, {other} kernel ({exact}), {name}", predictor=other_int8, lc=lc,
                             int8=True, **({"full_of": other} if lc is None else {"group": other})))
    if args.per_row:
        fresh, rows_graph = fresh_int8(model_dir, config, scratch, args.threads)
        rows.append(dict(name="quala INT8 ORT, this version's export (layer skips in the graph)", predictor=fresh,
                         lc=None, int8=True))
        rows.append(dict(name="quala INT8 ORT, per-row activations (batch-invariant)", predictor=rows_graph,
                         lc=None, int8=True))
        for name, lc in configs:
            rows.append(dict(name=f"quala INT8 ORT, per-row activations, {name}", predictor=rows_graph, lc=lc,
                             int8=True))
    for row in rows:
        row.setdefault("config", config)
    return rows


def time_rows(rows: list[dict], features: list, batch_size: int, repeats: int) -> None:
    """Median ms per feature of each row at this batch size; rows alternate within each repeat."""
    batches = [collate([features[i] for i in idx]) for idx in
               length_grouped_batches([len(f) for f in features], batch_size)]
    times: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for row in rows:  # warm-up: first-call allocations and graph preparation
        row["predictor"](batches[0], row["lc"])
    for _ in tqdm(range(repeats), desc=f"batch {batch_size}", leave=False):
        for i, row in enumerate(rows):
            total = sum(timed(lambda b=b: row["predictor"](b, row["lc"])) for b in batches)
            times[i].append(1000 * total / len(features))
    for i, row in enumerate(rows):
        row[f"b{batch_size}_ms"] = statistics.median(times[i])


def spread(windows: list, n: int) -> list:
    """n of the windows at evenly spaced positions (all of them where there are no more than n)."""
    if n >= len(windows):
        return list(windows)
    return [windows[i] for i in np.linspace(0, len(windows) - 1, n).round().astype(int)]


def padded(features: list, width: int) -> list:
    """The features padded to `width` tokens that count as input (segment 1, no offsets), for --pad-to."""
    out = []
    for f in features:
        n = width - len(f)
        out.append(type(f)(np.concatenate([f.input_ids, np.zeros(n, f.input_ids.dtype)]),
                           np.concatenate([f.token_type_ids, np.ones(n, f.token_type_ids.dtype)]),
                           np.concatenate([f.offsets, np.full((n, 2), -1, f.offsets.dtype)]), f.example_index))
    return out


def padded_rows(rows: list[dict], width: int) -> list[dict]:
    """The rows built with padded=True (BERT-base, the plain dynamic-INT8 export, quala's INT8 graph at full length and
    at each configuration, now as token counts of `width`)."""
    out = []
    for r in (r for r in rows if r.get("padded")):
        lc = r["lc"]
        if lc is not None and lc.unit == "ratio":
            lc = LengthConfig(tuple(round(v * width) for v in lc.values), "tokens")
        out.append({k: v for k, v in r.items() if k not in ("b1_ms", "b32_ms", "em", "f1")} | {"lc": lc, "f1": False})
    return out


def report(rows: list[dict], peak: float, lengths: list[int]) -> list[dict]:
    """One result per row; a length configuration's row also gets how well its batch-32 time follows its MACs:
    (full-length ms / its ms) / (full-length MACs / its MACs) against the full-length row of its group (1: time
    falls as fast as MACs)."""
    base = rows[0]
    fulls = {row["full_of"]: row for row in rows if "full_of" in row}
    out = []
    for row in rows:
        gmacs = mean_gmacs(row["config"], row["lc"], lengths)
        r = {"name": row["name"], "length_config": str(row["lc"] or "full"), "gmac_per_feature": round(gmacs, 3)}
        for b in (1, 32):
            r[f"b{b}_ms"] = round(row[f"b{b}_ms"], 2)
            r[f"b{b}_speedup"] = round(base[f"b{b}_ms"] / row[f"b{b}_ms"], 2)
        full = fulls.get(row.get("group"))
        if full is not None:
            full_gmacs = mean_gmacs(full["config"], full["lc"], lengths)
            r["b32_time_per_macs"] = round((full["b32_ms"] / row["b32_ms"]) / (full_gmacs / gmacs), 2)
        if row.get("int8"):
            r["b32_gmac_per_s"] = round(gmacs / row["b32_ms"] * 1000, 1)
            r["b32_pct_of_int8_peak"] = round(100 * r["b32_gmac_per_s"] / peak, 1)
        if "f1" in row and row["f1"] is not False:
            r["em"], r["f1"] = row["em"], row["f1"]
        out.append(r)
    return out


def markdown(results: list[dict], peak: float, kernel: str = "u8s8") -> str:
    lines = ["| path | length config | GMAC/feature | b1 ms | b1 speed-up | b32 ms/feature | b32 speed-up "
             "| b32 time follows MACs | b32 GMAC/s (% of int8 peak) | F1 |", "|" + " --- |" * 10]
    for r in results:
        eff = f"{r['b32_gmac_per_s']} ({r['b32_pct_of_int8_peak']}%)" if "b32_gmac_per_s" in r else ""
        lines.append(f"| {r['name']} | {r['length_config']} | {r['gmac_per_feature']} | {r['b1_ms']} "
                     f"| {r['b1_speedup']}x | {r['b32_ms']} | {r['b32_speedup']}x | {r.get('b32_time_per_macs', '')} "
                     f"| {eff} | {r.get('f1', '')} |")
    lines.append(f"\nint8 GEMM peak (ONNX Runtime MatMulInteger 2048^3, {kernel}, the kernel quala runs here): "
                 f"{peak:.0f} GMAC/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--features", type=int, default=64, help="dev features timed (default 64)")
    p.add_argument("--spread", action="store_true",
                   help="time features evenly spaced over every dev window, so their lengths follow the dev set's "
                        "(default: the first N, from the first articles, shorter than average)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row and batch size (default 3)")
    p.add_argument("--length-configs", default=None,
                   help="INT8 rows at these configurations, ';' between them (default: DIR/length_configs.json)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="also score EM/F1 of every row (but BERT-base) on the first N dev questions")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of PyTorch and ONNX Runtime")
    p.add_argument("--no-static", dest="static", action="store_false",
                   help="skip the static QDQ INT8 row (it calibrates on SQuAD train features first)")
    p.add_argument("--no-per-row", dest="per_row", action="store_false",
                   help="skip the rows of this version's export: per-tensor and per-row (batch-invariant) INT8")
    p.add_argument("--no-other-kernels", dest="other_kernels", action="store_false",
                   help="skip the rows of the int8 kernels quala does not choose on this CPU")
    p.add_argument("--pad-to", type=int, default=0, metavar="N",
                   help="also time the original work's protocol: inputs padded to N tokens, token-count configs")
    p.add_argument("--json", type=Path, default=Path("latency.json"), help="results file (default latency.json)")
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    tokenizer = load_tokenizer(model_dir)
    examples = load_squad(squad_path("dev"), limit=None if args.spread else max(args.features, args.eval_limit or 0))
    windows = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    features = spread(windows, args.features) if args.spread else windows[: args.features]
    lengths = [len(f) for f in features]
    load_before, cpu_before, started = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        rows = build_rows(args, model_dir, config, Path(scratch))
        kernel = next(r for r in rows if r.get("int8"))["predictor"].int8_kernel
        peak = int8_gemm_peak(args.threads, kernel)
        for b in (1, 32):
            time_rows(rows, features, b, args.repeats)
        if args.eval_limit:
            for row in tqdm(rows[1:], desc="F1", leave=False):
                r = evaluate(row["predictor"], tokenizer, examples[: args.eval_limit], row["lc"], 32,
                             config.max_seq_length, config.doc_stride, config.max_query_length, progress=False)
                row["em"], row["f1"] = round(r.exact_match, 2), round(r.f1, 2)
        results = report(rows, peak, lengths)
        padded_results = []
        if args.pad_to:
            if args.pad_to < max(lengths):
                raise QualaError(f"--pad-to {args.pad_to}: the features are up to {max(lengths)} tokens")
            prows = padded_rows(rows, args.pad_to)
            for b in (1, 32):
                time_rows(prows, padded(features, args.pad_to), b, args.repeats)
            padded_results = report(prows, peak, [args.pad_to] * len(features))
    print(f"CPU: {cpu_description()}\n")
    print(markdown(results, peak, kernel))
    if padded_results:
        print(f"\nThe original work's protocol: the same features padded to {args.pad_to} tokens, configurations as "
              f"token counts (speed only)\n")
        print(markdown(padded_results, peak, kernel))
    load = (load_before, os.getloadavg()[0])
    others = others_cpu_share(cpu_before, cpu_seconds(), time.perf_counter() - started)
    busy = "" if others is None else f"; other processes and steal took {100 * others:.1f}% of the CPU time"
    chosen = f"evenly spaced over all {len(windows)}" if args.spread else "the first"
    print(f"\n{len(features)} dev features ({chosen}), {np.mean(lengths):.1f} tokens on average; "
          f"{args.threads} threads; median of {args.repeats}; load average {load[0]:.1f} -> {load[1]:.1f} on "
          f"{os.cpu_count()} CPUs{busy}")
    if load_before > (os.cpu_count() or 1) / 2 or (others or 0) > OTHERS_BUSY:
        print("warning: the machine was busy; timings are inflated and noisy", file=sys.stderr)
    write_json_atomic(args.json, {"model": str(model_dir), "features": len(features), "spread": args.spread,
                                  "mean_tokens": float(np.mean(lengths)), "threads": args.threads,
                                  "repeats": args.repeats, "int8_gemm_peak_gmac_per_s": round(peak, 1), "int8_kernel": kernel,
                                  "load_average": load, "others_cpu_share": others, "cpu": cpu_description(), "rows": results,
                                  "pad_to": args.pad_to, "padded_rows": padded_results})
    print(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
