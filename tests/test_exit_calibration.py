"""benchmarks/exit_calibration.py: each token's depth through the drops, and a fit that finds a known calibration."""
import numpy as np
import torch

from quala.config import LengthConfig
from quala.data import make_features
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import load_script, tiny_config

exit_calibration = load_script("benchmarks/exit_calibration.py")


def test_depth_counts_the_layers_each_token_ran(dev_examples, tokenizer):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    features = make_features(dev_examples[:5], tokenizer, 128, 48)
    lc = LengthConfig((0.8, 0.5, 0.3))
    out = exit_calibration.run_windows(model, features, lc, 3)
    for f, (start, end, depth) in zip(features, out):
        counts = lc.token_counts(torch.tensor([len(f)]))[0].tolist()
        assert len(start) == len(end) == len(depth) == len(f)
        assert [(depth >= i + 1).sum() for i in range(3)] == counts  # layer i ran on exactly its kept tokens
        assert depth[0] == 3  # [CLS] runs every layer
    full = exit_calibration.run_windows(model, features[:2], None, 2)
    assert all((d == 3).all() for _, _, d in full)


def test_fit_recovers_a_known_scale_and_bias_and_leaves_full_depth_alone():
    rng = np.random.default_rng(0)
    layers, rows = 3, []
    for _ in range(3000):
        depth = rng.choice([1, layers], size=12)
        depth[0] = layers
        true = rng.normal(0, 2, 12)
        gold = rng.choice(12, p=np.exp(true) / np.exp(true).sum())
        seen = np.where(depth == 1, (true - 1.0) / 2.0, true)  # depth 1: half the scale, 1 lower
        rows.append((seen, seen, depth, np.ones(12, dtype=bool), gold, gold))
    scale, bias = exit_calibration.fit(rows, layers)
    assert np.allclose(np.exp(scale[:, 1]), 2.0, rtol=0.15) and np.allclose(bias[:, 1], 1.0, atol=0.3)
    assert (scale[:, layers] == 0).all() and (bias[:, layers] == 0).all()
    logits, depth = np.array([0.5, -1.0]), np.array([layers, layers])
    assert (exit_calibration.calibrate(logits, depth, scale[0], bias[0]) == logits).all()
