"""Inference engines behind one Predictor protocol: PyTorch (fp32/bf16) or one ONNX Runtime session.

The ONNX graph takes the tokens each layer keeps as an input (see quala.export), so a single session serves every
length configuration: switching configuration per call costs nothing.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from quala.config import LengthConfig, ModelConfig, QualaError, token_counts
from quala.files import read_json
from quala.tokenizer import load_tokenizer

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
DTYPES = ("fp32", "bf16")
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "token_counts")  # quala.export's graph inputs
ONNX_FILES = {"onnx-int8": "model.int8.onnx", "onnx": "model.onnx"}
# ONNX Runtime's fused SkipLayerNormalization kernel is slower on CPU here than the Add + LayerNormalization it
# replaces: 10.83 -> 9.43 ms per feature at batch 1 for the full-length INT8 model on a Zen 5; on a Zen 3 (AVX2 only)
# it takes 7-30% longer at batch 1 and 32; `benchmarks/session_settings.py` times both settings on the CPU at hand.
DISABLED_FUSIONS = ("SkipLayerNormFusion",)
# Rows per session run. A batch of 32 runs faster as 8 runs of 4 rows, each cut to its own longest row: the
# activations of 4 rows stay in cache (an ad-hoc sweep, 64 dev features in length-grouped batches of 32, full
# length, ms per feature: 1 row 8.82, 2 8.02, 4 7.58, 8 7.92, 16 9.03, 32 9.95). benchmarks/latency.py times it.
MICRO_BATCH = 4


def physical_cores() -> int:
    """Distinct (package, core) pairs this process may run on; hyper-threads do not speed up GEMMs."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# ONNX Runtime's uint8 x int8 kernel is exact on x86 only with these (VNNI's VPDPBUSD, AMX's TDPBUSD accumulate in
# int32); without them it saturates (see quala.quantize.unsigned_weights) and quala runs 7-bit weights on it (u8s7),
# or the stored integers on the u8u8 kernel (U8U8_FAST_CPUS).
EXACT_U8S8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# u8s7: the u8s8 kernel on weights halved to 7 bits at load (quala.quantize.seven_bit_weights), exact on every CPU
INT8_KERNELS = ("auto", "u8s8", "u8u8", "u8s7")
INT8_KERNEL_ENV = "QUALA_INT8_KERNEL"


def first_cpu() -> dict[str, str] | None:
    """The first CPU's entries in /proc/cpuinfo (None where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return dict((k.strip(), v.strip()) for k, _, v in
                (line.partition(":") for line in text.split("\n\n")[0].splitlines()))


def cpu_flags(cpu: dict[str, str] | None = None) -> frozenset[str]:
    """The flags of `cpu` (/proc/cpuinfo's entries for one CPU; default: this machine's first; empty where
    /proc/cpuinfo is missing)."""
    return frozenset(((first_cpu() or {}) if cpu is None else cpu).get("flags", "").split())


def u8s8_exact(flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernel computes exact products here: with VNNI or AMX on x86, and on
    other architectures (their dot-product instructions accumulate in int32)."""
    import platform
    flags = cpu_flags() if flags is None else flags
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    return any(f in flags for f in EXACT_U8S8_FLAGS)


# x86 CPUs without VNNI where ONNX Runtime's u8u8 kernel runs about as fast as its u8s8 one (so as u8s7), by
# (vendor_id, cpu family) of /proc/cpuinfo: AMD family 23 (Zen, Zen+, Zen 2). Measured: on a Zen 2, u8u8 4-8% faster
# than u8s7 at batch 1 and level at batch 32; on a Zen 1, u8u8 against u8s8 1-4% faster at batch 1 and 1-5% slower
# at batch 32; on a Zen 3 (family 25), u8s7 8-13% faster than u8u8 at batch 1 (docs/benchmarks.md).
U8U8_FAST_CPUS = (("AuthenticAMD", "23"),)


def choose_int8_kernel(kernel: str | None = None, cpu: dict[str, str] | None = None) -> str:
    """'u8s8', 'u8u8' or 'u8s7': `kernel` (else $QUALA_INT8_KERNEL, else 'auto'). auto, on `cpu` (/proc/cpuinfo's
    entries for one CPU; default: this machine's first): u8s8 where it is exact (the faster kernel there, and how the
    graph is stored); else u8u8 on U8U8_FAST_CPUS: the stored integers, so a VNNI CPU's exact answers, about as
    fast there; else u8s7: the fast u8s8 kernel on the weights halved to 7 bits, exact on every CPU (up to 36% faster
    than u8u8 on an AVX2-only Zen 3; F1 level with u8u8 on 2,813 held-out questions)."""
    kernel = kernel or os.environ.get(INT8_KERNEL_ENV) or "auto"
    if kernel not in INT8_KERNELS:
        raise QualaError(f"int8 kernel {kernel!r} (argument or ${INT8_KERNEL_ENV}): choose one of "
                         f"{', '.join(INT8_KERNELS)}")
    if kernel != "auto":
        return kernel
    cpu = (first_cpu() or {}) if cpu is None else cpu
    if u8s8_exact(cpu_flags(cpu)):
        return "u8s8"
    return "u8u8" if (cpu.get("vendor_id"), cpu.get("cpu family")) in U8U8_FAST_CPUS else "u8s7"


