"""The learned token ranking: scorers fitted in closed form, kept tokens, saving, and the exported graph."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from quala import scorer
from quala.config import LengthConfig, QualaError
from quala.export import export_onnx, token_counts
from quala.modeling import (COVERAGE_SPREADS, LEXICAL_FEATURES, LEXICAL_SPREADS, MATCH_FEATURES, SCORER_FILE,
                            QualaForQuestionAnswering, attach_scorers, lexical_prior, load, scorer_width)
from tests.conftest import tiny_config
from tests.test_modeling import batch, popularity_layer


def random_scorers(model, seed: int = 0, inputs: str = "states") -> list:
    torch.manual_seed(seed)
    return [torch.nn.Linear(scorer_width(inputs, model.config.hidden_size), 1) for _ in model.layers]


def attach_random(model, seed: int = 0, inputs: str = "states"):
    """Random scorers of kind `inputs`, with a random lexicon (specials at 0) when they read one."""
    lexicon = None
    if inputs == "lexical":
        lexicon = torch.rand(model.config.vocab_size, generator=torch.Generator().manual_seed(seed)) * 8
        lexicon[:5] = 0.0
    return attach_scorers(model, random_scorers(model, seed, inputs), lexicon)


def test_targets_peak_near_the_answer_and_keep_the_question():
    start, end = np.full(40, -10.0), np.full(40, -10.0)
    start[20], end[22] = 5.0, 5.0
    context = np.arange(40) >= 10
    t = scorer.targets(start, end, context, radius=3)
    assert t[:10].min() > t[10:].max() - 1e-9  # question and specials first
    assert t[17:26].min() > t[30:].max() + 3 and t[27] < t[25]  # the answer's neighbourhood next


def test_fitted_scorers_rank_like_their_targets(tiny_model_dir, dev_examples, tokenizer):
    from quala.data import collate, make_features
    model, _ = load(tiny_model_dir)
    features = make_features(dev_examples, tokenizer, 128, 48)
    scorers = scorer.fit(model, features)
    assert len(scorers) == 3 and all(torch.isfinite(s.weight).all() for s in scorers)
    b = collate(features[:8])
    ids, mask, types = (torch.as_tensor(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        out = model(ids, mask, types)
        inputs, _, _ = scorer.layer_inputs(model, ids, mask, types)[-1]
        predicted = scorers[-1](inputs).squeeze(-1)
    corr = []
    for row, f in enumerate(features[:8]):
        n = len(f)
        y = scorer.targets(out.start_logits[row, :n].numpy(), out.end_logits[row, :n].numpy(), f.offsets[:, 0] >= 0)
        corr.append(np.corrcoef(predicted[row, :n].numpy(), y)[0, 1])
    assert np.mean(corr) > 0.5, corr


def test_sub_model_states_follow_the_tokens_the_model_keeps(tiny_model_dir, dev_examples, tokenizer):
    """layer_inputs under token counts: each layer sees the tokens the model's forward kept, [CLS] first, the
    ones the previous layer's scorer ranked highest, with their positions in the input."""
    from quala.data import collate, make_features
    model, _ = load(tiny_model_dir)
    features = make_features(dev_examples[:6], tokenizer, 128, 48)
    attach_scorers(model, random_scorers(model))
    model.config.ranking = "learned"
    b = collate(features[:6])
    ids, mask, types = (torch.as_tensor(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    lc = LengthConfig.parse("0.7,0.4,0.2")
    with torch.no_grad():
        kept = model(ids, mask, types, lc).kept
        states = scorer.layer_inputs(model, ids, mask, types, lc.token_counts(mask.sum(1)))
    assert torch.equal(states[0][2], torch.arange(ids.shape[1]).expand(ids.shape))
    for i in range(len(states) - 1):
        inputs, valid, positions = states[i]
        assert torch.equal(states[i + 1][1].sum(1), kept[:, i])
        with torch.no_grad():
            score = model.layers[i].scorer(inputs).squeeze(-1).masked_fill(~valid, -torch.inf)
        for row in range(len(ids)):
            k = int(kept[row, i])
            best = positions[row][score[row, 1:].topk(k - 1).indices + 1].tolist()
            assert states[i + 1][2][row, :k].tolist() == [0] + best
            assert not torch.isin(states[i + 1][2][row, :k], torch.nonzero(mask[row] == 0).flatten()).any()


def test_a_fit_on_sub_models_reads_each_slots_own_target(tiny_model_dir, dev_examples, tokenizer):
    """Keeping every token reorders the slots by rank but changes no state: the fit must match the full-length one,
    which it only does when every slot's target follows its token."""
    from quala.data import make_features
    model, _ = load(tiny_model_dir)
    features = make_features(dev_examples[:20], tokenizer, 128, 48)
    attach_scorers(model, random_scorers(model))
    model.config.ranking = "learned"
    full = scorer.fit(model, features)
    reordered = scorer.fit(model, features, configs=[LengthConfig.parse("1,1,1")])
    for a, b in zip(full, reordered):
        assert torch.allclose(a.weight, b.weight, atol=1e-4, rtol=1e-3) and abs(a.bias.item() - b.bias.item()) < 1e-4
    dropped = scorer.fit(model, features, configs=[None, LengthConfig.parse("0.6,0.3,0.2")])
    assert not torch.allclose(full[-1].weight, dropped[-1].weight, atol=1e-4)
    assert torch.allclose(full[0].weight, dropped[0].weight, atol=1e-5)  # layer 0 always sees every token


def test_learned_ranking_keeps_exactly_the_tokens_its_scorer_ranks_highest():
    layer = popularity_layer()
    scorer_ = torch.nn.Linear(2 * 384, 1)
    with torch.no_grad():
        scorer_.weight.zero_()
        scorer_.weight[0, 2] = 1.0  # score = x[:, :, 2]: unrelated to attention (x[:, :, 0])
        scorer_.bias.zero_()
    layer.scorer = scorer_
    n, k = 20, 5
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, n, 384, generator=g) * 0.1
    x[0, :, 0] = torch.linspace(0, 1, n)  # attention prefers the last tokens
    x[0, :, 2] = torch.randperm(n, generator=g).float()
    valid = torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad():
        slots = layer(x, valid, torch.tensor([k]), "learned")[2][0].tolist()
        by_attention = layer(x, valid, torch.tensor([k]))[2][0].tolist()
    assert slots == [0] + sorted(range(1, n), key=lambda j: -x[0, j, 2].item())[: k - 1]
    assert slots != by_attention


@pytest.mark.parametrize("inputs", ["states", "question", "lexical"])
def test_scorers_are_saved_beside_the_weights_and_required(tiny_model_dir, tmp_path, inputs):
    model, _ = load(tiny_model_dir)
    ids, mask, types = batch(2, 30)
    with pytest.raises(QualaError, match="needs scorer weights"):
        model(ids, mask, types, LengthConfig((0.8, 0.5, 0.3)), ranking="learned")
    attach_random(model, inputs=inputs)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / SCORER_FILE).is_file()
    again = QualaForQuestionAnswering.from_pretrained(tmp_path / "m")
    assert again.layers[0].scorer.in_features == scorer_width(inputs, model.config.hidden_size)
    assert (again.lexicon is not None) == (inputs == "lexical") and again.reads_lexicon == (inputs == "lexical")
    with torch.no_grad():
        a = model(ids, mask, types, LengthConfig((0.8, 0.5, 0.3)), ranking="learned")
        b = again(ids, mask, types, LengthConfig((0.8, 0.5, 0.3)), ranking="learned")
    assert torch.equal(a.start_logits, b.start_logits)
    with pytest.raises(QualaError, match="2 scorers for a model of 3 layers"):
        attach_scorers(model, random_scorers(model)[:2])


