import json

import numpy as np
import pytest

from quala.config import QualaError
from quala.data import Example, answer_tokens, collate, length_grouped_batches, load_squad, make_features, \
    postprocess


def write(tmp_path, obj, name="d.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def squad(context="Paris is the capital of France.", question="What is the capital of France?", answers=None):
    answers = [{"text": "Paris", "answer_start": 0}] if answers is None else answers
    return {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": question, "answers": answers}]}]}]}


def test_real_slice_loads(dev_examples):
    assert len(dev_examples) == 18 and all(e.answers for e in dev_examples)
    for e in dev_examples:
        for text, start in zip(e.answers, e.answer_starts):
            assert e.context[start:start + len(text)] == text


def test_offset_pointing_elsewhere_is_moved_to_an_equal_copy(tmp_path):
    ex = load_squad(write(tmp_path, squad(context="Paris. Paris is big.", answers=[
        {"text": "Paris is", "answer_start": 3}])))
    assert ex[0].answer_starts == [7]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"{\"data\": [", "malformed JSON at line 1"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (squad(context=""), "paragraph 0 (question q1): missing or empty 'context'"),
    (squad(question="  "), "question q1: missing or empty 'question'"),
    (squad(answers=[{"text": "Berlin", "answer_start": 0}]), "question q1: answer 'Berlin' is not in the context"),
    ({"version": "1.1"}, "not a SQuAD file"),
])
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if isinstance(content, dict):
        path.write_text(json.dumps(content))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(QualaError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_squad(path)
    assert str(path) in str(e.value)


def test_long_context_is_split_into_windows_not_truncated(tokenizer):
    filler = " ".join(f"word{i}" for i in range(400))
    context = filler + " The treasure is hidden in Zanzibar."
    ex = Example("q", "Where is the treasure hidden?", context, ["Zanzibar"], [context.index("Zanzibar")])
    feats = make_features([ex], tokenizer, max_seq_length=128, doc_stride=32, training=True)
    assert len(feats) > 5 and all(len(f) <= 128 for f in feats)
    last = feats[-1]
    assert last.start_position > 0
    s, e = last.offsets[last.start_position, 0], last.offsets[last.end_position, 1]
    assert context[s:e] == "Zanzibar"
    assert all(f.start_position == 0 for f in feats[:-2])  # earlier windows do not hold the answer
    covered = set()
    for f in feats:
        covered |= {int(o) for o in f.offsets[f.offsets[:, 0] >= 0, 0]}
    assert max(covered) == len(context) - 1  # the final "." is in a window: nothing cut off


def test_question_is_cut_to_max_query_length(tokenizer):
    ex = Example("q", " ".join(["why"] * 100), "Because.", [], [])
    f = make_features([ex], tokenizer, max_query_length=10)[0]
    assert int((f.token_type_ids == 0).sum()) == 10 + 2  # [CLS] question [SEP]


def test_answer_tokens_outside_window_is_cls():
    ex = Example("q", "?", "abc def", ["def"], [4])
    offsets = np.array([[-1, -1], [0, 3], [-1, -1]])
    assert answer_tokens(ex, offsets) == (0, 0)


def test_postprocess_picks_best_span_across_windows(tokenizer):
    context = "Alpha beta gamma delta."
    ex = Example("q", "Which?", context, ["gamma"], [11])
    feats = make_features([ex], tokenizer) * 2
    n = len(feats[0])
    tok = int(np.nonzero(feats[0].offsets[:, 0] == 11)[0][0])
    start, end = np.zeros(n), np.zeros(n)
    start[tok], end[tok] = 5.0, 5.0
    weaker_s, weaker_e = np.zeros(n), np.zeros(n)
    weaker_s[tok + 1], weaker_e[tok + 1] = 3.0, 3.0
    answers = postprocess([ex], feats, [weaker_s, start], [weaker_e, end])
    assert answers[0].text == "gamma" and 0 < answers[0].score <= 1
    # a span ending before it starts, or outside the context, is never chosen
    bad_s, bad_e = np.zeros(n), np.zeros(n)
    bad_s[0], bad_e[0] = 100.0, 100.0
    assert postprocess([ex], feats[:1], [bad_s], [bad_e])[0].text != ""


def test_collate_pads_dynamically_and_batches_group_by_length(tokenizer, dev_examples):
    feats = make_features(dev_examples, tokenizer, max_seq_length=128, doc_stride=48)
    b = collate(feats[:4])
    assert b["input_ids"].shape[1] == max(len(f) for f in feats[:4])
    lens = [len(f) for f in feats]
    batches = length_grouped_batches(lens, 4)
    assert sorted(i for b in batches for i in b) == list(range(len(feats)))
    assert all(lens[b[0]] >= lens[b[-1]] for b in batches)


def test_answer_fields_are_checked_and_an_answer_found_at_the_very_start_is_kept(tmp_path):
    with pytest.raises(QualaError, match="needs 'text' and 'answer_start'"):
        load_squad(write(tmp_path, squad(answers=[{"text": "Paris", "answer_start": "0"}])))
    ex = load_squad(write(tmp_path, squad(context="Paris is big.", answers=[{"text": "Paris", "answer_start": 5}])))
    assert ex[0].answer_starts == [0]  # the offset was wrong; the text's only copy starts at character 0


def test_limit_reads_exactly_that_many_questions(tmp_path):
    obj = squad()
    obj["data"][0]["paragraphs"][0]["qas"] += [dict(obj["data"][0]["paragraphs"][0]["qas"][0], id=f"q{i}")
                                               for i in (2, 3)]
    path = write(tmp_path, obj)
    assert [e.id for e in load_squad(path, limit=2)] == ["q1", "q2"] and len(load_squad(path)) == 3


def test_a_zero_heldout_fraction_holds_out_nothing_and_a_tiny_one_at_least_an_article(dev_examples):
    from quala.data import split_articles
    assert split_articles(dev_examples, 0.0) == (dev_examples, [])
    train, heldout = split_articles(dev_examples, 1e-6)
    assert len({e.title for e in heldout}) == 1 and len(train) + len(heldout) == len(dev_examples)


def test_windows_default_to_384_tokens_and_questions_to_64(tokenizer):
    long_question = " ".join(["where"] * 100) + "?"
    ex = Example("q", long_question, " ".join(["river"] * 600), ["river"], [0])
    features = make_features([ex], tokenizer)
    assert max(len(f) for f in features) == 384
    assert int((features[0].token_type_ids == 0).sum()) == 64 + 2  # [CLS], 64 question tokens, [SEP]


def test_an_answer_on_the_first_or_last_context_token_of_a_window_is_inside_it():
    offsets = np.array([[-1, -1], [0, 5], [6, 8], [-1, -1]])
    assert answer_tokens(Example("q", "?", "Paris is", ["Paris"], [0]), offsets) == (1, 1)
    assert answer_tokens(Example("q", "?", "Paris is", ["is"], [6]), offsets) == (2, 2)


def test_no_valid_span_gives_the_empty_answer_with_zero_score_and_logit(tokenizer):
    from quala.data import Answer
    ex = Example("q", "Which?", "Alpha beta gamma delta.", ["gamma"], [11])
    feats = make_features([ex], tokenizer)
    n = len(feats[0])
    start, end = np.zeros(n), np.zeros(n)
    assert postprocess([ex], feats, [start], [end], n_best=1)[0] == Answer("", 0.0, 0, 0, 0.0)  # [CLS] only


def test_spans_longer_than_max_answer_length_are_never_chosen(tokenizer):
    ex = Example("q", "Which?", "one two three four five six seven eight nine ten", ["two"], [4])
    feats = make_features([ex], tokenizer)
    context = np.nonzero(feats[0].offsets[:, 0] >= 0)[0]
    n = len(feats[0])
    start, end = np.zeros(n), np.zeros(n)
    start[context[1]], end[context[6]] = 9.0, 9.0  # "two ... seven": 6 tokens
    assert postprocess([ex], feats, [start], [end], max_answer_length=3)[0].text != "two three four five six seven"
    assert postprocess([ex], feats, [start], [end], max_answer_length=6)[0].text == "two three four five six seven"


def test_scores_are_the_softmax_over_the_20_best_spans(tokenizer, dev_examples):
    from quala.data import ranked_answers
    feats = make_features(dev_examples[:1], tokenizer, 128, 48)[:1]
    rng = np.random.default_rng(0)
    start, end = [rng.normal(size=len(feats[0]))], [rng.normal(size=len(feats[0]))]
    score = postprocess(dev_examples[:1], feats, start, end)[0].score
    assert score == ranked_answers(dev_examples[:1], feats, start, end, n_best=20)[0][0].score
    assert score != ranked_answers(dev_examples[:1], feats, start, end, n_best=19)[0][0].score
