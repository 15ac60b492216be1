"""Rebuild float weights (model.safetensors) from a quala INT8 ONNX graph made by `quala quantize`.

Every initializer of the graph maps back onto QualaForQuestionAnswering's state dict:
- a dynamically quantized linear layer is a MatMulInteger node named /model/<module>/MatMul_quant whose weight
  input W_quantized (in, out) int8 comes with W_scale and W_zero_point per output column: the float weight is
  ((W_quantized - W_zero_point) * W_scale).T; its bias is the initializer model.<module>.bias;
- a layer's query, key and value are one such matmul named /model/layers.N/MatMul(_quant), their weights side by
  side (in, 3 x out), with the three biases side by side in the Add /model/layers.N/Add after it; split in three;
- the word embeddings are model.embed.word.weight_fp16 (`--embeddings fp16`), _int8 with _row_scale (`int8`), or
  plain; every other float initializer (position/token-type embeddings, LayerNorm, biases) keeps its name (or is
  the output of an Identity node of that name, where the exporter stored equal parameters once).
The rebuilt model is the INT8 model with float activations: the weights keep their INT8 rounding, so its accuracy
lies between the INT8 graph's and that of the float model it was quantized from.

    python scripts/dequantize.py quala/models/quala-minilm            # -> DIR/model.safetensors (fp16)
    python scripts/dequantize.py DIR --check 64                        # and compare on 64 dev questions
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from quala.config import QualaError
from quala.files import atomic_write, read_json
from quala.modeling import ModelConfig, QualaForQuestionAnswering, hf_names

PREFIX = "model."  # quala.export traces the model inside a wrapper module named "model"


def float_state(graph_path: str | Path) -> dict[str, torch.Tensor]:
    """Our state-dict names -> fp32 tensors, read from a quantized (or plain float) quala ONNX graph."""
    graph = onnx.load(str(graph_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # the exporter keeps one copy of equal parameters; the others are Identity outputs
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    state = {k[len(PREFIX):]: v.astype(np.float32) for k, v in inits.items()
             if k.startswith(PREFIX) and v.dtype in (np.float32, np.float16)}
    word = "embed.word.weight"
    if PREFIX + word + "_fp16" in inits:
        state.pop(word + "_fp16")
        state[word] = inits[PREFIX + word + "_fp16"].astype(np.float32)
    elif PREFIX + word + "_int8" in inits:
        state.pop(word + "_row_scale")
        state[word] = inits[PREFIX + word + "_int8"].astype(np.float32) * inits[PREFIX + word + "_row_scale"]
    for node in graph.node:  # linear layers: /model/<module>/MatMul (float) or /model/<module>/MatMul_quant
        module, _, op = node.name.removeprefix("/model/").rpartition("/")
        weight = node.input[1] if len(node.input) > 1 else ""
        if not node.name.startswith("/model/"):
            continue  # a node quala's export did not name
        if node.op_type == "Add" and is_layer(module) and op == "Add":  # the fused query/key/value bias
            bias = next((inits[i] for i in node.input if i in inits), None)
            if bias is not None and bias.ndim == 1 and bias.size % 3 == 0:
                state |= split_qkv(module, "bias", bias.astype(np.float32))
        if weight not in inits:
            continue  # activation x activation (attention)
        if node.op_type == "MatMul" and op == "MatMul":
            state |= linear_weight(module, inits[weight].astype(np.float32))
        elif node.op_type == "MatMulInteger" and op == "MatMul_quant":
            zero = inits[node.input[3]].astype(np.float32) if len(node.input) > 3 and node.input[3] else 0.0
            scale = inits[weight.removesuffix("_quantized") + "_scale"]  # one per output column
            state |= linear_weight(module, (inits[weight].astype(np.float32) - zero) * scale)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def is_layer(module: str) -> bool:
    """'layers.3': a node of the layer itself, not of one of its linear modules ('layers.3/attn_out')."""
    return module.startswith("layers.") and "/" not in module


def split_qkv(module: str, kind: str, fused: np.ndarray) -> dict[str, np.ndarray]:
    """The export's one query/key/value matmul of a layer (weights side by side, in x out) back to three."""
    parts = np.split(fused, 3, axis=-1)
    return {f"{module}.{name}.{kind}": part.T if kind == "weight" else part
            for name, part in zip(("query", "key", "value"), parts)}


def linear_weight(module: str, w: np.ndarray) -> dict[str, np.ndarray]:
    """A linear layer's weight from the graph's (in, out) matrix, as PyTorch's (out, in)."""
    if is_layer(module):
        return split_qkv(module, "weight", w)
    return {module.replace("/", ".") + ".weight": w.T}


def rebuild(model_dir: str | Path, graph: str = "model.int8.onnx") -> QualaForQuestionAnswering:
    """The float model of DIR/config.json with the weights of DIR/<graph>; every parameter must be found."""
    model_dir = Path(model_dir)
    model = QualaForQuestionAnswering(ModelConfig.from_dict(read_json(model_dir / "config.json")))
    state = float_state(model_dir / graph)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QualaError(f"{model_dir / graph}: initializers do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval()


def save_weights(model: QualaForQuestionAnswering, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Hugging Face-named safetensors in `dtype` (fp16: half the size; quala loads it into an fp32 model)."""
    names = hf_names(model)
    state = {names[k]: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    return Path(path)


def check(model_dir: Path, model: QualaForQuestionAnswering, n: int) -> None:
    """Full-length logits and answers of `model` against DIR/model.int8.onnx on the first n dev questions."""
    from quala.config import squad_path
    from quala.data import load_squad, make_features, postprocess
    from quala.evaluate import TorchPredictor, run_features
    from quala.modeling import load_tokenizer
    from quala.runtime import OnnxPredictor
    c = model.config
    examples = load_squad(squad_path("dev"), limit=n)
    features = make_features(examples, load_tokenizer(model_dir), c.max_seq_length, c.doc_stride, c.max_query_length)
    runs = [run_features(p, features, None, progress=False)[:2]
            for p in (TorchPredictor(model), OnnxPredictor(model_dir / "model.int8.onnx", c))]
    (s1, e1), (s2, e2) = runs
    diffs = np.concatenate([np.abs(a - b) for a, b in zip(s1 + e1, s2 + e2)])
    answers = [[a.text for a in postprocess(examples, features, s, e)] for s, e in runs]
    same = sum(a == b for a, b in zip(*answers))
    print(f"{len(examples)} dev questions, {len(features)} features: |float - int8| logits max {diffs.max():.3f}, "
          f"mean {diffs.mean():.4f}; same answer {same}/{len(examples)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a quala model directory with config.json and the quantized graph")
    p.add_argument("--graph", default="model.int8.onnx", help="the graph file inside model_dir")
    p.add_argument("--output", help="weights file to write (default: MODEL_DIR/model.safetensors)")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="storage precision")
    p.add_argument("--check", type=int, default=0, metavar="N", help="compare with the graph on N dev questions")
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir)
    try:
        model = rebuild(model_dir, args.graph)
        dtype = torch.float16 if args.dtype == "fp16" else torch.float32
        out = save_weights(model, args.output or model_dir / "model.safetensors", dtype)
        print(f"{out}: {sum(v.numel() for v in model.state_dict().values()):,} parameters, "
              f"{out.stat().st_size / 2**20:.1f} MiB")
        if args.check:
            with torch.no_grad():  # the weights as stored
                for v in model.state_dict().values():
                    v.copy_(v.to(dtype))
            check(model_dir, model, args.check)
    except QualaError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
