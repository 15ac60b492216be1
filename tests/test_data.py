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
