"""INT8 post-training quantization of an exported model with ONNX Runtime.

Only the MatMuls with a weight matrix are quantized (the linear layers, about 86% of the multiply-adds at 384
tokens); the two attention MatMuls stay in float, so the attention probabilities that rank the tokens to keep
are not rounded. Nodes can be kept in float by name as well (`keep_float`, a regular expression).

- dynamic (default): int8 per-channel weights, activations quantized on the fly. No calibration data. With
  activations="per-tensor" (default, ONNX Runtime's own graph) one uint8 scale and zero point per MatMul input,
  computed from the whole batch: a row's logits depend on the rows it is batched with. With "per-row" each token
  (row of the MatMul input) gets its own scale and zero point (see per_row_activations): batch-invariant.
- static: QDQ, per-channel symmetric int8 weights, uint8 activations with ranges from calibration on SQuAD *train*
  features (never dev), fed with a mix of full-length and reduced length configurations.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import onnx
from tqdm.auto import tqdm

from quala.config import LengthConfig, QualaError, squad_path, token_counts
from quala.files import atomic_write

MODES = ("dynamic", "static")
EMBEDDINGS = ("fp32", "fp16", "int8")
ACTIVATIONS = ("per-tensor", "per-row")
ACTIVATIONS_KEY = "quala.activations"  # metadata_props entry of a per-row graph


def weight_matmuls(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(MatMul nodes with an initializer input, the other MatMul nodes)."""
    inits = {i.name for i in model.graph.initializer}
    with_weights, others = [], []
    for n in model.graph.node:
        if n.op_type == "MatMul":
            (with_weights if any(i in inits for i in n.input) else others).append(n.name)
    return with_weights, others


def float_nodes(model: onnx.ModelProto, keep_float: str | None) -> list[str]:
    """Node names to leave unquantized: the attention MatMuls, and every node whose name matches keep_float."""
    _, excluded = weight_matmuls(model)
    if keep_float:
        try:
            pattern = re.compile(keep_float)
        except re.error as e:
            raise QualaError(f"--keep-float {keep_float!r}: not a regular expression ({e})") from None
        matched = [n.name for n in model.graph.node if pattern.search(n.name)]
        if not matched:
            names = ", ".join(weight_matmuls(model)[0][:4])
            raise QualaError(f"--keep-float {keep_float!r} matches no node name (quantized nodes are named like "
                             f"{names})")
        excluded += matched
    return sorted(set(excluded))


def calibration_configs(num_layers: int, default: LengthConfig | None) -> list[LengthConfig | None]:
    """Full length, the model's default configuration, and two reduced ones: activations of every regime."""
    linear = LengthConfig(tuple(1.0 - 0.6 * i / max(num_layers - 1, 1) for i in range(num_layers)))
    steep = LengthConfig(tuple(max(0.1, 0.7 ** i) for i in range(num_layers)))
    return [None, linear, *([default] if default else []), steep]


class CalibrationReader:
    """onnxruntime CalibrationDataReader: padded batches of train features, cycling length configurations."""

    def __init__(self, features: list, num_layers: int, configs: list[LengthConfig | None], batch_size: int = 8):
        from quala.data import collate, length_grouped_batches
        batches = length_grouped_batches([len(f) for f in features], batch_size)
        self.feeds = []
        for idx, lc in zip(batches, itertools.cycle(configs)):
            b = collate([features[i] for i in idx])
            counts = token_counts(b["attention_mask"], num_layers, lc)
            self.feeds.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                               "token_type_ids": b["token_type_ids"], "token_counts": counts})
        self.bar = tqdm(total=len(self.feeds), desc="calibrate", unit="batch", leave=False)
        self.it = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.it, None)
        self.bar.update(feed is not None)
        return feed

    def rewind(self) -> None:
        self.it = iter(self.feeds)


