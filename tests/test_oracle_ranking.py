"""benchmarks/oracle_ranking.py: the oracle keeps the tokens nearest the full-length answer, per layer as asked."""

import numpy as np
import pytest
import torch

from quala.config import LengthConfig, QualaError
from quala.data import collate, make_features
from quala.evaluate import TorchPredictor
from quala.modeling import RANKINGS, QualaForQuestionAnswering
from quala.scorer import targets
from tests.conftest import load_script, tiny_config
from tests.test_scorer import attach_random

oracle_ranking = load_script("benchmarks/oracle_ranking.py")


def test_variants_parse_and_bad_ones_name_the_problem():
    assert oracle_ranking.parse_variant("learned", 6) == (frozenset(), None)
    assert oracle_ranking.parse_variant("oracle", 3) == (frozenset({0, 1, 2}), None)
    assert oracle_ranking.parse_variant("oracle@1-5+question-last@4", 6) == (frozenset({1, 2, 3, 4, 5}), 4)
    assert oracle_ranking.parse_variant("oracle@0,2", 3) == (frozenset({0, 2}), None)
    for bad in ("oracle@7", "learned@2", "question-last@x", "random"):
        with pytest.raises(QualaError, match="variant"):
            oracle_ranking.parse_variant(bad, 6)


def first_layer_kept(predictor, batch, lc) -> list[list[int]]:
    """The window positions layer 0 kept (its slots are positions: nothing was dropped before it)."""
    kept = []
    hook = predictor.model.layers[0].register_forward_hook(lambda m, i, o: kept.append(o[2]))
    try:
        predictor(batch, lc)
    finally:
        hook.remove()
    return [sorted(row[: k].tolist()) for row, k in zip(kept[-1], lc.token_counts(
        torch.as_tensor(batch["attention_mask"]).sum(1))[:, 0].tolist())]


def test_the_oracle_keeps_the_tokens_the_full_model_answers_near_and_only_where_asked(dev_examples, tokenizer):
    torch.manual_seed(0)
    model = attach_random(QualaForQuestionAnswering(tiny_config(ranking="learned")).eval(), inputs="lexical")
    batch = collate(make_features(dev_examples[:4], tokenizer, 128, 48)[:4])
    lc = LengthConfig((0.4, 0.4, 0.4))
    with torch.inference_mode():
        full = model(*(torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    oracle = first_layer_kept(oracle_ranking.OraclePredictor(model, frozenset({0}), None), batch, lc)
    for row, kept in enumerate(oracle):
        n = int(batch["attention_mask"][row].sum())
        context = (batch["token_type_ids"][row, :n] == 1) & (np.arange(n) < n - 1)
        value = targets(full.start_logits[row, :n].numpy(), full.end_logits[row, :n].numpy(), context)
        value[0] = np.inf  # [CLS] is always kept
        assert value[kept].min() >= np.sort(value)[::-1][len(kept) - 1] - 1e-6  # the top-k by the oracle's value
    learned = first_layer_kept(oracle_ranking.OraclePredictor(model, frozenset({1, 2}), None), batch, lc)
    assert learned == first_layer_kept(TorchPredictor(model), batch, lc)  # layer 0: the model's own scorers
    assert learned != oracle
    assert RANKINGS["learned"].__name__ == "rank_by_scorer" and "lexical_prior" not in vars(model)  # restored


def test_question_last_drops_the_question_before_any_context_token(dev_examples, tokenizer):
    torch.manual_seed(0)
    model = attach_random(QualaForQuestionAnswering(tiny_config(ranking="learned")).eval(), inputs="lexical")
    batch = collate(make_features(dev_examples[:2], tokenizer, 128, 48)[:2])
    lc = LengthConfig((0.5, 0.5, 0.5))
    for row, kept in enumerate(first_layer_kept(oracle_ranking.OraclePredictor(model, frozenset(), 0), batch, lc)):
        n = int(batch["attention_mask"][row].sum())
        question = np.flatnonzero(batch["token_type_ids"][row, :n] == 0)[1:]  # not [CLS]
        assert kept[0] == 0 and not set(kept) & set(question.tolist())
        assert len(kept) <= n - len(question)  # every kept slot but [CLS] is context