@pytest.mark.parametrize("inputs,layer_skips", [("states", False), ("question", False), ("question", True),
                                                ("lexical", False), ("lexical", True)])
def test_learned_ranking_exports_as_one_graph_with_token_counts(tmp_path, inputs, layer_skips):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    attach_random(model, seed=1, inputs=inputs)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx", ranking="learned",
                                                   layer_skips=layer_skips)), providers=["CPUExecutionProvider"])
    ids, mask, types = batch(4, 80, seed=2)  # 80 > the question's 66 slots (max_query_length + 2)
    ids[:, [20, 21, 22, 40]] = ids[:, [3, 4, 5, 3]]  # question words in the context: lexical_prior's values not 0
    configs = [None, LengthConfig((0.8, 0.5, 0.25)), LengthConfig((30, 20, 5), "tokens")]
    for lc in configs + ([LengthConfig((0.7, 0, 0.3))] if layer_skips else []):
        with torch.no_grad():
            ref = model(ids, mask, types, lc, ranking="learned")
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy(),
                "token_counts": token_counts(mask, 3, lc).numpy()}
        start, _, kept = session.run(None, feed)
        real = mask.bool().numpy()
        assert np.abs(start - ref.start_logits.numpy())[real].max() < 1e-4
        assert np.array_equal(kept, ref.kept.numpy())


