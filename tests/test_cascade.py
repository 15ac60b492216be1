"""benchmarks/cascade.py: a second, costlier pass where the cheap answer is unsure; its F1, cost and choice."""
import numpy as np
import pytest

from quala.config import LengthConfig, QualaError
from quala.runtime import load_predictor
from tests.conftest import load_script

cascade = load_script("benchmarks/cascade.py")


def scored(f1, logit, macs, full=10.0):
    n = len(f1)
    return cascade.Scored(np.array(f1, float), np.array(logit, float), np.zeros(n), np.full(n, float(macs)),
                          np.full(n, full))


SCORED = {"cheap": scored([100, 0, 0, 100], [9, 1, 2, 8], 2.0), "costly": scored([100, 100, 0, 50], [9] * 4, 5.0),
          "full": scored([100, 100, 100, 100], [9] * 4, 10.0)}


def test_a_cascade_pays_for_both_passes_where_it_answers_again():
    never = cascade.outcome(SCORED, cascade.Choice("cheap", "costly", -np.inf), "logit")
    assert never == (50.0, 5.0, 0.0)
    unsure = cascade.outcome(SCORED, cascade.Choice("cheap", "costly", 5.0), "logit")  # questions 1 and 2 again
    assert unsure == pytest.approx((50.0 + 25.0, 40 / (4 * 2 + 2 * 5), 0.5))
    always = cascade.outcome(SCORED, cascade.Choice("cheap", "full", np.inf), "logit")
    assert always == pytest.approx((100.0, 40 / 48, 1.0))
    assert cascade.outcome(SCORED, cascade.Choice("costly", None, -np.inf), "logit") == (62.5, 2.0, 0.0)


def test_the_choice_is_the_most_accurate_that_saves_enough():
    choices = cascade.candidates(SCORED, "logit")
    assert {c.cheap for c in choices if c.costly is None} == set(SCORED)
    assert all(SCORED[c.costly].macs.sum() > SCORED[c.cheap].macs.sum() for c in choices if c.costly)
    at_2x = cascade.best(SCORED, choices, 2.0, "logit")
    f1, saving, _ = cascade.outcome(SCORED, at_2x, "logit")
    assert saving >= 2.0 and f1 == 75.0  # cheap -> costly on the two unsure questions beats costly alone (62.5)
    assert at_2x.cheap == "cheap" and at_2x.costly in ("costly", "full")
    assert cascade.best(SCORED, choices, 6.0, "logit") is None
    assert cascade.interpolated(SCORED, 3.5, "logit") == pytest.approx((50 + 62.5) / 2)
    assert cascade.interpolated(SCORED, 6.0, "logit") is None
    text = cascade.table(SCORED, SCORED, [2.0, 6.0], "logit")
    assert "|  | costly | 0.0% | 62.50 @ 2.00x |" in text and "| 2x | cheap -> " in text
    assert "| 6x | no configuration reaches it |" in text


def test_samples_parse_and_bad_ones_name_the_flag():
    assert cascade.parse_sample("2400:2813", "--test") == (2400, 2813)
    for bad in ("", "2400", "a:b", "10:0", "-1:5"):
        with pytest.raises(QualaError, match="--tune"):
            cascade.parse_sample(bad, "--tune")


def test_scores_are_per_question_and_priced_on_their_windows(tiny_model_dir, dev_examples):
    predictor, tokenizer, config = load_predictor(tiny_model_dir, "torch")
    full = cascade.score(predictor, tokenizer, config, dev_examples, None, 8)
    cheap = cascade.score(predictor, tokenizer, config, dev_examples, LengthConfig((0.5, 0.5, 0.5)), 8)
    assert full.f1.shape == (len(dev_examples),) and (full.macs == full.full_macs).all()
    assert (cheap.macs < cheap.full_macs).all() and (cheap.full_macs == full.full_macs).all()
    assert ((full.prob > 0) & (full.prob <= 1)).all() and np.isfinite(full.logit).all()


def test_bad_options_name_the_problem_before_any_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    for args, flag in ((["--confidence", "logit,margin"], "--confidence"), (["--targets", "2,fast"], "--targets"),
                       (["--test", "5:0"], "--test")):
        assert cascade.main(["--model", missing] + args) == 2
        assert flag in capsys.readouterr().err
