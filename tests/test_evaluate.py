"""quala.evaluate: per-question F1 against the official score."""
import pytest

from quala.evaluate import evaluate, question_f1
from quala.runtime import load_predictor


def test_per_question_f1_averages_to_the_official_score(tiny_model_dir, dev_examples):
    predictor, tokenizer, _ = load_predictor(tiny_model_dir, "torch")
    result = evaluate(predictor, tokenizer, dev_examples, progress=False)
    per_question = question_f1(dev_examples, result.answers)
    assert per_question.shape == (len(dev_examples),) and ((per_question >= 0) & (per_question <= 100)).all()
    assert per_question.mean() == pytest.approx(result.f1)
