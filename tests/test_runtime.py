"""ONNX Runtime engine: quantized models load and answer, configurations switch per call, clear file errors."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from quala.cli import main
from quala.config import LengthConfig, QualaError
from quala.data import collate, make_features
from quala.quantize import quantize_model
from quala.runtime import DISABLED_FUSIONS, OnnxPredictor, cpu_seconds, load_predictor, others_cpu_share, physical_cores


@pytest.fixture(scope="module")
def features(dev_examples, tokenizer):
    return make_features(dev_examples[:6], tokenizer, 128, 48)


def test_auto_prefers_int8_and_switches_configuration_per_call(onnx_dir, features):
    predictor, _, config = load_predictor(onnx_dir)
    assert isinstance(predictor, OnnxPredictor) and predictor.path.name == "model.int8.onnx"
    b = collate(features[:4])
    _, _, full = predictor(b, None)
    _, _, small = predictor(b, LengthConfig((0.7, 0.4, 0.2)))
    lens = b["attention_mask"].sum(1)
    assert full.tolist() == np.repeat(lens[:, None], 3, axis=1).tolist()
    assert small.tolist() == LengthConfig((0.7, 0.4, 0.2)).token_counts(lens).tolist()
    with pytest.raises(QualaError, match="has 2 values; the model has 3 layers"):
        predictor(b, LengthConfig((1.0, 0.5)))
    rule = LengthConfig.parse("0.4,0.3,0.2@0.5")  # an exponent reaches the graph as token counts too
    _, _, kept_rule = predictor(b, rule)
    assert kept_rule.tolist() == rule.token_counts(lens).tolist() != small.tolist()
    _, _, kept_eager = load_predictor(onnx_dir, "torch")[0](b, rule)
    assert kept_eager.tolist() == kept_rule.tolist()


def test_int8_logits_follow_fp32(onnx_dir, features):
    b = collate(features[:4])
    real = b["attention_mask"].astype(bool)
    torch_s, _, _ = load_predictor(onnx_dir, "torch")[0](b, None)
    fp32_s, _, _ = load_predictor(onnx_dir, "onnx")[0](b, None)
    int8_s, _, _ = load_predictor(onnx_dir, "onnx-int8")[0](b, None)
    assert np.abs(fp32_s - torch_s)[real].max() < 1e-4
    assert np.corrcoef(int8_s[real], fp32_s[real])[0, 1] > 0.95
    error = np.abs(int8_s - fp32_s)[real]  # measured: at most 0.0044 (mean 0.0011), logits' std 0.12
    assert error.max() < 0.02 and error.mean() < 0.004 and error.max() > 0


@pytest.mark.parametrize("micro_batch", [1, 2, 3, 32])
def test_micro_batches_match_one_run_of_the_whole_batch(onnx_dir, features, micro_batch):
    features = sorted(features, key=len)  # rows of different lengths: each micro-batch is cut to its own width
    b = collate(features)
    config = load_predictor(onnx_dir, "onnx")[2]
    whole = OnnxPredictor(onnx_dir / "model.onnx", config, micro_batch=len(features))
    split = OnnxPredictor(onnx_dir / "model.onnx", config, micro_batch=micro_batch)
    real = b["attention_mask"].astype(bool)
    for lc in (None, LengthConfig((0.7, 0.4, 0.2))):
        expected, got = whole(b, lc), split(b, lc)
        for e, g in zip(expected[:2], got[:2]):
            assert g.shape == e.shape and np.allclose(g[real], e[real], atol=1e-4)
        assert np.array_equal(got[2], expected[2])
    first = int(real[:micro_batch].sum(1).max())  # the first micro-batch ran this wide
    assert first < real.shape[1] or micro_batch >= len(features)
    assert (split(b, None)[0][:micro_batch, first:] == -1e4).all()
    with pytest.raises(QualaError, match="micro_batch must be at least 1, got 0"):
        OnnxPredictor(onnx_dir / "model.onnx", config, micro_batch=0)


def test_micro_batches_side_by_side_give_the_same_logits_as_one_after_another(onnx_dir, features):
    b = collate(sorted(features, key=len))
    config = load_predictor(onnx_dir, "onnx")[2]
    path = onnx_dir / "model.int8.onnx"
    side = OnnxPredictor(path, config, threads=2, micro_batch=2)
    serial = OnnxPredictor(path, config, threads=2, micro_batch=2, side_by_side=False)
    side(collate(features[:2]), None)  # one micro-batch: the session of all threads, no workers started
    assert side._pool is None
    for lc in (None, LengthConfig((0.7, 0.4, 0.2))):
        for got, expected in zip(side(b, lc), serial(b, lc)):
            assert np.array_equal(got, expected)
    assert side._pool is not None and side._pool[0].get_session_options().intra_op_num_threads == 1
    assert serial._pool is None
    assert not OnnxPredictor(path, config, threads=1, micro_batch=2).side_by_side


def test_the_fusion_setting_reaches_both_sessions(onnx_dir, features, tmp_path):
    b = collate(sorted(features, key=len))
    config = load_predictor(onnx_dir, "onnx")[2]
    path = onnx_dir / "model.int8.onnx"
    for fusions, fused in ((DISABLED_FUSIONS, False), ((), True)):  # quala's setting leaves the fusion out
        profiled = OnnxPredictor(path, config, threads=2, profile_prefix=str(tmp_path / f"p{fused}"),
                                 disabled_fusions=fusions)
        profiled(b, None)
        events = json.loads(Path(profiled.session.end_profiling()).read_text())
        assert any(e.get("args", {}).get("op_name") == "SkipLayerNormalization" for e in events) == fused
    fused_side = OnnxPredictor(path, config, threads=2, micro_batch=2, disabled_fusions=())
    fused_serial = OnnxPredictor(path, config, threads=2, micro_batch=2, side_by_side=False, disabled_fusions=())
    unfused_serial = OnnxPredictor(path, config, threads=2, micro_batch=2, side_by_side=False)
    side, serial, unfused = fused_side(b, None), fused_serial(b, None), unfused_serial(b, None)
    assert fused_side._pool is not None and np.array_equal(side[0], serial[0])  # the one-thread session fuses too
    assert not np.array_equal(serial[0], unfused[0])  # the fusion changes the logits' rounding: the check can fail


def test_onnx_only_directory_answers(onnx_dir, tmp_path, capsys, data_dir):
    for name in ("config.json", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(onnx_dir / name, tmp_path / name)
    assert main(["answer", "--model", str(tmp_path), "-q", "Where does it flow?", "-c",
                 "The Amazon river flows through Brazil and Peru.", "--length-config", "0.8,0.5,0.3"]) == 0
    assert re.search(r"A: .*\(score [\d.]+", capsys.readouterr().out)
    assert main(["eval", "--model", str(tmp_path), "--data", str(data_dir / "dev.json"), "--limit", "4"]) == 0
    assert "F1" in capsys.readouterr().out
    assert main(["answer", "--model", str(tmp_path), "--runtime", "torch", "-q", "Why?", "-c", "x"]) == 2
    assert "no model.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("runtime, file", [("onnx-int8", "model.int8.onnx"), ("onnx", "model.onnx")])
def test_corrupted_or_missing_files_name_the_file(onnx_dir, tmp_path, capsys, runtime, file):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(onnx_dir / name, tmp_path / name)
    with pytest.raises(QualaError, match=f"{file}: no such file"):
        load_predictor(tmp_path, runtime)
    (tmp_path / file).write_bytes(b"\x08garbage")
    assert main(["answer", "--model", str(tmp_path), "--runtime", runtime, "-q", "Why?", "-c", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{file}: cannot load the ONNX model" in err and "Traceback" not in err
    (tmp_path / file).unlink()
    with pytest.raises(QualaError, match="no model weights"):
        load_predictor(tmp_path)


def test_bf16_needs_the_torch_runtime(onnx_dir):
    with pytest.raises(QualaError, match="bf16 runs on the torch runtime only"):
        load_predictor(onnx_dir, "onnx", "bf16")
    predictor, _, _ = load_predictor(onnx_dir, "auto", "bf16")
    assert predictor.dtype == "bf16"


def test_static_quantization_with_float_layers(onnx_dir, data_dir, tmp_path, features):
    out = tmp_path / "static.onnx"
    assert main(["quantize", "--model", str(onnx_dir), "--mode", "static", "--output", str(out),
                 "--keep-float", r"layers\.2/ffn_out", "--calibration-features", "16",
                 "--train-file", str(data_dir / "train.json")]) == 0
    graph = onnx.load(str(out)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    inputs = {n.name: n.input for n in graph.node}
    assert all(made_by.get(i) != "DequantizeLinear" for i in inputs["/model/layers.2/ffn_out/MatMul"])  # float
    assert any(made_by.get(i) == "DequantizeLinear" for i in inputs["/model/layers.1/ffn_out/MatMul"])
    config = load_predictor(onnx_dir, "onnx")[2]
    b = collate(features[:3])
    lc = LengthConfig((0.8, 0.5, 0.3))
    fp32_s, _, _ = OnnxPredictor(onnx_dir / "model.onnx", config)(b, lc)
    int8_s, _, kept = OnnxPredictor(out, config)(b, lc)
    assert kept.tolist() == lc.token_counts(b["attention_mask"].sum(1)).tolist()
    assert np.isfinite(int8_s).all() and int8_s.shape == fp32_s.shape
    # close to the float graph: on this model static INT8 is off by at most 0.016 (mean 0.004), logits' std 0.12
    real = b["attention_mask"].astype(bool)
    error = np.abs(int8_s - fp32_s)[real]
    assert error.max() < 0.05 and error.mean() < 0.01 and error.max() > 0  # and it did quantize


def test_keep_float_pattern_must_match(onnx_dir, tmp_path):
    with pytest.raises(QualaError, match="matches no node name"):
        quantize_model(onnx_dir, "dynamic", tmp_path / "x.onnx", keep_float="no_such_layer")
    with pytest.raises(QualaError, match="not a regular expression"):
        quantize_model(onnx_dir, "dynamic", tmp_path / "x.onnx", keep_float="(")


def test_physical_cores():
    assert 1 <= physical_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize("dtype, max_size, rounding", [("fp16", 0.65, 1e-3), ("int8", 0.45, None)])
def test_compressed_embeddings_shrink_the_file_and_still_answer(onnx_dir, tmp_path, features, dtype, max_size,
                                                                rounding):
    path = quantize_model(onnx_dir, "dynamic", tmp_path / f"{dtype}.onnx", embeddings=dtype)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    original = {i.name: onnx.numpy_helper.to_array(i)
                for i in onnx.load(str(onnx_dir / "model.onnx")).graph.initializer}
    name = next(k for k, v in original.items() if v.shape[0] == 30522)
    stored = inits[f"{name}_{dtype}"]
    assert stored.dtype == {"fp16": np.float16, "int8": np.int8}[dtype] and name not in inits
    scale = inits.get(f"{name}_row_scale", 1.0)
    error = np.abs(stored.astype(np.float32) * scale - original[name])
    bound = rounding * np.abs(original[name]) + 1e-7 if rounding else scale / 2 + 1e-7  # each row to its own scale
    assert (error <= bound).all()
    assert path.stat().st_size < max_size * (onnx_dir / "model.int8.onnx").stat().st_size
    b = collate(features[:4])
    real = b["attention_mask"].astype(bool)
    config = load_predictor(onnx_dir, "onnx")[2]
    plain, _, _ = OnnxPredictor(onnx_dir / "model.int8.onnx", config)(b, None)
    small, _, _ = OnnxPredictor(path, config)(b, None)
    assert np.corrcoef(plain[real], small[real])[0, 1] > (0.999 if dtype == "fp16" else 0.95)
    with pytest.raises(QualaError, match="choose one of fp32, fp16, int8"):
        quantize_model(onnx_dir, "dynamic", tmp_path / "x.onnx", embeddings="int4")


def test_micro_batches_of_a_real_32_row_batch_match_single_row_runs(onnx_dir, dev_examples, tokenizer):
    """32 real features of mixed lengths in one batch: whatever the micro-batch size, each row's logits are those of
    the row run alone (no padding at all), and the columns past a micro-batch's own width hold PAD_LOGIT."""
    features = make_features(dev_examples, tokenizer, 160, 64)[:32]
    assert len(features) == 32 and len({len(f) for f in features}) > 8
    b = collate(features)
    config = load_predictor(onnx_dir, "onnx")[2]
    alone = OnnxPredictor(onnx_dir / "model.onnx", config, micro_batch=1)
    lc = LengthConfig((0.7, 0.4, 0.2))
    singles = [[alone(collate([f]), c) for f in features] for c in (None, lc)]
    lengths = b["attention_mask"].sum(1)
    for size in (4, 5, 32):
        split = OnnxPredictor(onnx_dir / "model.onnx", config, micro_batch=size)
        for c, single in zip((None, lc), singles):
            start, end, kept = split(b, c)
            assert start.shape == end.shape == b["input_ids"].shape and kept.shape == (32, 3)
            for row, (s, e, k) in enumerate(single):
                n = lengths[row]
                assert np.abs(start[row, :n] - s[0]).max() < 1e-4 and np.abs(end[row, :n] - e[0]).max() < 1e-4
                assert kept[row].tolist() == k[0].tolist()
                width = lengths[row // size * size: row // size * size + size].max()  # its micro-batch's width
                assert (start[row, width:] == -1e4).all() and (end[row, width:] == -1e4).all()
        # the data exercises the cut: some micro-batch is narrower than the batch
        assert size == 32 or any(lengths[i:i + size].max() < lengths.max() for i in range(0, 32, size))


def test_bf16_logits_follow_fp32_on_the_trained_model(release_model, tokenizer, dev_examples):
    """bf16 autocast on the shipped model: measured max error 0.14 (mean 0.015) on logits of std 2.5, same argmax."""
    from quala.evaluate import TorchPredictor
    b = collate(make_features(dev_examples[:12], tokenizer)[:12])
    real = b["attention_mask"].astype(bool)
    fp32 = TorchPredictor(release_model, "fp32")(b, None)
    bf16 = TorchPredictor(release_model, "bf16")(b, None)
    with torch.no_grad():
        direct = release_model(*(torch.as_tensor(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    assert np.abs(fp32[0] - direct.start_logits.numpy())[real].max() < 1e-5  # fp32 is plain fp32
    for f, h in zip(fp32[:2], bf16[:2]):
        error = np.abs(f - h)[real]
        assert 0 < error.max() < 0.5 and error.mean() < 0.05  # bf16 did run, and stays close
        assert (f.argmax(1) == h.argmax(1)).mean() >= 0.9
    assert np.array_equal(fp32[2], bf16[2])


def test_cpu_description_names_the_instruction_sets(monkeypatch):
    from quala import runtime
    cpuinfo = "model name\t: Test CPU\ncpu family\t: 25\nmodel\t: 1\nflags\t: fpu {}\n\nprocessor\t: 1\n"
    monkeypatch.setattr(runtime.Path, "read_text", lambda self: cpuinfo.format("avx2 avx512_vnni amx_int8"))
    assert runtime.cpu_description().startswith("Test CPU (family 25 model 1), ")
    assert runtime.cpu_description().endswith(" avx2 avx512_vnni amx_int8")
    monkeypatch.setattr(runtime.Path, "read_text", lambda self: cpuinfo.format("sse4_2"))
    assert runtime.cpu_description().endswith(", no AVX2")


def test_only_per_tensor_dynamic_int8_depends_on_batch_mates(onnx_dir):
    config = load_predictor(onnx_dir)[2]
    assert not OnnxPredictor(onnx_dir / "model.int8.onnx", config).batch_invariant
    assert OnnxPredictor(onnx_dir / "model.onnx", config).batch_invariant


def test_a_graph_with_other_layers_than_the_config_is_refused(onnx_dir):
    from dataclasses import replace
    config = load_predictor(onnx_dir)[2]
    with pytest.raises(QualaError, match="the graph has 3 layers; config.json says num_hidden_layers=2"):
        OnnxPredictor(onnx_dir / "model.onnx", replace(config, num_hidden_layers=2))


def test_only_runs_of_more_tokens_than_the_limit_shrink_the_arena(onnx_dir, features):
    from quala.runtime import run_micro_batches
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    seen = []

    class Recording:  # the real session, noting which runs got the arena-shrinking run options
        def run(self, outputs, feed, options=None):
            seen.append((feed["input_ids"].size, options is not None))
            return session.run(outputs, feed, options)

    b = collate(features[:4])
    feed = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": b["token_type_ids"], "token_counts": np.repeat(b["attention_mask"].sum(1)[:, None], 3, 1)}
    run_micro_batches(Recording(), feed, 1, 2, release_above_tokens=int(np.median(b["attention_mask"].sum(1))))
    limit = int(np.median(b["attention_mask"].sum(1)))
    assert [shrunk for _, shrunk in seen] == [size > limit for size, _ in seen] and any(s for _, s in seen)
    seen.clear()
    run_micro_batches(Recording(), feed, 1, 2)
    assert not any(s for _, s in seen)


def test_runtime_and_dtype_choices_and_their_messages(onnx_dir, tmp_path):
    from quala.runtime import choose_runtime
    assert choose_runtime(onnx_dir, "torch", "bf16") == "torch"
    with pytest.raises(QualaError, match="bf16 runs on the torch runtime only, not onnx"):
        choose_runtime(onnx_dir, "onnx", "bf16")
    shutil.copy(onnx_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(QualaError, match="; bf16 needs model.safetensors"):
        choose_runtime(tmp_path, "auto", "bf16")
    with pytest.raises(QualaError, match=r"model.safetensors\)$"):
        choose_runtime(tmp_path, "auto", "fp32")
    from quala.evaluate import TorchPredictor
    name = "".join(["tor", "ch"])  # a runtime name read from a command line is not an interned literal
    assert isinstance(load_predictor(onnx_dir, name)[0], TorchPredictor)


def cpu(flags: str, vendor: str = "GenuineIntel", family: str = "6") -> dict[str, str]:
    return {"vendor_id": vendor, "cpu family": family, "flags": flags}


def test_int8_kernel_is_u8s8_only_where_it_is_exact(monkeypatch):
    """VNNI or AMX on x86 (and other architectures): ONNX Runtime's u8s8 kernel as stored; an x86 CPU without them
    gets u8s7 (the same kernel on 7-bit weights, whose products do not saturate), or u8u8 (the stored integers) on
    the CPUs where that is as fast (AMD family 23: Zen 1 and 2); the argument, then $QUALA_INT8_KERNEL, overrides."""
    from quala import runtime
    monkeypatch.delenv(runtime.INT8_KERNEL_ENV, raising=False)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert runtime.choose_int8_kernel(cpu=cpu("fpu avx2 fma")) == "u8s7"
    assert runtime.choose_int8_kernel(cpu=cpu("avx2 avx512f avx512bw")) == "u8s7"
    assert runtime.choose_int8_kernel(cpu=cpu("avx2 fma", "AuthenticAMD", "25")) == "u8s7"  # Zen 3
    assert runtime.choose_int8_kernel(cpu=cpu("avx2 fma", "AuthenticAMD", "23")) == "u8u8"  # Zen 1, Zen 2
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert runtime.choose_int8_kernel(cpu=cpu(f"avx2 {vnni}")) == "u8s8"
        assert runtime.choose_int8_kernel(cpu=cpu(f"avx2 {vnni}", "AuthenticAMD", "23")) == "u8s8"
    assert runtime.choose_int8_kernel("u8s8", cpu=cpu("avx2")) == "u8s8"
    assert runtime.choose_int8_kernel("u8s7", cpu=cpu("avx2 avx512_vnni")) == "u8s7"
    monkeypatch.setenv(runtime.INT8_KERNEL_ENV, "u8s8")
    assert runtime.choose_int8_kernel(cpu=cpu("avx2")) == "u8s8"
    assert runtime.choose_int8_kernel("auto", cpu=cpu("avx2")) == "u8s7"
    monkeypatch.setenv(runtime.INT8_KERNEL_ENV, "s8s8")
    with pytest.raises(QualaError, match="'s8s8'.*QUALA_INT8_KERNEL.*auto, u8s8, u8u8, u8s7"):
        runtime.choose_int8_kernel()
    monkeypatch.delenv(runtime.INT8_KERNEL_ENV)
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert runtime.choose_int8_kernel(cpu={}) == "u8s8"
    monkeypatch.setattr(runtime, "first_cpu", lambda: None)  # no /proc/cpuinfo
    assert runtime.choose_int8_kernel() == "u8s8"


def test_predictor_runs_the_chosen_int8_kernel(onnx_dir, monkeypatch):
    from quala import runtime
    config = load_predictor(onnx_dir)[2]
    monkeypatch.setenv(runtime.INT8_KERNEL_ENV, "u8u8")
    p = OnnxPredictor(onnx_dir / "model.int8.onnx", config)
    assert (p.int8_kernel, p.int8_exact) == ("u8u8", True)
    assert p.describe() == f"model.int8.onnx in ONNX Runtime, {p.threads} threads, int8 kernel u8u8"
    monkeypatch.setenv(runtime.INT8_KERNEL_ENV, "u8s8")
    p = OnnxPredictor(onnx_dir / "model.int8.onnx", config)
    assert (p.int8_kernel, p.int8_exact) == ("u8s8", runtime.u8s8_exact())
    assert p.describe().endswith("int8 kernel u8s8" + ("" if p.int8_exact else " (saturating on this CPU)"))
    assert OnnxPredictor(onnx_dir / "model.onnx", config).int8_kernel is None  # a float graph
    assert OnnxPredictor(onnx_dir / "model.onnx", config).describe().endswith(" threads")


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat")
def test_others_cpu_share_counts_another_process_and_not_this_one():
    """A benchmark's own work on every core must not read as a busy machine (the load average does); another
    process spinning beside it must."""
    before, start = cpu_seconds(), time.perf_counter()
    burn(1.0)
    alone = others_cpu_share(before, cpu_seconds(), time.perf_counter() - start)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start
        before, start = cpu_seconds(), time.perf_counter()
        time.sleep(1.5)
        shared = others_cpu_share(before, cpu_seconds(), time.perf_counter() - start)
    finally:
        spinner.kill()
        spinner.wait()
    cpus = cpu_seconds()[2]
    assert alone < 0.25 and shared > 0.5 / cpus


def test_others_cpu_share_without_readings_is_unknown():
    assert others_cpu_share(None, (1.0, 1.0, 2), 1.0) is None
    assert others_cpu_share((0.0, 0.0, 2), (3.0, 1.0, 2), 1.0) == 1.0  # clipped
    assert others_cpu_share((0.0, 0.0, 2), (2.0, 1.0, 2), 1.0) == 0.5