def test_fit_scorer_command_makes_learned_the_models_ranking_in_eager_and_onnx(tiny_model_dir, data_dir, tmp_path):
    import shutil

    from quala.cli import main
    from quala.runtime import OnnxPredictor
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    import json
    raw = json.loads((d / "config.json").read_text()) | {"dtype": "float32"}  # a key quala does not model
    (d / "config.json").write_text(json.dumps(raw))
    assert main(["fit-scorer", "--model", str(d), "--train-file", str(data_dir / "train.json"), "--questions", "20",
                 "--heldout-fraction", "0.25"]) == 0
    model = QualaForQuestionAnswering.from_pretrained(d)
    assert model.config.ranking == "learned" and all(layer.scorer is not None for layer in model.layers)
    assert json.loads((d / "config.json").read_text())["dtype"] == "float32"  # only quala.ranking changed
    ids, mask, types = batch(4, 50, seed=5)
    lc = LengthConfig((0.8, 0.4, 0.2))
    with torch.no_grad():
        default = model(ids, mask, types, lc)
        learned = model(ids, mask, types, lc, ranking="learned")
        attention = model(ids, mask, types, lc, ranking="attention")
    assert torch.equal(default.start_logits, learned.start_logits)
    assert not torch.equal(default.start_logits, attention.start_logits)
    assert main(["export", "--model", str(d)]) == 0  # no --ranking: the model's own
    predictor = OnnxPredictor(d / "model.onnx", model.config)
    assert predictor.ranking == "learned"
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy(),
            "token_counts": token_counts(mask, 3, lc).numpy()}
    start = predictor.session.run(None, feed)[0]
    assert np.abs(start - learned.start_logits.numpy())[mask.bool().numpy()].max() < 1e-4


def test_fit_scorer_never_reads_the_held_out_articles(tiny_model_dir, data_dir):
    from quala.data import load_squad, split_articles
    model, _ = load(tiny_model_dir)
    picked = scorer.fitting_examples(model, 1000, str(data_dir / "train.json"), 0.25)
    train, heldout = split_articles(load_squad(data_dir / "train.json"), 0.25)
    assert heldout and picked
    assert {e.id for e in picked} == {e.id for e in train}  # every training question, no held-out one
    assert len(scorer.fitting_examples(model, 5, str(data_dir / "train.json"), 0.25)) == 5


def test_fit_scorer_on_sub_models_from_a_directory_without_scorers(tiny_model_dir, data_dir, tmp_path, capsys):
    import shutil

    from quala.cli import main
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    args = ["fit-scorer", "--model", str(d), "--train-file", str(data_dir / "train.json"), "--questions", "20",
            "--heldout-fraction", "0.25"]
    assert main(args + ["--length-configs", "0.8,0.5"]) == 2
    assert "has 2 values; the model has 3 layers" in capsys.readouterr().err
    assert main(args + ["--length-configs", "0.8,half,0.3"]) == 2
    assert "cannot read length config" in capsys.readouterr().err
    assert not (d / SCORER_FILE).exists()
    assert main(args + ["--length-configs", "0.8,0.5,0.3; 0.6,0.3,0.1"]) == 0
    assert "under 3 configuration(s)" in capsys.readouterr().err
    model = QualaForQuestionAnswering.from_pretrained(d)
    assert model.config.ranking == "learned"
    full_only = scorer.fit(model, make_fit_features(model, d, data_dir))
    assert not torch.allclose(full_only[-1].weight, model.layers[-1].scorer.weight, atol=1e-4)


