"""INT8 post-training quantization of an exported model with ONNX Runtime.

Only the MatMuls with a weight matrix are quantized (the linear layers, about 86% of the multiply-adds at 384
tokens); the two attention MatMuls stay in float, so the attention probabilities that rank the tokens to keep
are not rounded. Nodes can be kept in float by name as well (`keep_float`, a regular expression).

- dynamic (default): int8 per-channel weights, activations quantized on the fly per batch. No calibration data.
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
                   train_file: str | os.PathLike | None = None, embeddings: str = "fp32") -> Path:
    """DIR/model.onnx -> DIR/model.int8.onnx (exported first when only PyTorch weights are there).

    embeddings: how the word-embedding table is stored: fp32, fp16 or int8 (see compress_word_embeddings)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from quala.files import read_json
    from quala.modeling import ModelConfig
    if mode not in MODES:
        raise QualaError(f"quantization mode {mode!r}: choose one of {', '.join(MODES)}")
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
    else:
        reader = calibration_reader(model_dir, config, calibration_features, train_file)

        def write(out: str) -> None:
            quantize_static(source, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibration_providers=["CPUExecutionProvider"],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
            reader.bar.close()
    if embeddings not in EMBEDDINGS:
        raise QualaError(f"embeddings {embeddings!r}: choose one of {', '.join(EMBEDDINGS)}")
    if embeddings != "fp32":
        quantize_first = write

        def write(out: str) -> None:
            quantize_first(out)
            onnx.save(compress_word_embeddings(onnx.load(out), embeddings), out)
    atomic_write(target, write)
    return target


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
