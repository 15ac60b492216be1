import pytest

from quala.metrics import exact_match_score, f1_score, normalize_answer, squad_scores


def test_normalization_follows_the_official_order():
    assert normalize_answer("The  Quick, Brown-fox!") == "quick brownfox"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert normalize_answer("Theatre") == "theatre"  # "the" only as a whole word


def test_f1_by_hand():
    # pred tokens: [denver, broncos, won]; gold: [denver, broncos] -> P 2/3, R 1, F1 0.8
    assert f1_score("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count once per occurrence in both: pred [a, a] has no overlap after article removal
    assert f1_score("a a", "a") == 0.0
    assert f1_score("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)
    assert f1_score("", "Denver") == 0.0


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match_score("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match_score("Eiffel", "Eiffel Tower") == 0.0


def test_scores_take_the_best_gold_and_count_missing_as_zero():
    gold = {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990"], "q3": ["Paris"]}
    preds = {"q1": "Broncos", "q2": "in 1990", "extra": "ignored"}
    s = squad_scores(gold, preds)
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2*(1/2*1)/(1/2+1) = 2/3; q3 missing: 0
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_tie_between_golds_and_empty_prediction():
    gold = {"q": ["a", "b c"]}
    assert squad_scores(gold, {"q": ""})["exact_match"] == 100.0  # "a" normalises to "" like the empty answer
    assert squad_scores(gold, {"q": ""})["f1"] == 0.0  # the official F1 gives 0 when nothing overlaps
    assert squad_scores(gold, {"q": "c b"})["f1"] == 100.0


def test_a_missing_prediction_does_not_stop_the_count_and_an_empty_set_scores_zero():
    from quala.metrics import squad_scores
    gold = {"a": ["Paris"], "b": ["Rome"], "c": ["Oslo"]}
    scores = squad_scores(gold, {"b": "Rome", "c": "Oslo"})  # the first question has no prediction
    assert scores["exact_match"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)
    assert squad_scores({}, {}) == {"exact_match": 0.0, "f1": 0.0}
