"""Training: span-QA fine-tuning (optionally distilled from a teacher), then LengthDrop with the sandwich rule.

Stage "finetune" trains the full-length model on the labels. Stage "lengthdrop" trains, each step, the full model
(labels, and teacher if any), the smallest sub-model and `num_sandwich` random sub-models, the sub-models learning by
in-place distillation from the full model. The same command runs on CPU, one GPU, or several GPUs
under torchrun (DistributedDataParallel). Checkpoints are atomic and hold everything `--resume` needs to continue
exactly: weights, optimizer, scheduler, RNG states and the position in the data. bf16 autocast by default only where
the hardware computes bf16 (native_bf16): emulated on a CPU without AVX512-BF16 or AMX it is far slower than fp32
(AMD EPYC Zen 1, 2 cores: the first LengthDrop step had not finished after 9 minutes; in fp32 a step takes 10-20 s).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from quala import scorer
from quala.budget import read_front
from quala.config import LengthConfig, QualaError, squad_path
from quala.data import collate, length_grouped_batches, load_squad, make_features, split_articles
from quala.evaluate import TorchPredictor, evaluate
from quala.files import atomic_write
from quala.modeling import QualaForQuestionAnswering, attach_scorers, load_tokenizer
from quala.runtime import cpu_flags

MASKED = -1e4  # logit for padding positions: far below any real logit, yet finite (no inf * 0 = nan in KL)


@dataclass
class TrainConfig:
    model: str  # initial model directory (the backbone, or a stage-1 output for stage 2)
    output: str
    stage: str = "both"  # finetune | lengthdrop | both
    train_file: str = ""
    dev_file: str = ""
    limit: int | None = None  # train on the first N questions only
    heldout_fraction: float = 0.05  # articles kept out of training for the length search (data.split_articles)
    epochs_finetune: float = 2.0
    epochs_lengthdrop: float = 5.0
    max_steps: int | None = None  # stop each stage after this many optimizer steps (smoke runs, tests)
    batch_size: int = 32
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    num_sandwich: int = 2
    length_drop_ratio_bound: float = 0.2
    layer_dropout_prob: float = 0.2
    teacher: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the teacher's loss against the labels' loss
    bf16: bool | None = None  # bf16 autocast; None: where the device computes it natively (native_bf16)
    seed: int = 42
    checkpoint_minutes: float = 10.0
    eval_limit: int | None = None  # questions of the dev file scored at the end of each stage (None: all)
    eval_batch_size: int = 64
    log_every: int = 10
    resume: bool = False
    stop_after_steps: int | None = None  # save a checkpoint and stop after this many steps (for resume tests)
    eval_length_configs: list[str] | None = None  # scored after LengthDrop; None: two linear schedules
    scorer_loss: float = 0.0  # weight of the learned ranking's scorer loss (scorer_loss()); 0: scorers held fixed
    front_sample: str = ""  # a front (model directory or length_configs.json) the random sub-models are drawn from
    front_share: float = 0.5  # with front_sample: the share of random sub-models drawn from it (the rest: uniform)
    front_jitter: float = 0.1  # each drawn ratio is scaled by U(1 - jitter, 1 + jitter)
    refit_scorers: bool | None = None  # refit the learned ranking's scorers at the end; None: see refits_scorers()
    attention_dropout: float | None = None  # dropout on the attention probabilities; None: the model config's (0.1)


# ---- losses ------------------------------------------------------------------------------------------------------
def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated numpy batch as tensors on the training device."""
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def masked_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return logits.float().masked_fill(attention_mask == 0, MASKED)


