"""benchmarks/answer_survival.py: the positions each layer ran on, composed through the drops; span hits."""

import numpy as np
import torch

from quala.config import LengthConfig
from quala.data import collate, make_features
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import load_script, tiny_config

answer_survival = load_script("benchmarks/answer_survival.py")


def windows(dev_examples, tokenizer):
    return [f for f in make_features(dev_examples[:6], tokenizer, 128, 48, training=True) if f.start_position > 0]


def test_kept_positions_are_nested_counted_and_what_the_model_restores(dev_examples, tokenizer):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    features = windows(dev_examples, tokenizer)[:4]
    batch = collate(features)
    lc = LengthConfig((0.8, 0.5, 0.3))
    kept, start, _ = answer_survival.kept_tokens(model, batch, lc, "attention")
    counts = lc.token_counts(torch.as_tensor(batch["attention_mask"]).sum(1)).numpy()
    assert (kept.sum(2) == np.minimum.accumulate(counts, axis=1)).all()
    assert (kept[:, 1:] <= kept[:, :-1]).all()  # a layer runs on tokens the layer before kept: composed positions
    assert kept[:, :, 0].all()  # [CLS]
    # the positions the last layer ran on are the ones whose logits changed in the last layer
    with torch.inference_mode():
        two = model(*(torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")),
                    LengthConfig((0.8, 0.5, 0.0)))
    changed = ~np.isclose(start, two.start_logits.numpy(), atol=1e-6)
    assert (changed == kept[:, 2]).all()
    full, _, _ = answer_survival.kept_tokens(model, batch, None, None)
    assert (full == batch["attention_mask"][:, None, :].astype(bool)).all()


def test_best_span_and_rates(dev_examples, tokenizer):
    start, end = np.zeros(8), np.zeros(8)
    start[[2, 6]], end[[1, 4]] = 5.0, 4.0  # end before start at 1; the best valid span is (2, 4)
    context = np.array([0, 1, 1, 1, 1, 1, 0, 0], dtype=bool)  # position 6 lies outside the context
    assert answer_survival.best_span(start, end, context) == (2, 4)
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    features = windows(dev_examples, tokenizer)
    r = answer_survival.survival(model, features, LengthConfig((1.0, 1.0, 0.05)), None, 4)
    assert r["survived"][0] == r["survived"][1] == 100.0 and r["survived"][2] < 100.0
    assert 0 < r["dropped_share"] <= 100 and 0 <= r["hit"] <= 100