def make_fit_features(model, d, data_dir):
    from quala.data import make_features
    from quala.tokenizer import load_tokenizer
    c = model.config
    return make_features(scorer.fitting_examples(model, 20, str(data_dir / "train.json"), 0.25), load_tokenizer(d),
                         c.max_seq_length, c.doc_stride, c.max_query_length)


def question_layer(block: slice, hidden: int = 384):
    """popularity_layer with a question-reading scorer whose weights are 1 on `block` of its inputs, 0 elsewhere."""
    layer = popularity_layer(hidden)
    layer.scorer = torch.nn.Linear(scorer_width("question", hidden), 1)
    with torch.no_grad():
        layer.scorer.weight.zero_()
        layer.scorer.weight[0, block] = 1.0
        layer.scorer.bias.zero_()
    return layer


def test_question_scorer_reads_the_attention_the_question_pays():
    """Weights only on the last input, log(attention from the question's slots): the tokens kept are exactly the
    ones the "question" ranking keeps, not the ones attention from every token prefers."""
    layer = question_layer(slice(-1, None))
    n, k = 24, 6
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, n, 384, generator=g) * 0.1
    x[0, :, 0] = torch.randperm(n, generator=g).float() / n
    x[0, 8:, 1] = 1.0  # the context's queries attend to the least popular tokens, the question's (0..7) to the most
    valid = torch.ones(1, n, dtype=torch.bool)
    queries = torch.zeros(1, n, dtype=torch.bool)
    queries[0, :8] = True
    with torch.no_grad():
        learned = layer(x, valid, torch.tensor([k]), "learned", queries)[2][0].tolist()
        question = layer(x, valid, torch.tensor([k]), "question", queries)[2][0].tolist()
        everyone = layer(x, valid, torch.tensor([k]), "attention", queries)[2][0].tolist()
    assert learned == question and learned != everyone
    popular = sorted(range(1, n), key=lambda j: -x[0, j, 0].item())[: k - 1]
    assert learned == [0] + popular


def test_question_scorer_matches_tokens_to_the_question_s_mean_state():
    """Weights 1 on the x * mean(question x) block: each token scores its dot product with the question's mean
    state (padding and the context excluded from the mean), and the best-matching tokens are kept."""
    layer = question_layer(slice(2 * 384, 3 * 384))
    n, k = 20, 5
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, n, 384, generator=g)
    valid = torch.ones(1, n, dtype=torch.bool)
    valid[0, -3:] = False
    queries = torch.zeros(1, n, dtype=torch.bool)
    queries[0, :5] = True
    x[0, -3:] = 100.0  # padding: must not move the question's mean
    with torch.no_grad():
        slots = layer(x, valid, torch.tensor([k]), "learned", queries)[2][0].tolist()
    match = x[0] @ x[0, :5].mean(0)
    best = sorted(range(1, n - 3), key=lambda j: -match[j].item())[: k - 1]
    assert slots == [0] + best


def test_fit_scorer_inputs_option(tiny_model_dir, data_dir, tmp_path):
    import shutil

    from quala.cli import main
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    args = ["fit-scorer", "--model", str(d), "--train-file", str(data_dir / "train.json"), "--questions", "20",
            "--heldout-fraction", "0.25"]
    h = QualaForQuestionAnswering.from_pretrained(d).config.hidden_size
    for inputs in ("states", "question", "lexical", "states"):
        assert main(args + ["--inputs", inputs]) == 0
        model = QualaForQuestionAnswering.from_pretrained(d)
        assert {layer.scorer.in_features for layer in model.layers} == {scorer_width(inputs, h)}
        assert model.reads_lexicon == (inputs == "lexical")


