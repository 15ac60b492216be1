"""benchmarks/head_pruning.py: gates that remove a head as a smaller model would, the pruning order, the MACs."""
import numpy as np
import torch

from quala.config import LengthConfig
from quala.data import collate, make_features
from quala.flops import mean_gmacs
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import load_script, tiny_config

head_pruning = load_script("benchmarks/head_pruning.py")


def logits(model, batch, lc=None):
    with torch.no_grad():
        out = model(*(torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")), lc)
    return out.start_logits


def test_open_gates_change_nothing_and_a_closed_one_removes_its_head(dev_examples, tokenizer):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    batch = collate(make_features(dev_examples[:3], tokenizer, 128, 48))
    lc = LengthConfig((0.8, 0.5, 0.3))
    gates = torch.ones(3, 4)
    with head_pruning.gated_heads(model, gates):
        assert torch.allclose(logits(model, batch, lc), logits_plain := logits(model, batch, lc), atol=1e-6)
    assert torch.allclose(logits(model, batch, lc), logits_plain)  # the patch is gone afterwards
    gates[1, 2] = 0
    with head_pruning.gated_heads(model, gates):
        gated = logits(model, batch)
    d = 64 // 4  # at full length no ranking reads the probabilities: head 2 of layer 1 is its output columns
    model.layers[1].attn_out.weight.data[:, 2 * d: 3 * d] = 0
    assert torch.allclose(gated, logits(model, batch), atol=1e-5)
    assert not torch.allclose(gated, logits_plain, atol=1e-3)


def test_pruning_removes_the_least_important_and_never_a_layers_last_head():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.05, 0.01, 0.02]])
    gates = head_pruning.pruned_gates(scores, 3)
    assert gates.tolist() == [[1, 0, 1], [1, 0, 0]]  # layer 1's third-weakest stays: its last head
    assert head_pruning.pruned_gates(scores, 5).sum(1).tolist() == [1, 1]  # at most 2 per layer can go


def test_macs_with_every_head_are_the_cost_models():
    config = tiny_config()
    lengths = [40, 77, 128]
    for lc in (None, LengthConfig((0.8, 0.5, 0.3))):
        every = head_pruning.pruned_gmacs(config, lc, lengths, [4, 4, 4])
        assert np.isclose(every, mean_gmacs(config, lc, lengths))
        assert head_pruning.pruned_gmacs(config, lc, lengths, [2, 4, 4]) < every
