"""benchmarks/length_rule.py: the rule at b = 1 is the ratio configuration, and at its scale costs the same."""
import numpy as np

from quala.config import LengthConfig
from quala.flops import mean_gmacs
from tests.conftest import load_script, tiny_config

length_rule = load_script("benchmarks/length_rule.py")


def test_exponent_one_is_the_ratio_configuration():
    lc = LengthConfig((0.92, 0.53, 0.19))
    assert length_rule.rule_config(lc, 1.0, 146.0, 1.0) == lc
    lengths = np.array([7, 60, 101, 146, 384])
    same = length_rule.rule_config(lc, 1.0, 146.0, 1.0 + 1e-12)  # through the rule's own arithmetic
    assert (same.token_counts(lengths) == lc.token_counts(lengths)).all()


def test_a_smaller_exponent_keeps_a_smaller_share_of_long_windows_at_the_same_macs():
    config, lc = tiny_config(), LengthConfig((0.8, 0.5, 0.3))
    lengths = np.array([40, 60, 80, 100, 128] * 4)
    scale = length_rule.matched_scale(config, lc, lengths, 0.5)
    rule = length_rule.rule_config(lc, 0.5, float(lengths.mean()), scale)
    assert rule.exponent == 0.5
    assert np.isclose(mean_gmacs(config, rule, lengths), mean_gmacs(config, lc, lengths), rtol=0.02)
    counts = rule.token_counts(lengths)
    share = counts[:, -1] / lengths
    assert share[lengths == 128].max() < 0.3 < share[lengths == 40].min()