def test_lexical_prior_marks_the_question_s_rarer_words_in_the_context_and_spreads_them():
    """Question [CLS] 7 8 [SEP] (ids 101, 7, 8, 102), context 20 tokens with word piece 8 at position 14 and 7
    (idf 0 here: too common) at 6, [SEP] at the end, then padding that repeats 8."""
    idf = torch.zeros(200)
    idf[8], idf[9] = 5.0, 3.0
    ids = torch.tensor([[101, 7, 8, 102] + [9] * 20 + [102, 8, 8]])
    ids[0, 4 + 10], ids[0, 4 + 2] = 8, 7
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, -2:] = False
    queries = torch.zeros_like(valid)
    queries[0, :4] = True
    prior = lexical_prior(ids, valid, queries, idf, 4)[0]
    assert prior.shape == (27, LEXICAL_FEATURES) and MATCH_FEATURES == 2 + len(LEXICAL_SPREADS)
    assert torch.equal(lexical_prior(ids, valid, queries, idf, 4, MATCH_FEATURES)[0], prior[:, :MATCH_FEATURES])
    assert prior[:, 0].tolist() == [1.0] * 4 + [0.0] * 23  # the question's slots
    match = prior[:, 1]
    assert match[14] == 5.0 and match.sum() == 5.0  # only the rare question word, only in the context: 9 is
    # not the question's, 7 has idf 0, the question's own 8 and the padded 8s do not count, nor [SEP]
    for f in range(2, MATCH_FEATURES):
        spread = prior[4:25, f]
        assert spread.argmax() == 10 and all(spread[i] >= spread[i + 1] for i in range(10, 20))
        assert all(spread[i] <= spread[i + 1] for i in range(0, 10))
    no_match = lexical_prior(ids, valid, torch.zeros_like(valid), idf, 4, MATCH_FEATURES)[0]
    assert no_match[:, 1].sum() == 0 and torch.allclose(no_match[:, 2:], torch.full_like(no_match[:, 2:], np.log(0.01)))


def coverage_by_hand(ids: list, context: list, idf: dict, question: list, spread: float) -> list:
    """Per position: the idf-weighted share of the question's distinct words found near it, each capped at 1."""
    words = {t for t in question if idf.get(t, 0) > 0}
    total = sum(idf[t] for t in words)
    return [sum(idf[t] * min(1.0, sum(np.exp(-abs(i - j) / spread) for j in context if ids[j] == t))
                for t in words) / total for i in range(len(ids))]


def test_question_coverage_prefers_the_passage_holding_most_of_the_question():
    """Question [CLS] 7 8 9 9 [SEP]; passage A repeats the question's rarest word 9 four times, passage B holds 7 8
    side by side (a bigram of the question) and 9; 8 7 reversed elsewhere is no bigram. The match values prefer
    A, the coverage values B, as a by-hand count says; a question cut to its first slots covers only those."""
    idf = torch.zeros(200)
    idf[5], idf[7], idf[8], idf[9] = 0.5, 2.0, 3.0, 4.0
    question = [101, 7, 8, 9, 9, 102]
    ids = question + [5] * 150 + [102]
    for at, word in [(14, 9), (16, 9), (18, 9), (20, 9), (76, 7), (77, 8), (80, 9), (140, 8), (141, 7)]:
        ids[at] = word
    n = len(ids)
    ids = torch.tensor([ids])
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, -1] = False  # [SEP] counts as padding here: never context
    queries = torch.zeros_like(valid)
    queries[0, :6] = True
    prior = lexical_prior(ids, valid, queries, idf, 8)[0]
    context = list(range(6, n - 1))
    weights = {t: float(idf[t]) for t in range(200)}
    for k, spread in enumerate(COVERAGE_SPREADS):
        covered = prior[:, MATCH_FEATURES + 2 * k]
        expected = coverage_by_hand(ids[0].tolist(), context, weights, question, spread)
        assert np.allclose(covered.numpy(), expected, atol=1e-5)
        best = int(covered.argmax())
        assert 76 <= best <= 80 and prior[best, MATCH_FEATURES + 2 * k + 1] == pytest.approx(1.0)
        assert covered[78] > covered[17] + 0.2
    assert prior[17, 2] > prior[78, 2]  # the narrowest match spread prefers the repeated word
    bigram = prior[:, -1]
    assert bigram[76] == bigram.max() and bigram[76] > bigram[140] + 1.0  # 7 8 in order; 8 7 is not
    cut = lexical_prior(ids, valid, queries, idf, 3)[0]  # [CLS] 7 8: 9 is beyond the question's slots
    expected = coverage_by_hand(ids[0].tolist(), context, weights, question[:3], COVERAGE_SPREADS[0])
    assert np.allclose(cut[:, MATCH_FEATURES].numpy(), expected, atol=1e-5) and cut[17, MATCH_FEATURES] < 0.01


