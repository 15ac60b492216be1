"""The one evaluation loop: examples -> features -> model (or runtime) -> answers -> EM/F1."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from quala.config import LengthConfig
from quala.data import Answer, Example, Feature, collate, length_grouped_batches, make_features, postprocess, \
    ranked_answers, squad_dataset
from quala.metrics import question_scores, squad_scores


class Predictor(Protocol):
    """Anything that turns a padded batch into start/end logits and per-layer kept-token counts."""

    def __call__(self, batch: dict[str, np.ndarray], length_config: LengthConfig | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class TorchPredictor:
    """An eager PyTorch model, ranking tokens as its config says unless `ranking` names another (e.g. "position",
    each layer's first k tokens: a baseline for benchmarks/tradeoff.py)."""
    batch_invariant = True  # each row's logits are its own: padding is masked, no batch-wide statistics

    def __init__(self, model, dtype: str = "fp32", ranking: str | None = None):
        """model: a QualaForQuestionAnswering; dtype "fp32" or "bf16" (autocast)."""
        self.model = model.eval()
        self.dtype = dtype
        self.ranking = ranking

    def describe(self) -> str:
        """What runs the model, for reports."""
        import torch
        device = next(self.model.parameters()).device
        where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
        return f"PyTorch {self.dtype}, {where}"

    def __call__(self, batch, length_config):
        import torch
        device = next(self.model.parameters()).device  # the model runs where it lives (CPU, or a GPU in training)
        batch = {k: torch.as_tensor(v).to(device) for k, v in batch.items()}
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            out = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], length_config,
                             ranking=self.ranking)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy(), out.kept.cpu().numpy()


@dataclass
class EvalResult:
    exact_match: float
    f1: float
    questions: int
    features: int
    kept_per_layer: list[float]  # mean tokens each layer ran on, over features
    tokens: float  # mean real tokens per feature
    answers: list[Answer]

    def predictions(self, examples: list[Example]) -> dict[str, str]:
        return {e.id: a.text for e, a in zip(examples, self.answers)}


def run_features(predictor: Predictor, features: list[Feature], length_config: LengthConfig | None,
                 batch_size: int = 32, progress: bool = True, desc: str = "predict"
                 ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Logits for every feature (in feature order) and the kept-token counts, batched by length."""
    starts: list = [None] * len(features)
    ends: list = [None] * len(features)
    kept = np.zeros((len(features), 0))
    batches = length_grouped_batches([len(f) for f in features], batch_size)
    with tqdm(total=len(features), desc=desc, unit="feat", disable=not progress, leave=False) as bar:
        for idx in batches:
            s, e, k = predictor(collate([features[i] for i in idx]), length_config)
            if kept.shape[1] == 0:
                kept = np.zeros((len(features), k.shape[1]))
            for row, i in enumerate(idx):
                starts[i], ends[i] = s[row, : len(features[i])], e[row, : len(features[i])]
            kept[idx] = k
            bar.update(len(idx))
    return starts, ends, kept


def evaluate(predictor: Predictor, tokenizer, examples: list[Example], length_config: LengthConfig | None = None,
             batch_size: int = 32, max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
             features: list[Feature] | None = None, progress: bool = True) -> EvalResult:
    if features is None:
        features = make_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    starts, ends, kept = run_features(predictor, features, length_config, batch_size, progress)
    answers = postprocess(examples, features, starts, ends)
    scores = squad_scores(squad_dataset(examples), {e.id: a.text for e, a in zip(examples, answers)})
    return EvalResult(scores["exact_match"], scores["f1"], len(examples), len(features),
                      kept.mean(0).tolist(), float(np.mean([len(f) for f in features])), answers)


def question_f1(examples: list[Example], answers: list[Answer]) -> np.ndarray:
    """Per question, the official v1.1 F1 in percent: their mean is `evaluate`'s F1 (paired comparisons and
    per-question choices read it)."""
    scores = question_scores(squad_dataset(examples), {e.id: a.text for e, a in zip(examples, answers)})
    return np.array([100.0 * scores[e.id][1] for e in examples])


def answer_questions(predictor: Predictor, tokenizer, pairs: list[tuple[str, str]],
                     length_config: LengthConfig | None = None, top_k: int = 1, batch_size: int = 32,
                     max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64
                     ) -> list[list[Answer]]:
    """(question, context) pairs -> the top_k answers of each, best first. Long contexts are windowed."""
    examples = [Example(str(i), q, c) for i, (q, c) in enumerate(pairs)]
    features = make_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    starts, ends, _ = run_features(predictor, features, length_config, batch_size, progress=False)
    return [ranked[:top_k] for ranked in ranked_answers(examples, features, starts, ends)]