def span_loss(start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy on the answer's start and end tokens ([CLS] when the answer is not in the window)."""
    mask = batch["attention_mask"]
    return (F.cross_entropy(masked_logits(start, mask), batch["start_positions"])
            + F.cross_entropy(masked_logits(end, mask), batch["end_positions"])) / 2


def distill_loss(start: torch.Tensor, end: torch.Tensor, target_start: torch.Tensor, target_end: torch.Tensor,
                 mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(target || student) over the start and end distributions, scaled by T^2.

    F.kl_div(input, target) computes KL(target || input) with `input` the student's log-probabilities: the target
    (teacher, or the full model in in-place distillation) is the distribution the student is pulled toward. The
    public Length-Adaptive Transformer code passes these the other way round, i.e. KL(sub || full).
    """
    loss = 0.0
    for student, target in ((start, target_start), (end, target_end)):
        log_p = F.log_softmax(masked_logits(student, mask) / temperature, -1)
        log_q = F.log_softmax(masked_logits(target, mask).detach() / temperature, -1)
        loss = loss + F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    return loss / 2 * temperature ** 2


def scorer_loss(scores: tuple[torch.Tensor, ...], start: torch.Tensor, end: torch.Tensor, batch: dict
                ) -> torch.Tensor:
    """Squared error of every layer's scorer, at full length, against what quala.scorer fits it to (the full
    model's answer mass near each token, quala.scorer.answer_targets, here from the logits of this very pass,
    detached), over real tokens, averaged over layers. Its gradient reaches the scorers and, through what they
    read, the encoder: the early layers learn states from which a linear scorer can tell where the answer is, the
    block-skimming idea, while top-k itself passes no gradient."""
    valid = batch["attention_mask"].bool()
    target = scorer.answer_targets(start.detach(), end.detach(), valid, batch["context"])
    weight = valid.float() / valid.sum()
    return sum(((s.float() - target) ** 2 * weight).sum() for s in scores) / len(scores)


# ---- LengthDrop sampling -----------------------------------------------------------------------------------------
def sample_ratios(num_layers: int, bound: float, rng: np.random.Generator | None) -> tuple[float, ...]:
    """Each layer keeps between (1 - bound) and 1 times the previous layer's tokens; rng None gives the smallest."""
    ratios, r = [], 1.0
    for _ in range(num_layers):
        r = r * (1 - bound) if rng is None else r * rng.uniform(1 - bound, 1.0)
        ratios.append(r)
    return tuple(ratios)


def front_ratios(path: str | os.PathLike, num_layers: int) -> list[tuple[float, ...]]:
    """The ratio configurations of a front (a model directory or its length_configs.json), full length left out."""
    configs = [p.length_config for p in read_front(path).configs if p.length_config is not None]
    ratios = [lc.values for lc in configs if lc.unit == "ratio" and lc.exponent == 1 and len(lc.values) == num_layers]
    if not ratios:
        raise QualaError(f"--front-sample {path}: no ratio configuration of {num_layers} layers in its front")
    return ratios


def jitter_ratios(values: tuple[float, ...], spread: float, rng: np.random.Generator) -> tuple[float, ...]:
    """A front point's ratios, each scaled by U(1 - spread, 1 + spread), kept in [0.01, 1] and non-increasing over
    the layers that run; a 0 (a skipped layer) stays 0. LengthDrop's uniform sub-models never drop more than its
    bound per layer, while the cheap points a search finds drop half the tokens at once (0.48 at the first layer):
    drawing sub-models near the front trains the shapes that budgets pick."""
    out, last = [], 1.0
    for v in values:
        if v == 0:
            out.append(0.0)
            continue
        last = min(last, max(0.01, min(1.0, v * rng.uniform(1 - spread, 1 + spread))))
        out.append(round(last, 4))
    return tuple(out)


def sample_skipped_layers(num_layers: int, prob: float, rng: np.random.Generator) -> frozenset[int]:
    if prob <= 0:
        return frozenset()
    skipped = {i for i in range(num_layers) if rng.random() < prob}
    return frozenset(skipped) if len(skipped) < num_layers else frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def set_attention_dropout(model: QualaForQuestionAnswering, p: float) -> None:
    """Dropout on every layer's attention probabilities, recorded in the config. On a CPU it is the costliest
    elementwise work of a step: a (batch, heads, tokens, tokens) Bernoulli mask per layer and sub-model, and the
    masked copy kept for backward (benchmarks/train_throughput.py times a step with and without it)."""
    if not 0.0 <= p < 1.0:
        raise QualaError(f"attention dropout {p}: a probability in [0, 1)")
    model.config.attention_probs_dropout_prob = p
    for layer in model.layers:
        layer.attn_dropout.p = p


def linear_config(num_layers: int, first: float, last: float) -> LengthConfig:
    step = (first - last) / max(1, num_layers - 1)
    return LengthConfig(tuple(round(first - i * step, 4) for i in range(num_layers)))


# ---- the loop ----------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, stage: str, init_model: str, out_dir: Path):
        self.cfg, self.stage, self.out = cfg, stage, out_dir
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = self._setup_device()
        self.bf16 = native_bf16(self.device) if cfg.bf16 is None else cfg.bf16
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(init_model)
        model = QualaForQuestionAnswering.from_pretrained(init_model)
        model.config.max_seq_length, model.config.doc_stride = cfg.max_seq_length, cfg.doc_stride
        model.config.max_query_length = cfg.max_query_length
        if cfg.scorer_loss and (model.config.ranking != "learned" or model.layers[0].scorer is None):
            raise QualaError(f"--scorer-loss {cfg.scorer_loss}: {init_model} does not rank tokens with learned "
                             "scorers (fit them first: quala fit-scorer)")
        if cfg.attention_dropout is not None:
            set_attention_dropout(model, cfg.attention_dropout)
        for layer in model.layers:  # fitted, and trained along only with a scorer loss (see refit_scorers)
            if layer.scorer is not None:
                layer.scorer.requires_grad_(bool(cfg.scorer_loss))
        self.model = model.to(self.device).train()
        self.ddp = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.layer_dropout_prob > 0)
        examples = load_squad(cfg.train_file or squad_path("train"), limit=cfg.limit)
        examples, heldout = split_articles(examples, cfg.heldout_fraction)
        if not examples:
            raise QualaError(f"{cfg.train_file or squad_path('train')}: nothing left to train on after holding out "
                             f"{cfg.heldout_fraction:.0%} of the articles (--limit {cfg.limit}); train on more")
        if heldout and self.rank == 0:  # at least one whole article: a large share of a small file
            print(f"{stage}: training on {len(examples)} questions; {len({e.title for e in heldout})} article(s), "
                  f"{len(heldout)} questions, held out for `quala search` (--heldout-fraction "
                  f"{cfg.heldout_fraction}; 0 trains on all)")
        self.features = make_features(examples, self.tokenizer, cfg.max_seq_length, cfg.doc_stride,
                                      cfg.max_query_length, training=True)
        self.lengths = [len(f) for f in self.features]
        epochs = cfg.epochs_finetune if stage == "finetune" else cfg.epochs_lengthdrop
        self.batches_per_epoch = len(self.epoch_batches(0))
        self.total_steps = max(1, math.ceil(epochs * self.batches_per_epoch))
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (self.total_steps - s)
                                                                          / max(1, self.total_steps - warmup))))
        self.sampler = np.random.default_rng(cfg.seed + 1 + self.rank)  # sub-model lengths and LayerDrop
        self.front = front_ratios(cfg.front_sample, len(model.layers)) if cfg.front_sample else []
        self.step = 0
        self.teacher_logits = self._teacher_logits() if cfg.teacher else None
        self.used_ratios: list[tuple[float, ...]] = []  # the sub-model configurations of the last step
        self.scorer_error: torch.Tensor | None = None  # the last step's scorer_loss, when trained with one

    def _setup_device(self) -> torch.device:
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Length-grouped batches, shuffled by a seed of the epoch: a resume recomputes the same order.
        Under torchrun each rank takes every world-th batch."""
        batches = length_grouped_batches(self.lengths, self.cfg.batch_size,
                                         np.random.default_rng(self.cfg.seed + 1000 * epoch))
        batches = batches[: len(batches) // self.world * self.world] if self.world > 1 else batches
        return batches[self.rank::self.world]

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- teacher ---------------------------------------------------------------------------------------------------
    def _teacher_logits(self) -> np.ndarray:
        """Start/end logits of the teacher for every feature, computed once and cached on disk (float16)."""
        from transformers import AutoModelForQuestionAnswering
        cache = self.out / f"teacher_logits_{len(self.features)}x{self.cfg.max_seq_length}.npy"
        if cache.exists():
            return np.load(cache, mmap_mode="r")
        teacher_tok = load_tokenizer(self.cfg.teacher)
        if teacher_tok.get_vocab() != self.tokenizer.get_vocab():
            raise QualaError(f"teacher {self.cfg.teacher}: its tokenizer differs from the student's; "
                             "distillation needs the same vocabulary")
        try:
            teacher = AutoModelForQuestionAnswering.from_pretrained(self.cfg.teacher).to(self.device).eval()
        except Exception as e:
            raise QualaError(f"teacher {self.cfg.teacher}: cannot load a question-answering model ({e})") from None
        logits = np.zeros((len(self.features), 2, self.cfg.max_seq_length), dtype=np.float16)
        order = length_grouped_batches(self.lengths, 64)
        with torch.inference_mode(), self.autocast():
            for idx in tqdm(order, desc="teacher logits", disable=self.rank != 0):
                b = to_device(collate([self.features[i] for i in idx]), self.device)
                out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              token_type_ids=b["token_type_ids"])
                n = b["input_ids"].shape[1]
                logits[idx, 0, :n] = out.start_logits.float().cpu().numpy()
                logits[idx, 1, :n] = out.end_logits.float().cpu().numpy()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, lambda tmp: np.save(open(tmp, "wb"), logits))
        return logits

    # -- one step --------------------------------------------------------------------------------------------------
    def full_model_loss(self, batch: dict, idx: list[int]):
        scoring = bool(self.cfg.scorer_loss)
        out = self.ddp(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], return_scores=scoring)
        loss = span_loss(out.start_logits, out.end_logits, batch)
        if self.teacher_logits is not None:
            n = batch["input_ids"].shape[1]
            t = torch.from_numpy(np.asarray(self.teacher_logits[idx, :, :n], dtype=np.float32)).to(self.device)
            kd = distill_loss(out.start_logits, out.end_logits, t[:, 0], t[:, 1], batch["attention_mask"],
                              self.cfg.temperature)
            loss = (1 - self.cfg.alpha) * loss + self.cfg.alpha * kd
        if scoring:
            error = scorer_loss(out.scores, out.start_logits, out.end_logits, batch)
            loss, self.scorer_error = loss + self.cfg.scorer_loss * error, error.detach()
        return loss, out

    def train_step(self, batch: dict, idx: list[int]) -> torch.Tensor:
        """One optimizer step; returns the summed loss as a tensor (reading it waits for the device, so the loop
        reads it only when it logs, letting a GPU run ahead of the Python that feeds it)."""
        cfg = self.cfg
        sandwich = self.stage == "lengthdrop"
        n_sub = cfg.num_sandwich + 1 if sandwich else 0
        sync = self.ddp.no_sync if self.world > 1 else nullcontext
        with sync() if n_sub else nullcontext(), self.autocast():
            loss, full = self.full_model_loss(batch, idx)
        loss.backward()
        total = loss.detach()
        self.used_ratios = []
        if sandwich:
            # the smallest sub-model, then num_sandwich random ones; all distil from the full model
            for i in range(n_sub):
                if i > 0 and self.front and self.sampler.random() < cfg.front_share:
                    front = self.front[self.sampler.integers(len(self.front))]
                    ratios = jitter_ratios(front, cfg.front_jitter, self.sampler)
                else:
                    ratios = sample_ratios(len(self.model.layers), cfg.length_drop_ratio_bound,
                                           None if i == 0 else self.sampler)
                skipped = frozenset() if i == 0 else sample_skipped_layers(len(self.model.layers),
                                                                           cfg.layer_dropout_prob, self.sampler)
                self.used_ratios.append(ratios)
                with sync() if i < n_sub - 1 else nullcontext(), self.autocast():
                    sub = self.ddp(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   LengthConfig(ratios), skipped)
                    sub_loss = distill_loss(sub.start_logits, sub.end_logits, full.start_logits,
                                            full.end_logits, batch["attention_mask"])
                sub_loss.backward()
                total = total + sub_loss.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    # -- checkpoints -----------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 "sampler": self.sampler.bit_generator.state, "config": asdict(self.cfg), "stage": self.stage}
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))
        self.save_model(self.out / CHECKPOINT_MODEL, {"checkpoint_of": str(self.out)})

    def save_model(self, path: Path, extra: dict | None = None) -> None:
        """A model directory of the weights as they stand (config.json records the stage and steps)."""
        self.model.config.extra = {"trained_by": "quala train", "stage": self.stage, "steps": self.step,
                                   "train_config": asdict(self.cfg) | {"bf16": self.bf16}} | (extra or {})
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(str(path))

    def load_checkpoint(self) -> None:
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as e:
            raise QualaError(f"{self.checkpoint_path}: cannot read the checkpoint ({e})") from None
        if state.get("stage") != self.stage:
            raise QualaError(f"{self.checkpoint_path}: a checkpoint of stage {state.get('stage')!r}, "
                             f"not {self.stage!r}")
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:
            raise QualaError(f"{self.checkpoint_path}: the checkpoint's optimizer trained other parameters (resume "
                             f"with the --scorer-loss it was started with, {state['config'].get('scorer_loss', 0.0)})"
                             ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.sampler.bit_generator.state = state["sampler"]
        self.step = state["step"]

    def log(self, record: dict) -> None:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # -- the stage -------------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Train to the end of the stage (True) or until stopped (False); the checkpoint allows resuming."""
        cfg = self.cfg
        if cfg.resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        last_save, t0, seen = time.monotonic(), time.monotonic(), 0
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step",
                   disable=self.rank != 0, dynamic_ncols=True)
        stop = False
        try:
            while self.step < self.total_steps and not stop:
                epoch, position = divmod(self.step, self.batches_per_epoch)
                batches = self.epoch_batches(epoch)
                for idx in batches[position:]:
                    batch = to_device(collate([self.features[i] for i in idx]), self.device)
                    loss = self.train_step(batch, idx)
                    seen += len(idx) * self.world
                    rate = seen / (time.monotonic() - t0)
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        loss = loss.item()
                        bar.set_postfix(loss=f"{loss:.3f}", feat_s=f"{rate:.1f}", refresh=False)
                        self.log({"stage": self.stage, "step": self.step, "epoch": self.step / self.batches_per_epoch,
                                  "loss": loss, "lr": self.scheduler.get_last_lr()[0], "features_per_s": rate,
                                  "sub_ratios": [list(r) for r in self.used_ratios]}
                                 | ({} if self.scorer_error is None else {"scorer_loss": self.scorer_error.item()}))
                    if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                        self.save_checkpoint()
                        last_save = time.monotonic()
                    if self.step >= self.total_steps or self.step == cfg.stop_after_steps:
                        stop = self.step == cfg.stop_after_steps
                        break
        except KeyboardInterrupt:
            bar.close()
            self.save_checkpoint()
            print(f"\ninterrupted: checkpoint saved at step {self.step} in {self.checkpoint_path}; "
                  "continue with --resume")
            raise
        bar.close()
        self.save_checkpoint()
        return not stop

    def refit_scorers(self, features: int = 2000) -> None:
        """Fit the learned ranking's scorers again on the trained weights (the states they read have moved).
        Training features only, spread over the set."""
        picked = self.features[:: max(1, len(self.features) // features)][:features]
        t0 = time.perf_counter()
        attach_scorers(self.model, [s.to(self.device).requires_grad_(False) for s in
                                    scorer.fit(self.model, picked)])
        print(f"{self.stage}: learned ranking's scorers fitted again on {len(picked)} training features "
              f"({time.perf_counter() - t0:.0f} s)")

    def refits_scorers(self) -> bool:
        """Whether finish() fits a learned ranking's scorers again. By default after fine-tuning (full length only,
        where they played no part) but not after LengthDrop: its later layers learned to work with what these
        scorers keep, and a refit ranking undoes part of that (-1.1 F1 at 2.2x fewer MACs on held-out questions,
        docs/benchmarks.md)."""
        if self.model.config.ranking != "learned":
            return False
        return self.stage == "finetune" if self.cfg.refit_scorers is None else self.cfg.refit_scorers

    def finish(self) -> dict:
        """Save the model directory and score it on dev (full length, and shorter configurations after LengthDrop)."""
        if self.rank != 0:
            torch.distributed.barrier()  # wait until rank 0 has saved the model the next stage starts from
            return {}
        self.model.eval()
        if self.refits_scorers():
            self.refit_scorers()
        self.save_model(self.out)
        examples = load_squad(self.cfg.dev_file or squad_path("dev"), limit=self.cfg.eval_limit)
        features = make_features(examples, self.tokenizer, self.cfg.max_seq_length, self.cfg.doc_stride,
                                 self.cfg.max_query_length)
        configs = [None]
        if self.stage == "lengthdrop":
            configs += ([LengthConfig.parse(c) for c in self.cfg.eval_length_configs] if self.cfg.eval_length_configs
                        else [linear_config(len(self.model.layers), 0.8, 0.3),
                              linear_config(len(self.model.layers), 0.6, 0.2)])
        dtype = "bf16" if self.bf16 else "fp32"
        results = {}
        for lc in configs:
            r = evaluate(TorchPredictor(self.model, dtype), self.tokenizer, examples, lc,
                         self.cfg.eval_batch_size, features=features)
            results[str(lc or "full")] = {"exact_match": r.exact_match, "f1": r.f1, "questions": r.questions,
                                          "kept_per_layer": r.kept_per_layer}
            print(f"{self.stage} dev ({r.questions} questions) length config {lc or 'full'}: "
                  f"EM {r.exact_match:.2f} F1 {r.f1:.2f}")
        self.log({"stage": self.stage, "step": self.step, "dev": results})
        (self.out / "train_done.json").write_text(json.dumps({"steps": self.step, "dev": results}, indent=1))
        if self.world > 1:
            torch.distributed.barrier()
        return results


# Beside checkpoint.pt (what --resume reads), each checkpoint writes the weights as a model directory here, so
# that a run can be scored, exported or compared (benchmarks/compare_models.py) while it trains.
CHECKPOINT_MODEL = "checkpoint"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def train(cfg: TrainConfig) -> Path:
    """Run the requested stages; returns the final model directory."""
    if cfg.stage not in ("finetune", "lengthdrop", "both"):
        raise QualaError(f"--stage must be finetune, lengthdrop or both, not {cfg.stage!r}")
    out = Path(cfg.output)
    stages = ["finetune", "lengthdrop"] if cfg.stage == "both" else [cfg.stage]
    init = cfg.model
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` saves a checkpoint like Ctrl-C
    for stage in stages:
        stage_dir = out / stage if cfg.stage == "both" else out
        if cfg.resume and (stage_dir / "train_done.json").exists():
            init = str(stage_dir)
            continue
        trainer = Trainer(cfg, stage, init, stage_dir)
        if not trainer.run():
            return stage_dir  # stopped early on request; --resume continues
        trainer.finish()
        init = str(stage_dir)
    return Path(init)