def test_lexical_scorer_keeps_the_tokens_nearest_the_question_s_words():
    """A lexical scorer weighted only on the narrowest spread keeps [CLS], then the context tokens closest to the one
    holding the question's word, whatever attention prefers; reversed weights keep the farthest (the test would see
    a ranking that keeps the wrong tokens)."""
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    h = model.config.hidden_size
    width = scorer_width("lexical", h)
    for sign in (1.0, -1.0):
        scorers = [torch.nn.Linear(width, 1) for _ in model.layers]
        with torch.no_grad():
            for lin in scorers:
                lin.weight.zero_()
                lin.bias.zero_()
                prior = width - LEXICAL_FEATURES  # where lexical_prior's values start
                lin.weight[0, prior + 2] = sign  # log(0.01 + match spread over the narrowest distance)
                lin.weight[0, prior] = 100.0  # the question's slots first
        lexicon = torch.zeros(model.config.vocab_size)
        lexicon[50] = 4.0
        attach_scorers(model, scorers, lexicon)
        ids = torch.tensor([[101, 50, 102] + list(range(60, 140)) + [102]])
        ids[0, 43] = 50
        mask, types = torch.ones_like(ids), torch.tensor([[0] * 3 + [1] * 81])
        kept_slots = []
        hook = model.layers[0].register_forward_hook(lambda m, i, o: kept_slots.append(o[2][0].tolist()))
        with torch.no_grad():
            model(ids, mask, types, token_counts=torch.tensor([[12, 12, 12]]), ranking="learned")
        hook.remove()
        kept = kept_slots[0]
        assert kept[0] == 0 and sorted(kept[1:3]) == [1, 2]  # [CLS] and the question
        context = list(range(39, 48))
        assert (sorted(kept[3:]) == sorted(context)) == (sign > 0)
        if sign < 0:
            assert 43 not in kept


def test_release_7_lexical_scorers_read_only_the_match_values(tiny_model_dir, tmp_path):
    """Scorers fitted before the coverage values existed (MATCH_FEATURES prior values) still load and rank as
    fitted: the same as new-width scorers whose extra weights are 0, in eager PyTorch and in the exported graph."""
    model, _ = load(tiny_model_dir)
    attach_random(model, seed=3, inputs="lexical")
    h = model.config.hidden_size
    short = [torch.nn.Linear(scorer_width("question", h) + MATCH_FEATURES, 1) for _ in model.layers]
    with torch.no_grad():
        for old, new in zip(short, (layer.scorer for layer in model.layers)):
            new.weight[:, old.in_features:] = 0.0
            old.weight.copy_(new.weight[:, :old.in_features])
            old.bias.copy_(new.bias)
    legacy = QualaForQuestionAnswering.from_pretrained(tiny_model_dir)
    attach_scorers(legacy, short, model.lexicon)
    legacy.save_pretrained(tmp_path / "m")
    legacy = QualaForQuestionAnswering.from_pretrained(tmp_path / "m")
    assert legacy.reads_lexicon and legacy.prior_features == MATCH_FEATURES < model.prior_features
    ids, mask, types = batch(2, 60, seed=4)
    ids[:, 30:33] = ids[:, 2:5]
    lc = LengthConfig((0.7, 0.4, 0.2))
    with torch.no_grad():
        a = model(ids, mask, types, lc, ranking="learned")
        b = legacy(ids, mask, types, lc, ranking="learned")
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5) and torch.equal(a.kept, b.kept)
    session = ort.InferenceSession(str(export_onnx(legacy, tmp_path / "m.onnx", ranking="learned")),
                                   providers=["CPUExecutionProvider"])
    start = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                               "token_type_ids": types.numpy(), "token_counts": token_counts(mask, 3, lc).numpy()})[0]
    assert np.abs(start - b.start_logits.numpy())[mask.bool().numpy()].max() < 1e-4