def train_features(tokenizer, config, n: int, train_file: str | os.PathLike | None = None) -> list:
    """The first n features of the SQuAD train set (calibration must never see dev)."""
    from quala.data import load_squad, make_features
    path = train_file or squad_path("train")
    examples = load_squad(path, limit=max(n, 1))
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    return features[:n]


def quantize_model(model_dir: str | os.PathLike, mode: str = "dynamic", output: str | os.PathLike | None = None,
                   keep_float: str | None = None, calibration_features: int = 256,
                   train_file: str | os.PathLike | None = None, embeddings: str = "fp32",
                   activations: str = "per-tensor") -> Path:
    """DIR/model.onnx -> DIR/model.int8.onnx (exported first when only PyTorch weights are there).

    embeddings: how the word-embedding table is stored: fp32, fp16 or int8 (see compress_word_embeddings).
    activations (dynamic mode): per-tensor (ONNX Runtime's scales, one per batch) or per-row (one per token,
    batch-invariant; see per_row_activations)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from quala.files import read_json
    from quala.modeling import ModelConfig
    if mode not in MODES:
        raise QualaError(f"quantization mode {mode!r}: choose one of {', '.join(MODES)}")
    if activations not in ACTIVATIONS:
        raise QualaError(f"activations {activations!r}: choose one of {', '.join(ACTIVATIONS)}")
    if activations != "per-tensor" and mode != "dynamic":
        raise QualaError(f"activations {activations!r} applies to dynamic quantization only (static activation "
                         f"scales are calibrated constants, already the same for every batch)")
    model_dir = Path(model_dir)
    source = model_dir / "model.onnx"
    if not source.is_file():
        from quala.export import export_dir
        export_dir(model_dir, source)
    target = Path(output) if output else model_dir / "model.int8.onnx"
    model = load_onnx(source)
    exclude = float_nodes(model, keep_float)
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    if mode == "dynamic":
        def write(out: str) -> None:
            quantize_dynamic(source, out, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            quantized = onnx.load(out)
            if activations == "per-row":
                quantized = per_row_activations(quantized)
            keep_metadata(model, quantized)
            onnx.save(quantized, out)
    else:
        reader = calibration_reader(model_dir, config, calibration_features, train_file)

        def write(out: str) -> None:
            quantize_static(source, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibration_providers=["CPUExecutionProvider"],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            reader.bar.close()
            quantized = onnx.load(out)
            keep_metadata(model, quantized)
            onnx.save(quantized, out)
    if embeddings not in EMBEDDINGS:
        raise QualaError(f"embeddings {embeddings!r}: choose one of {', '.join(EMBEDDINGS)}")
    if embeddings != "fp32":
        quantize_first = write

        def write(out: str) -> None:
            quantize_first(out)
            onnx.save(compress_word_embeddings(onnx.load(out), embeddings), out)
    atomic_write(target, write)
    return target


def per_row_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ONNX Runtime's dynamic quantization so each row of a MatMul input (each token) has its own scale.

    quantize_dynamic writes, for an activation X of shape (..., K) and each weight W (int8, K x N, per-channel):

        X -> DynamicQuantizeLinear -> (Xq uint8, Xs scalar, Xzp scalar)
        MatMulInteger(Xq, Wq, Xzp, Wzp) -> Cast(float) -> Mul(., Mul(Xs, Ws)) -> Add(bias)

    Xs and Xzp come from the min and max over the whole tensor, i.e. the whole batch. Here the
    DynamicQuantizeLinear becomes the same arithmetic over the last axis only (keepdims: Xs and the zero point
    have shape (..., 1)): lo = min(min_k X, 0), hi = max(max_k X, 0), Xs = max((hi - lo) / 255, tiny),
    zp = clip(round(-lo / Xs), 0, 255), Xq = uint8(clip(round(X / Xs) + zp, 0, 255)), the last with
    QuantizeLinear per axis on X flattened to (rows, K) (one kernel instead of five elementwise ops, same
    logits). Mul(Xs, Ws) then broadcasts to (..., N) unchanged.

    ONNX allows a per-row a_zero_point on MatMulInteger, but ONNX Runtime's CPU kernel refuses any that is not a
    scalar (1.32: "input1 zero point must be a scalar or 1D tensor of size 1", for N-D and for 2-D A alike). So
    MatMulInteger runs with a zero point of 0 and the zero points come off exactly in int32 afterwards:
    (Xq - zp) @ (Wq - Wzp) = Xq @ (Wq - Wzp) - zp * colsum, colsum_n = sum_k (Wq - Wzp)_kn, an initializer. A stays
    uint8 against int8 weights, the fast u8s8 kernel of dynamic quantization.

    Not the symmetric alternative (zero point 128 for every row, no correction): ONNX Runtime 1.32 then fuses
    MatMulInteger -> Cast -> Mul into MatMulIntegerToFloat, whose kernel does not apply a per-row A scale (F1 42
    instead of 84 on the shipped model; with optimizations below "extended" its logits are right). The int32 Sub here keeps that fusion off;
    tests/test_quantize.py checks that no fused kernel appears."""
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    quantizers = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    if not quantizers:
        raise QualaError("no DynamicQuantizeLinear in the graph: not a dynamically quantized model")
    prefix = "quala_per_row"
    if opset < 14:
        raise QualaError(f"per-row activations need ONNX opset 14 or later (Reshape allowzero); the graph has "
                         f"{opset}: re-export it with `quala export`")
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{prefix}/{name}") for name, v in
                              (("zero", 0.0), ("levels", 255.0), ("tiny", np.finfo(np.float32).tiny))])
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/flat"))

    def reduce(op: str, x: str, out: str, name: str):
        if opset >= 18:  # axes became an input in opset 18
            if f"{prefix}/last_axis" not in inits:
                inits[f"{prefix}/last_axis"] = numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}/last_axis")
                graph.initializer.append(inits[f"{prefix}/last_axis"])
            return helper.make_node(op, [x, f"{prefix}/last_axis"], [out], name=name, keepdims=1)
        return helper.make_node(op, [x], [out], name=name, axes=[-1], keepdims=1)

    replace, after = {}, {}  # id(DynamicQuantizeLinear) -> nodes standing for it; id(MatMulInteger) -> nodes after
    changed = set()  # tensors whose shape changes (per-tensor scalars become per-row)
    for dq in quantizers:
        x, (xq, xs, xzp) = dq.input[0], dq.output
        users = consumers.get(xq, []) + consumers.get(xzp, [])
        if not users or any(u.op_type != "MatMulInteger" or u.input[0] != xq or len(u.input) < 3
                            or u.input[2] != xzp or u.input[1] not in inits for u in users):
            raise QualaError(f"{dq.name}: its outputs do not feed MatMulInteger(x, weight, zero point, ...) only; "
                             f"not the pattern of onnxruntime.quantization.quantize_dynamic")
        if any(u.op_type != "Mul" for u in consumers.get(xs, [])):
            raise QualaError(f"{dq.name}: its scale feeds something other than a Mul")
        p = f"{dq.name or x}/per_row"
        t = lambda s: f"{p}/{s}"  # noqa: E731
        c = lambda s: f"{prefix}/{s}"  # noqa: E731
        nodes = [
            reduce("ReduceMin", x, t("min"), t("ReduceMin")),
            reduce("ReduceMax", x, t("max"), t("ReduceMax")),
            helper.make_node("Min", [t("min"), c("zero")], [t("lo")], name=t("Min")),  # the range includes 0
            helper.make_node("Max", [t("max"), c("zero")], [t("hi")], name=t("Max")),
            helper.make_node("Sub", [t("hi"), t("lo")], [t("range")], name=t("Sub")),
            helper.make_node("Div", [t("range"), c("levels")], [t("raw_scale")], name=t("Div_scale")),
            helper.make_node("Max", [t("raw_scale"), c("tiny")], [xs], name=t("Max_tiny")),  # all-zero rows
            helper.make_node("Div", [t("lo"), xs], [t("lo_steps")], name=t("Div_lo")),
            helper.make_node("Round", [t("lo_steps")], [t("lo_round")], name=t("Round_lo")),
            helper.make_node("Neg", [t("lo_round")], [t("zp_raw")], name=t("Neg_lo")),
            helper.make_node("Clip", [t("zp_raw"), c("zero"), c("levels")], [t("zp")], name=t("Clip_zp")),
            helper.make_node("Cast", [t("zp")], [t("zp_int32")], name=t("Cast_zp"), to=TensorProto.INT32),
            helper.make_node("Cast", [t("zp")], [t("zp_uint8")], name=t("Cast_zp_uint8"), to=TensorProto.UINT8),
            # QuantizeLinear's per-axis form (1-D scale and zero point along axis 0 of a 2-D input) is
            # saturate(round_half_even(x / scale) + zero point) per row, in one kernel
            helper.make_node("Flatten", [x], [t("rows")], name=t("Flatten"), axis=-1),
            helper.make_node("Reshape", [xs, c("flat")], [t("row_scale")], name=t("Reshape_scale")),
            helper.make_node("Reshape", [t("zp_uint8"), c("flat")], [t("row_zp")], name=t("Reshape_zp")),
            helper.make_node("QuantizeLinear", [t("rows"), t("row_scale"), t("row_zp")], [t("rows_quantized")],
                             name=t("QuantizeLinear"), axis=0),
            helper.make_node("Shape", [x], [t("shape")], name=t("Shape")),
            # allowzero: a layer that keeps 0 tokens has a 0 in its shape, which must not mean "copy that dim"
            helper.make_node("Reshape", [t("rows_quantized"), t("shape")], [xq], name=t("Reshape_back"),
                             allowzero=1),
        ]
        replace[id(dq)] = nodes
        changed.update({xs, xzp, *(o for m in consumers.get(xs, []) for o in m.output)})
        for mm in {id(u): u for u in users}.values():
            wzp_name = mm.input[3] if len(mm.input) > 3 else ""
            weight = numpy_helper.to_array(inits[mm.input[1]]).astype(np.int32)
            if weight.ndim != 2 or wzp_name and wzp_name not in inits:
                raise QualaError(f"{mm.name}: weight is not a 2-D initializer with a constant zero point")
            wzp = numpy_helper.to_array(inits[wzp_name]).astype(np.int32) if wzp_name else np.int32(0)
            colsum = f"{mm.input[1]}_column_sums"
            if colsum not in inits:
                inits[colsum] = numpy_helper.from_array((weight - wzp).sum(0).astype(np.int32), colsum)
                graph.initializer.append(inits[colsum])
            y = mm.output[0]
            raw = f"{y}/zero_point_0"
            mm.input[2] = ""  # optional input left out: zero point 0
            mm.output[0] = raw
            q = f"{mm.name}/per_row"
            after[id(mm)] = [
                helper.make_node("Mul", [t("zp_int32"), colsum], [f"{q}/zero_point_term"], name=f"{q}/Mul_zp"),
                helper.make_node("Sub", [raw, f"{q}/zero_point_term"], [y], name=f"{q}/Sub_zp")]
    nodes = []
    for n in graph.node:
        nodes.extend(replace.get(id(n), [n]))
        nodes.extend(after.get(id(n), []))
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    entries = [e for e in model.metadata_props if e.key != ACTIVATIONS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    model.metadata_props.add(key=ACTIVATIONS_KEY, value="per-row")
    onnx.checker.check_model(model)
    return model


# (weight input, its zero point input) of the nodes that hold a quantized weight: dynamic and static (QDQ) graphs
WEIGHT_INPUTS = {"MatMulInteger": (1, 3), "DequantizeLinear": (0, 2)}


def int8_weight_nodes(model: onnx.ModelProto) -> list:
    """The nodes of WEIGHT_INPUTS whose weight is an int8 initializer."""
    types = {i.name: i.data_type for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in WEIGHT_INPUTS
            and types.get(n.input[WEIGHT_INPUTS[n.op_type][0]]) == onnx.TensorProto.INT8]


def unsigned_weights(model: onnx.ModelProto) -> int:
    """Store every int8 weight (of a MatMulInteger, or a DequantizeLinear in a static graph) as uint8, value + 128
    with its zero point + 128 (one is added where there is none): the same integers, so the same products, but
    ONNX Runtime then runs its u8u8 kernel instead of u8s8. On x86 CPUs without VNNI (AVX2 only, or AVX-512
    without VNNI) the u8s8 kernel multiplies with VPMADDUBSW, which adds pairs of uint8 x int8 products into an
    int16 and saturates: 2 x 255 x 127 overflows it, and outputs come out wrong (on an AVX2 EPYC, 99.9% of a 64 x
    384 x 256 product of random full-range operands). The u8u8 kernel widens to int16 first and is exact
    everywhere; with VNNI or AMX, u8s8 is exact. Rewrites the graph in place; returns how many weights it changed."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    nodes = int8_weight_nodes(model)
    shifted: set[str] = set()
    for n in nodes:
        w, z = WEIGHT_INPUTS[n.op_type]
        if len(n.input) <= z or not n.input[z]:  # no zero point: 0, stored as an int8 constant to shift below
            name = f"{n.input[w]}_zero_point_0"
            if name not in inits:
                model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), name))
                inits[name] = model.graph.initializer[-1]  # append copies: shift the graph's own message below
            n.input.extend([""] * (z + 1 - len(n.input)))
            n.input[z] = name
        if n.input[z] not in shifted and (n.input[z] not in inits
                                          or inits[n.input[z]].data_type != onnx.TensorProto.INT8):
            raise QualaError(f"{n.name}: the weight's zero point {n.input[z]!r} is not an int8 constant")
        for name in (n.input[w], n.input[z]):
            if name not in shifted:
                values = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
                inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
                shifted.add(name)
    return len({n.input[WEIGHT_INPUTS[n.op_type][0]] for n in nodes})


def weight_scale_name(model: onnx.ModelProto, node) -> str:
    """The initializer holding the scale(s) of a quantized weight: a DequantizeLinear's own scale input; for a
    MatMulInteger, ONNX Runtime's quantizer stores the weight W as W_quantized beside W_scale."""
    inits = {i.name for i in model.graph.initializer}
    weight = node.input[WEIGHT_INPUTS[node.op_type][0]]
    name = node.input[1] if node.op_type == "DequantizeLinear" else f"{weight.removesuffix('_quantized')}_scale"
    if name not in inits:
        raise QualaError(f"{node.name}: cannot find the scale of weight {weight!r} (expected an initializer "
                         f"{name!r}, as ONNX Runtime's quantizer names it)")
    return name


def seven_bit_weights(model: onnx.ModelProto) -> int:
    """Halve every int8 weight (rounded to nearest even, so within [-64, 64]) and double its scale: the weights
    become 7-bit, the same matrix to within half a step of the new scale. ONNX Runtime's u8s8 kernel is then exact
    on every CPU: on x86 without VNNI its VPMADDUBSW adds pairs of uint8 x int8 products into an int16, and
    2 x 255 x 64 = 32,640 fits where 2 x 255 x 127 overflows (unsigned_weights' reason). The fast kernel without
    saturation, at the price of one bit of weight precision (ONNX Runtime's `reduce_range`, applied to a graph
    already quantized). A per-row graph's column sums follow. Rewrites the graph in place; returns how many weights
    it changed."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    for n in int8_weight_nodes(model):
        weight, zero = (n.input[i] if len(n.input) > i else "" for i in WEIGHT_INPUTS[n.op_type])
        if weight in done:
            continue
        if zero and np.any(numpy_helper.to_array(inits[zero]) != 0):
            raise QualaError(f"{n.name}: weight {weight!r} has a non-zero zero point; 7-bit weights need symmetric "
                             f"ones (quala quantizes weights symmetrically)")
        scale = weight_scale_name(model, n)
        w7 = np.round(numpy_helper.to_array(inits[weight]).astype(np.float32) / 2).astype(np.int8)
        inits[weight].CopyFrom(numpy_helper.from_array(w7, weight))
        colsum = f"{weight}_column_sums"  # a per-row graph's zero-point correction (per_row_activations)
        if colsum in inits:
            inits[colsum].CopyFrom(numpy_helper.from_array(w7.sum(0, dtype=np.int32), colsum))
        s = numpy_helper.to_array(inits[scale])
        inits[scale].CopyFrom(numpy_helper.from_array((s * 2).astype(s.dtype), scale))
        done.add(weight)
    return len(done)


def keep_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """The float graph's metadata (e.g. quala.layer_skips) on the quantized one too; target's own entries win."""
    props = {p.key: p.value for p in source.metadata_props}
    props.update({p.key: p.value for p in target.metadata_props})
    onnx.helper.set_model_props(target, props)


def compress_word_embeddings(model: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """The word-embedding table (about 80% of a dynamically quantized file) stored in fp16, or in int8 with one
    scale per row; the lookup gathers the stored rows and converts only those, never the whole table.

    Measured once while developing this (quala.evaluate on the release model's first 2,000 SQuAD dev questions,
    dynamic INT8 linear layers, F1 81.02 with fp32 embeddings): ONNX Runtime's own Gather quantization (one scale
    for the table) 79.96, int8 with a scale per row 80.26, fp16 (halves the table; rounding 1e-3 relative) 81.02,
    the shipped choice."""
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    lookups = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 2]
    if not lookups:
        raise QualaError("no embedding lookup (a Gather on a 2-D weight) in the graph")
    node = max(lookups, key=lambda n: inits[n.input[0]].dims[0])
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    name, ids, out = node.input[0], node.input[1], node.output[0]
    model.graph.initializer.remove(inits[name])
    i = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    gather = lambda table_name, result: helper.make_node("Gather", [table_name, ids], [result],  # noqa: E731
                                                          name=f"{node.name}_{result.rsplit('_', 1)[1]}")
    cast = helper.make_node("Cast", [f"{out}_{dtype}"], [f"{out}_float" if dtype == "int8" else out],
                            to=onnx.TensorProto.FLOAT, name=f"{node.name}_cast")
    if dtype == "fp16":
        model.graph.initializer.append(numpy_helper.from_array(table.astype(np.float16), f"{name}_fp16"))
        new = [gather(f"{name}_fp16", f"{out}_fp16"), cast]
    elif dtype == "int8":
        scale = np.abs(table).max(1) / 127
        scale[scale == 0] = 1.0
        q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32)[:, None],
                                                                f"{name}_row_scale")])
        new = [gather(f"{name}_int8", f"{out}_int8"), gather(f"{name}_row_scale", f"{out}_scale"), cast,
               helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequant")]
    else:
        raise QualaError(f"embeddings {dtype!r}: choose fp32, fp16 or int8")
    for j, n in enumerate(new):
        model.graph.node.insert(i + j, n)
    return model


def calibration_reader(model_dir: Path, config, n: int, train_file: str | os.PathLike | None
                       ) -> CalibrationReader:
    from quala.modeling import load_tokenizer
    features = train_features(load_tokenizer(model_dir), config, n, train_file)
    default = LengthConfig.from_json(config.length_config) if config.length_config else None
    return CalibrationReader(features, config.num_hidden_layers, calibration_configs(config.num_hidden_layers, default))


def load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise QualaError(f"{path}: no such file (run `quala export` first)")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and others for a damaged file
        raise QualaError(f"{path}: cannot read the ONNX model ({type(e).__name__}: {e})") from None
