"""quala.load() and QuestionAnswerer: the one call users make, on the shipped model and on tiny ones."""
import shutil

import pytest

import quala
from quala.config import QualaError
from quala.data import load_squad
from quala.longdoc import best_passages, split_passages

CONTEXT = "Hamlet is a tragedy written by William Shakespeare around 1600. It is set in Denmark."


@pytest.fixture(scope="module")
def qa():
    return quala.load()  # the shipped INT8 release, no torch needed


def test_one_call_answers_like_the_hugging_face_pipeline(qa):
    a = qa("Who wrote Hamlet?", CONTEXT, budget="balanced")
    assert a["answer"] == "William Shakespeare" and CONTEXT[a["start"]:a["end"]] == a["answer"]
    assert 0 < a["score"] <= 1 and set(a) == {"answer", "score", "start", "end"}
    top = qa("Where is it set?", CONTEXT, top_k=3)
    assert isinstance(top, list) and len(top) == 3 and top[0]["answer"] == "Denmark"
    assert [x["score"] for x in top] == sorted((x["score"] for x in top), reverse=True)
    both = qa(["Who wrote Hamlet?", "Where is it set?"], CONTEXT)
    assert [x["answer"] for x in both] == ["William Shakespeare", "Denmark"]


def test_dicts_numpy_counts_and_answer_length_as_the_hugging_face_pipeline_takes_them(qa):
    import numpy as np
    one = qa("Who wrote Hamlet?", CONTEXT)
    assert qa({"question": "Who wrote Hamlet?", "context": CONTEXT}) == one
    pairs = [{"question": "Who wrote Hamlet?", "context": CONTEXT}, {"question": "Where is it set?", "context": CONTEXT}]
    assert qa(pairs) == qa(["Who wrote Hamlet?", "Where is it set?"], CONTEXT)
    assert qa("Where is it set?", CONTEXT, top_k=np.int64(2)) == qa("Where is it set?", CONTEXT, top_k=2)
    short = qa("Who wrote Hamlet?", CONTEXT, max_answer_len=1, top_k=5)
    assert all(len(qa.tokenizer.base.encode(a["answer"], add_special_tokens=False).ids) == 1 for a in short)
    assert len(qa.tokenizer.base.encode(one["answer"], add_special_tokens=False).ids) > 1


def test_one_question_several_contexts_returns_the_best_across_them(qa):
    contexts = ["Paris is the capital of France.", CONTEXT, "The Nile flows through Egypt."]
    a = qa("Who wrote Hamlet?", contexts)
    assert a["answer"] == "William Shakespeare" and a["context"] == 1
    assert contexts[1][a["start"]:a["end"]] == a["answer"]


def test_a_score_does_not_depend_on_how_many_answers_are_asked_for(qa, data_dir):
    """Across contexts and across a long context's passages, scores are a softmax over every candidate, as within
    one context: the best answer's score is the same at top_k 1, 2 and 5."""
    unsure = ["Paris is the capital of France.", "The Nile flows through Egypt."]
    context, question, _ = long_document(data_dir)
    for call in (lambda k: qa("What is the boiling point of mercury?", unsure, top_k=k),
                 lambda k: qa(question, context, passages=3, top_k=k)):
        best = [call(1)["score"]] + [call(k)[0]["score"] for k in (2, 5)]
        assert best == pytest.approx([best[0]] * 3) and best[0] < 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "top_k must be a whole number >= 1"),
    ({"batch_size": -1}, "batch_size must be a whole number >= 1"),
    ({"passages": 0}, "passages must be a whole number >= 1"),
    ({"max_answer_len": 0}, "max_answer_len must be a whole number >= 1"),
    ({"top_k": 2.0}, "top_k must be a whole number >= 1"),
    ({"budget": "20 parsecs"}, "parsecs"),
    ({"budget": "balanced", "length_config": "1,1,1,1,1,1"}, "not both"),
    ({"length_config": "1,1,1"}, "has 3 values; the model has 6 layers"),
])
def test_bad_options_name_the_problem(qa, kwargs, message):
    with pytest.raises(QualaError, match=message):
        qa("Who wrote Hamlet?", CONTEXT, **kwargs)