def test_lexical_scorers_need_a_lexicon_of_the_vocabulary_s_size(tiny_model_dir):
    model, _ = load(tiny_model_dir)
    with pytest.raises(QualaError, match="need a lexicon"):
        attach_scorers(model, random_scorers(model, inputs="lexical"))
    with pytest.raises(QualaError, match="lexicon of shape"):
        attach_scorers(model, random_scorers(model, inputs="lexical"), torch.ones(7))


def test_fit_lexicon_counts_contexts_and_zeroes_the_special_tokens(tokenizer):
    from quala.data import Example
    examples = [Example("a", "q", "the cat sat", [], []), Example("b", "q", "the dog ran", [], []),
                Example("c", "q", "the cat sat", [], [])]  # a repeated context counts once
    idf = scorer.fit_lexicon(examples, tokenizer, 30522)
    vocab = tokenizer.get_vocab()
    assert idf[vocab["the"]] == pytest.approx(np.log(3 / 3)) and idf[vocab["cat"]] == pytest.approx(np.log(3 / 2))
    assert idf[vocab["zebra"]] == pytest.approx(np.log(3)) and idf[vocab["[CLS]"]] == 0 and idf[vocab["[SEP]"]] == 0


def test_answer_targets_of_a_padded_batch_are_each_features_own(tiny_model_dir, dev_examples, tokenizer):
    from quala.data import collate, make_features
    model, _ = load(tiny_model_dir)
    features = make_features(dev_examples, tokenizer, 128, 48)[:6]
    b = collate(features)
    assert len({len(f) for f in features}) > 1  # rows of different lengths: padding in the batch
    ids, mask, types = (torch.as_tensor(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        out = model(ids, mask, types)
    batch = scorer.answer_targets(out.start_logits, out.end_logits, mask.bool(), torch.as_tensor(b["context"]))
    for row, f in enumerate(features):
        n = len(f)
        alone = scorer.targets(out.start_logits[row, :n].numpy(), out.end_logits[row, :n].numpy(), f.offsets[:, 0] >= 0)
        assert np.allclose(batch[row, :n].numpy(), alone, atol=1e-5)


def test_full_length_scores_are_the_scorers_on_what_they_read(tiny_model_dir, dev_examples, tokenizer):
    """return_scores: each layer's scorer output per token, the same values layer_inputs' rows give the scorers
    (what quala.train's scorer loss fits); only at full length."""
    from quala.data import collate, make_features
    model, _ = load(tiny_model_dir)
    attach_random(model, seed=2, inputs="lexical")
    model.config.ranking = "learned"
    b = collate(make_features(dev_examples, tokenizer, 128, 48)[:4])
    ids, mask, types = (torch.as_tensor(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        out = model(ids, mask, types, return_scores=True)
        read = scorer.layer_inputs(model, ids, mask, types)
        for layer, scores, (inputs, valid, _) in zip(model.layers, out.scores, read):
            assert torch.allclose(scores[valid], layer.scorer(inputs).squeeze(-1)[valid], atol=1e-5)
    assert model(ids, mask, types).scores is None
    with pytest.raises(QualaError, match="return_scores: at full length only"):
        model(ids, mask, types, LengthConfig((1.0, 0.5, 0.5)), return_scores=True)
