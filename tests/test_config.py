import re

import numpy as np
import pytest
import torch

from quala.config import LengthConfig, QualaError, exit_status


def test_parse_ratios_and_tokens():
    assert LengthConfig.parse("1.0,0.8,0.5") == LengthConfig((1.0, 0.8, 0.5), "ratio")
    assert LengthConfig.parse("tokens:315,251,242,159,142,33") == LengthConfig((315, 251, 242, 159, 142, 33), "tokens")
    assert str(LengthConfig.parse("tokens:315,251,33")) == "tokens:315,251,33"
    assert LengthConfig.parse("full") is None and LengthConfig.parse(None) is None
    assert str(LengthConfig.parse("1.0,0.8,0.5")) == "1,0.8,0.5"


@pytest.mark.parametrize("text, message", [
    ("1.0,0.9,0.95", "not monotone"),
    ("1.5,1.0", "not in [0, 1]"),
    ("0.5,abc", "cannot read"),
    ("0.0,0.0", "every layer is skipped"),
    ("tokens:0,0", "every layer is skipped"),
    ("tokens:30.5,2", "whole number >= 0"),
    ("-0.5,0.5", "not in [0, 1]"),
    ("0.5,0,0.8", "layer 2 keeps 0.8 > layer 0 keeps 0.5"),
    ("315,251,242", "for absolute token counts write 'tokens:315,251,242'"),
])
def test_invalid_configs_name_the_problem(text, message):
    with pytest.raises(QualaError, match=re.escape(message)):
        LengthConfig.parse(text)


def test_check_against_model():
    with pytest.raises(QualaError, match="has 2 values; the model has 6 layers"):
        LengthConfig.parse("1.0,0.5").check(6, 384)
    with pytest.raises(QualaError, match="exceeds the maximum length 384"):
        LengthConfig.parse("tokens:400,300").check(2, 384)


def test_all_ones_means_full_length_never_one_token():
    """'1,1,1' once read as one token per layer, answering garbage: it is the full length."""
    lc = LengthConfig.parse("1,1,1")
    assert lc == LengthConfig((1.0, 1.0, 1.0), "ratio")
    assert lc.token_counts(np.array([50, 7])).tolist() == [[50, 50, 50], [7, 7, 7]]
    assert LengthConfig.parse(str(lc)) == lc


def test_token_counts_per_example():
    lens = torch.tensor([100, 10, 1])
    counts = LengthConfig((1.0, 0.55, 0.5, 0.01)).token_counts(lens)
    assert counts.tolist() == [[100, 55, 50, 1], [10, 6, 5, 1], [1, 1, 1, 1]]
    counts = LengthConfig((315, 251, 33), "tokens").token_counts(torch.tensor([384, 100]))
    assert counts.tolist() == [[315, 251, 33], [100, 100, 33]]


def test_a_zero_skips_a_layer_and_the_running_layers_stay_non_increasing():
    lc = LengthConfig.parse("1,0,0.5,0,0.25")
    assert lc.skipped == (1, 3) and str(lc) == "1,0,0.5,0,0.25"
    assert lc.token_counts(np.array([100, 3])).tolist() == [[100, 0, 50, 0, 25], [3, 0, 2, 0, 1]]
    assert LengthConfig.parse("tokens:0,300,200").token_counts(np.array([250])).tolist() == [[0, 250, 200]]
    assert LengthConfig.parse("0,1,1").token_counts(np.array([7])).tolist() == [[0, 7, 7]]


def test_exit_status_prints_a_user_error_as_one_line_and_lets_bugs_through(capsys):
    def fails(path):
        raise QualaError(f"{path}: no such file")

    assert exit_status(lambda: None) == 0
    assert exit_status(fails, "x.json") == 2
    assert capsys.readouterr().err == "error: x.json: no such file\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        exit_status(lambda: 1 / 0)


def test_an_exponent_keeps_a_share_of_a_384_token_window_and_more_of_shorter_ones():
    lc = LengthConfig.parse("0.5,0.25@0.5")
    assert lc == LengthConfig((0.5, 0.25), "ratio", 0.5) and str(lc) == "0.5,0.25@0.5"
    assert LengthConfig.from_json(lc.to_json()) == lc and lc.to_json()["exponent"] == 0.5
    assert "exponent" not in LengthConfig.parse("0.5,0.25").to_json()  # plain ratios are written as before
    counts = lc.token_counts(np.array([384, 96, 20]))
    assert counts.tolist() == [[192, 96], [96, 48], [20, 20]]  # 0.5 * sqrt(384 * 96) = 96; never more than n
    assert (LengthConfig.parse("0.5,0.25@1").token_counts(np.array([96])) == [[48, 24]]).all()


@pytest.mark.parametrize("text", ["0.5,0.25@", "0.5,0.25@x", "0.5,0.25@1.5", "0.5,0.25@-0.1", "tokens:300,200@0.5"])
def test_a_bad_exponent_names_the_problem(text):
    with pytest.raises(QualaError, match="exponent"):
        LengthConfig.parse(text)