def test_bad_texts_name_the_problem(qa):
    with pytest.raises(QualaError, match=r"context\[1\] is empty"):
        qa("Who?", [CONTEXT, "  "])
    with pytest.raises(QualaError, match="question: give a context, or a dict with 'question' and 'context'"):
        qa("Who wrote Hamlet?")
    with pytest.raises(QualaError, match=r"question\[1\]: give a context"):
        qa([{"question": "Who?", "context": CONTEXT}, {"question": "Who?"}])
    with pytest.raises(QualaError, match="2 questions and 3 contexts"):
        qa(["a?", "b?"], [CONTEXT, CONTEXT, CONTEXT])
    not_utf8 = b"Who wrote \xff?".decode("utf-8", "surrogateescape")  # what Python makes of such bytes
    with pytest.raises(QualaError, match=r"question\[1\] is not valid UTF-8 text \(an unpaired surrogate"):
        qa(["Who?", not_utf8], CONTEXT)


def test_float_and_onnx_only_directories_load(tiny_model_dir, onnx_dir, tmp_path):
    assert quala.load(tiny_model_dir, runtime="torch")("Who?", CONTEXT)["answer"] in CONTEXT
    only = tmp_path / "onnx-only"
    shutil.copytree(onnx_dir, only)
    for f in only.glob("*.safetensors"):
        f.unlink()
    assert quala.load(only)("Who?", CONTEXT)["answer"] in CONTEXT
    with pytest.raises(QualaError, match="budget 'balanced'.*has no length_configs.json"):
        quala.load(only)("Who?", CONTEXT, budget="balanced")


def long_document(data_dir) -> tuple[str, str, str]:
    """Every dev paragraph of the slice joined, the question of one in the middle, and its answers."""
    examples = load_squad(data_dir / "dev.json")
    paragraphs = list(dict.fromkeys(e.context for e in examples))
    target = next(e for e in examples if e.context == paragraphs[len(paragraphs) // 2])
    return "\n\n".join(paragraphs * 3), target.question, target.answers


def test_passages_cover_the_context_at_word_boundaries(qa, data_dir):
    context, _, _ = long_document(data_dir)
    spans = split_passages(context, qa.tokenizer, 160, 32)
    assert spans[0][0] == 0 and spans[-1][1] == len(context.rstrip())
    for (s, e), (s2, _) in zip(spans, spans[1:]):
        assert s < s2 < e  # neighbours overlap and move forward
        assert not (context[s2 - 1].isalnum() and context[s2].isalnum())  # a passage starts at a word
    tokens = [len(qa.tokenizer.base.encode(context[s:e], add_special_tokens=False)) for s, e in spans]
    assert max(tokens) <= 160 and min(tokens[:-1]) > 100


def test_bm25_reads_the_passages_that_match_the_question(qa, data_dir):
    context, question, answers = long_document(data_dir)
    short = "Short text about Hamlet."
    assert best_passages("Hamlet?", short, qa.tokenizer, 3) == [(0, len(short), 0.0)]
    spans = best_passages(question, context, qa.tokenizer, 2)
    assert len(spans) == 2 and spans == sorted(spans) and all(prior > 0 for _, _, prior in spans)
    assert any(a in context[s:e] for a in answers for s, e, _ in spans)


def test_long_context_answers_point_into_the_whole_context(qa, data_dir):
    context, question, answers = long_document(data_dir)
    read = qa(question, context, budget="balanced", passages=3, top_k=3)
    whole = qa(question, context, budget="balanced", passages=None)
    for a in read + [whole]:
        assert context[a["start"]:a["end"]] == a["answer"]
    assert read[0]["answer"] in answers or whole["answer"] in answers


def test_contexts_up_to_whole_tokens_are_read_whole(qa, data_dir):
    """Every SQuAD paragraph (at most 789 tokens in dev) is read whole, as evaluation reads it, whatever `passages`."""
    from quala.longdoc import WHOLE_TOKENS
    examples = load_squad(data_dir / "dev.json")
    context = "\n\n".join(dict.fromkeys(e.context for e in examples))
    n = len(qa.tokenizer.base.encode(context, add_special_tokens=False).ids)
    assert 160 * 2 < n <= WHOLE_TOKENS
    assert best_passages(examples[0].question, context, qa.tokenizer, 2) == [(0, len(context), 0.0)]
