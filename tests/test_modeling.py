import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

from quala.config import LengthConfig, QualaError
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import tiny_config


def batch(n: int = 3, length: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (n, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    for i in range(1, n):
        mask[i, length - 7 * i:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    return ids, mask, types


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return QualaForQuestionAnswering(tiny_config()).eval()


def test_full_length_matches_hugging_face_bert(tmp_path, model):
    hf = BertForQuestionAnswering(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, intermediate_size=128)).eval()
    hf.save_pretrained(tmp_path)
    ours = QualaForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask, types = batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mine = ours(ids, mask, types)
        all_ones = ours(ids, mask, types, LengthConfig((1.0, 1.0, 1.0)))
    real = mask.bool()
    assert torch.allclose(mine.start_logits[real], theirs.start_logits[real], atol=1e-5)
    assert torch.allclose(mine.end_logits[real], theirs.end_logits[real], atol=1e-5)
    assert torch.allclose(all_ones.start_logits[real], mine.start_logits[real], atol=1e-5)


def test_saved_directory_loads_in_transformers(tmp_path, model):
    model.save_pretrained(tmp_path)
    hf = BertForQuestionAnswering.from_pretrained(tmp_path).eval()
    ids, mask, types = batch()
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask, token_type_ids=types).end_logits[mask.bool()],
                              model(ids, mask, types).end_logits[mask.bool()], atol=1e-5)
    again = QualaForQuestionAnswering.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_kept_counts_follow_the_config_per_example(model):
    ids, mask, types = batch()
    with torch.no_grad():
        out = model(ids, mask, types, LengthConfig((0.8, 0.5, 0.25)))
    lens = mask.sum(1)
    expected = LengthConfig((0.8, 0.5, 0.25)).token_counts(lens)
    assert torch.equal(out.kept, expected)
    with torch.no_grad():
        tokens = model(ids, mask, types, LengthConfig((30, 20, 5), "tokens"))
    assert tokens.kept[0].tolist() == [30, 20, 5] and tokens.kept[2].tolist() == [26, 20, 5]


def test_padding_does_not_change_an_example(model):
    """An example gives the same logits alone as in a padded batch, with tokens dropped."""
    ids, mask, types = batch()
    lc = LengthConfig((0.7, 0.5, 0.3))
    with torch.no_grad():
        together = model(ids, mask, types, lc)
        n = int(mask[2].sum())
        alone = model(ids[2:, :n], mask[2:, :n], types[2:, :n], lc)
    assert torch.allclose(together.start_logits[2, :n], alone.start_logits[0], atol=1e-5)


def test_drop_and_restore_keeps_each_dropped_token_last_vector(model):
    """All tokens through layer 0, then only [CLS]: the others' logits come from their layer-0 output."""
    ids, mask, types = batch(1)
    with torch.no_grad():
        out = model(ids, mask, types, LengthConfig((40, 1, 1), "tokens"))
        x = model.embed(ids, types)
        x, _, _ = model.layers[0](x, mask.bool(), None)
        expected = model.qa_outputs(x)[..., 0]
    assert torch.allclose(out.start_logits[0, 1:], expected[0, 1:], atol=1e-5)
    assert not torch.allclose(out.start_logits[0, :1], expected[0, :1], atol=1e-3)  # [CLS] went on


def test_cls_is_always_kept(model):
    ids, mask, types = batch(2)
    with torch.no_grad():
        x = model.embed(ids, types)
        _, valid, slots = model.layers[0](x, mask.bool(), torch.tensor([3, 3]))
    assert slots[:, 0].tolist() == [0, 0] and valid.sum(1).tolist() == [3, 3]


def test_bad_length_config_and_missing_files(tmp_path, model):
    ids, mask, types = batch()
    with pytest.raises(QualaError, match="has 2 values; the model has 3 layers"):
        model(ids, mask, types, LengthConfig((1.0, 0.5)))
    with pytest.raises(QualaError, match="no config.json"):
        QualaForQuestionAnswering.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(QualaError, match="cannot read weights"):
        QualaForQuestionAnswering.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(QualaError, match="malformed JSON"):
        QualaForQuestionAnswering.from_pretrained(tmp_path)