def cpu_description() -> str:
    """The CPU and the instruction sets INT8/bf16 speed depends on, for every benchmark table: e.g. 'AMD EPYC
    (family 26 model 2), 2 CPUs / 2 physical cores, avx2 avx512f avx512_vnni avx512_bf16'."""
    first = first_cpu()
    if first is None:
        import platform
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    flags = set(first.get("flags", "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    return (f"{first.get('model name', 'unknown CPU')} (family {first.get('cpu family', '?')} model "
            f"{first.get('model', '?')}), {os.cpu_count()} CPUs / {physical_cores()} physical cores, {isa}")


def cpu_seconds() -> tuple[float, float, int] | None:
    """(seconds the machine's CPUs have been busy, seconds this process has used, CPUs counted) so far, from
    /proc/stat (busy: every state but idle and iowait; steal, time the hypervisor gave to another VM, counts as
    busy) and getrusage; None where /proc/stat is missing. Two readings give others_cpu_share."""
    import resource
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = [int(v) for v in lines[0].split()[1:9]]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own, cpus


def others_cpu_share(before: tuple[float, float, int] | None, after: tuple[float, float, int] | None,
                     wall_s: float) -> float | None:
    """The share of the machine's CPU time that other processes (and steal) took between two cpu_seconds()
    readings `wall_s` apart: what a benchmark's timings share the cores with. The load average cannot tell: a
    benchmark on every core raises it to the core count by itself."""
    if before is None or after is None or wall_s <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(1.0, max(0.0, others / (wall_s * after[2])))


class OnnxPredictor:
    """An onnxruntime.InferenceSession on all threads, created once; the length configuration is a per-call input.

    A batch of several micro-batches runs them side by side instead, one per thread, on a second session of one
    thread each (created at the first such batch): a core running its own micro-batch wastes nothing on handing
    small operators to the other. Logits are the same bit for bit. On 2 Zen 3 cores, 32-row batches ran 1.09-1.18x
    faster than one micro-batch after another (full length to 3x fewer MACs, faster in 17-21 of 21 paired repeats);
    benchmarks/latency.py times both ways.
    """

    def __init__(self, path: str | os.PathLike, config: ModelConfig, threads: int | None = None,
                 micro_batch: int = MICRO_BATCH, profile_prefix: str | None = None, int8_kernel: str | None = None,
                 side_by_side: bool = True, disabled_fusions: tuple[str, ...] = DISABLED_FUSIONS):
        """profile_prefix: record ONNX Runtime's per-node profile (session.end_profiling() writes it there; the
        micro-batches of a batch then run one after another on that session). int8_kernel: auto (default, or
        $QUALA_INT8_KERNEL), u8s8, u8u8 or u8s7; see choose_int8_kernel. side_by_side False: a batch's
        micro-batches run one after another on the session of all threads. disabled_fusions: ONNX Runtime graph
        fusions left out of both sessions (benchmarks/session_settings.py times the alternatives)."""
        import onnx
        self.path = Path(path)
        self.config = config
        if micro_batch < 1:
            raise QualaError(f"micro_batch must be at least 1, got {micro_batch}")
        self.micro_batch = micro_batch
        if not self.path.is_file():
            raise QualaError(f"{self.path}: no such file")
        self.threads = threads or physical_cores()
        self.side_by_side = side_by_side and self.threads > 1 and not profile_prefix
        self._pool: tuple[object, ThreadPoolExecutor] | None = None  # (one-thread session, workers), when first needed
        self._pool_lock = threading.Lock()
        self.disabled_fusions = tuple(disabled_fusions)
        kernel = choose_int8_kernel(int8_kernel)
        try:
            model = onnx.load(str(self.path))
            self.int8_kernel = int8_kernel_of(model)
            source: str | bytes = str(self.path)
            if self.int8_kernel == "u8s8" and kernel in ("u8u8", "u8s7"):  # rewritten in memory, not the file
                from quala.quantize import seven_bit_weights, unsigned_weights
                (unsigned_weights if kernel == "u8u8" else seven_bit_weights)(model)
                self.int8_kernel = kernel
                source = model.SerializeToString()
            self.session = open_session(source, self.threads, profile_prefix, self.disabled_fusions)
            # what the one-thread session is opened from, at the first batch that needs it (then let go: a graph
            # rewritten in memory is as large as the file)
            self._pool_source = source if self.side_by_side else None
        except QualaError:
            raise
        except Exception as e:  # protobuf and onnxruntime raise their own error types for damaged files
            raise QualaError(f"{self.path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None
        # an INT8 graph gives the same logits on every CPU unless it runs u8s8 where that kernel saturates
        self.int8_exact = self.int8_kernel != "u8s8" or u8s8_exact()
        self.check_signature()
        self.batch_invariant = not any(n.op_type in DYNAMIC_SCALE_OPS for n in model.graph.node)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layer_skips = meta.get(LAYER_SKIPS_KEY) == "1"
        self.ranking = meta.get(RANKING_KEY, "attention")
        last = meta.get(QUESTION_LAST_KEY)
        self.question_last_layer = None if last is None else int(last)
        # A run of more tokens than this hands the memory it grew back to the system: onnxruntime's arena otherwise
        # keeps its largest run's size for good (+370 MB after one 16 x 384 run). None: never (eval's steady runs).
        self.release_above_tokens: int | None = None

    def side_by_side_pool(self) -> tuple[object, ThreadPoolExecutor]:
        """The one-thread session and the `threads` workers that run a batch's micro-batches side by side."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = (open_session(self._pool_source, 1, disabled_fusions=self.disabled_fusions),
                              ThreadPoolExecutor(self.threads, thread_name_prefix="quala-run"))
                self._pool_source = None
            return self._pool

    def describe(self) -> str:
        """What runs the model, for reports: e.g. 'model.int8.onnx in ONNX Runtime, 2 threads, int8 kernel u8u8'."""
        kernel = ""
        if self.int8_kernel:
            kernel = f", int8 kernel {self.int8_kernel}" + ("" if self.int8_exact else " (saturating on this CPU)")
        return f"{self.path.name} in ONNX Runtime, {self.threads} threads{kernel}"

    def check_signature(self) -> None:
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if sorted(inputs) != sorted(INPUTS):
            raise QualaError(f"{self.path}: inputs {sorted(inputs)} are not quala's {list(INPUTS)} "
                             f"(export it with `quala export`)")
        layers = inputs["token_counts"][1]
        if isinstance(layers, int) and layers != self.config.num_hidden_layers:
            raise QualaError(f"{self.path}: the graph has {layers} layers; config.json says "
                             f"num_hidden_layers={self.config.num_hidden_layers}")

    def __call__(self, batch: dict[str, np.ndarray], length_config: LengthConfig | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        layers = self.config.num_hidden_layers
        if length_config is not None:
            length_config.check(layers, self.config.max_seq_length)
            if length_config.skipped and not self.layer_skips:
                raise QualaError(f"length config {length_config} skips layers, but {self.path.name} was exported "
                                 f"without layer skips: export it again with `quala export --layer-skips` (and "
                                 f"quantize that), or use --runtime torch")
        mask = batch["attention_mask"]
        feed = {"input_ids": batch["input_ids"], "attention_mask": mask, "token_type_ids": batch["token_type_ids"],
                "token_counts": token_counts(mask, layers, length_config)}
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feed.items()}
        session, pool = self.session, None
        if self.side_by_side and len(mask) > self.micro_batch:
            session, pool = self.side_by_side_pool()
        start, end, kept = run_micro_batches(session, feed, self.micro_batch, token_outputs=2,
                                             release_above_tokens=self.release_above_tokens, pool=pool)
        return start, end, kept


def open_session(source: str | bytes, threads: int, profile_prefix: str | None = None,
                 disabled_fusions: tuple[str, ...] = DISABLED_FUSIONS):
    """An ONNX Runtime CPU session of `threads` intra-op threads with quala's graph settings, from a file or bytes."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_fusions))


PAD_LOGIT = -1e4
LAYER_SKIPS_KEY = "quala.layer_skips"  # ONNX metadata: "1" when the graph runs length configs with a 0
RANKING_KEY = "quala.ranking"  # ONNX metadata: the token ranking baked into the graph (absent before: "attention")
QUESTION_LAST_KEY = "quala.question_last_layer"  # ONNX metadata: ModelConfig.question_last_layer baked in, where set


def run_micro_batches(session, feed: dict[str, np.ndarray], size: int, token_outputs: int,
                      release_above_tokens: int | None = None, pool: ThreadPoolExecutor | None = None
                      ) -> list[np.ndarray]:
    """session.run over micro-batches of `size` rows (side by side on `pool`'s workers when given); the first
    `token_outputs` outputs (B, width, ...) are padded back to the batch's width with PAD_LOGIT (postprocessing
    never reads past a feature's length). A micro-batch of more than release_above_tokens (rows x width) shrinks
    the CPU arena after its run."""
    width = feed["input_ids"].shape[1]

    def run(chunk: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, chunk, arena_shrinkage() if release_above_tokens is not None
                           and chunk["input_ids"].size > release_above_tokens else None)

    chunks = micro_batches(feed, size)
    parts = list(pool.map(run, chunks) if pool is not None else map(run, chunks))
    outputs = []
    for j in range(len(parts[0])):
        arrays = [p[j] for p in parts]
        if j < token_outputs:
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             constant_values=PAD_LOGIT) for a in arrays]
        outputs.append(np.concatenate(arrays))
    return outputs


@functools.cache
def arena_shrinkage():
    """ONNX Runtime run options that hand the CPU arena's growth back after the run."""
    import onnxruntime as ort
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def micro_batches(feed: dict[str, np.ndarray], size: int):
    """Runs of `size` rows, each cut to the width of its longest row (token_counts has no sequence axis)."""
    for i in range(0, len(feed["input_ids"]), size):
        chunk = {k: v[i: i + size] for k, v in feed.items()}
        width = max(1, int(chunk["attention_mask"].sum(1).max()))
        yield {k: v if k == "token_counts" else np.ascontiguousarray(v[:, :width]) for k, v in chunk.items()}


def int8_kernel_of(model) -> str | None:
    """'u8s8' or 'u8u8' after the type of an ONNX model's quantized weights; None if it has none (a float graph)."""
    import onnx

    from quala.quantize import WEIGHT_INPUTS
    types = {i.name: i.data_type for i in model.graph.initializer}
    weights = {types.get(n.input[WEIGHT_INPUTS[n.op_type][0]]) for n in model.graph.node if n.op_type in WEIGHT_INPUTS}
    if onnx.TensorProto.INT8 in weights:
        return "u8s8"
    return "u8u8" if onnx.TensorProto.UINT8 in weights else None


# Nodes of a graph dynamically quantized per tensor: its activations get one scale per tensor, computed from the
# whole batch, so a row's logits depend on the other rows (and the padding) it is batched with. A per-row graph
# (`quala quantize --activations per-row`, metadata quala.activations=per-row) has none: each token's scale comes
# from that token alone, so it is batch-invariant.
DYNAMIC_SCALE_OPS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul")


def choose_runtime(model_dir: Path, runtime: str, dtype: str = "fp32") -> str:
    """'auto' -> onnx-int8 if DIR/model.int8.onnx exists, else onnx, else torch (always torch for bf16)."""
    if runtime not in RUNTIMES:
        raise QualaError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if dtype not in DTYPES:
        raise QualaError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if runtime != "auto":
        if runtime != "torch" and dtype != "fp32":
            raise QualaError(f"--dtype bf16 runs on the torch runtime only, not {runtime}")
        return runtime
    if dtype == "fp32":
        for name, file in ONNX_FILES.items():
            if (model_dir / file).is_file():
                return name
    if (model_dir / "model.safetensors").is_file():
        return "torch"
    raise QualaError(f"{model_dir}: no model weights (model.int8.onnx, model.onnx or model.safetensors)"
                     + ("; bf16 needs model.safetensors" if dtype != "fp32" else ""))


def load_predictor(model_dir: str | os.PathLike, runtime: str = "auto", dtype: str = "fp32",
                   threads: int | None = None) -> tuple[object, object, ModelConfig]:
    """A model directory -> (predictor, tokenizer, ModelConfig). Directories may hold only ONNX files."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise QualaError(f"{model_dir}: not a model directory (no config.json)")
    name = choose_runtime(model_dir, runtime, dtype)
    if name == "torch":
        try:
            from quala.evaluate import TorchPredictor
            from quala.modeling import QualaForQuestionAnswering
        except ImportError as e:
            raise QualaError(f"the torch runtime needs PyTorch ({e}): pip install torch==2.13.0 "
                             f"'quala[train]', or use an ONNX runtime") from None
        model = QualaForQuestionAnswering.from_pretrained(model_dir)
        return TorchPredictor(model, dtype), load_tokenizer(model_dir), model.config
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    predictor = OnnxPredictor(model_dir / ONNX_FILES[name], config, threads)
    return predictor, load_tokenizer(model_dir), config
