"""Exact Match and F1 exactly as the official SQuAD v1.1 evaluation script computes them."""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import NamedTuple

import numpy as np

from quala.config import QualaError

_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, the articles a/an/the, and extra white space (in the official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def question_scores(gold: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per question of `gold`: (EM, F1) against its best-matching answer, each 0 or 1 / in [0, 1]; a missing
    prediction scores 0."""
    scores = {}
    for qid, answers in gold.items():
        if qid not in predictions:
            scores[qid] = (0.0, 0.0)
            continue
        scores[qid] = (max(exact_match_score(predictions[qid], a) for a in answers),
                       max(f1_score(predictions[qid], a) for a in answers))
    return scores


def squad_scores(gold: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
    """Mean over every question of `gold` (a missing prediction scores 0), as percentages; extra ids are ignored."""
    scores = question_scores(gold, predictions).values()
    em, f1 = sum(s[0] for s in scores), sum(s[1] for s in scores)
    n = len(gold)
    return {"exact_match": 100.0 * em / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0}


class Paired(NamedTuple):
    candidate: float  # mean F1 (percent)
    baseline: float
    difference: float  # mean per-question candidate - baseline
    stderr: float  # of that mean
    questions: int


def paired(candidate: np.ndarray, baseline: np.ndarray) -> Paired:
    """Means of two per-question F1 arrays over the same questions, their mean difference and its standard error."""
    if candidate.shape != baseline.shape or candidate.size == 0:
        raise QualaError(f"paired F1: {candidate.size} and {baseline.size} questions; both must score the same ones")
    diff = candidate - baseline
    stderr = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
    return Paired(float(candidate.mean()), float(baseline.mean()), float(diff.mean()), stderr, int(diff.size))
