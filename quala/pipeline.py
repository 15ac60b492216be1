"""One noun for a loaded model: `qa = quala.load()`, then `qa(question, context, budget="balanced")`.

A QuestionAnswerer holds the inference engine, the tokenizer, the model's settings and its searched front; the CLI,
the server, batch prediction and the evaluation loop all answer through it. Nothing here imports torch unless the
torch runtime is asked for.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

from quala.budget import Front, FrontPoint, front_path, read_front, select
from quala.config import LengthConfig, ModelConfig, QualaError, default_model_dir
from quala.data import MAX_ANSWER_TOKENS, N_BEST, Answer, Example, make_features, ranked_answers, unencodable
from quala.evaluate import EvalResult, evaluate, run_features
from quala.files import read_json, sha256
from quala.longdoc import PASSAGES

CHECKSUMS = "SHA256SUMS.json"


class QuestionAnswerer:
    """Answers questions from contexts with one model at any budget of its front.

    Call it like the Hugging Face question-answering pipeline:
        qa("Who wrote Hamlet?", "Hamlet is a tragedy by William Shakespeare.")      -> {"answer", "score", ...}
        qa(question, context, top_k=3)                                                -> [3 answers, best first]
        qa([q1, q2], [c1, c2])                                                        -> [answer of each pair]
        qa(question, [c1, c2, c3])                                                    -> the best across contexts
    `start`/`end` are character offsets (Python code points) into the context; with several contexts for one
    question each answer also names its `context` index.
    """

    def __init__(self, model_dir: Path, predictor, tokenizer, config: ModelConfig, front: Front | None):
        self.model_dir = model_dir
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.config = config
        self.front = front

    def __repr__(self) -> str:
        engine = getattr(self.predictor, "path", None)
        engine = Path(engine).name if engine else type(self.predictor).__name__
        return f"QuestionAnswerer({self.model_dir}, engine={engine}, front={len(self.front.configs) if self.front else 0} points)"

    def resolve(self, budget: str | None = None, length_config: str | LengthConfig | None = None
                ) -> tuple[LengthConfig | None, FrontPoint | None]:
        """The length configuration to run: from a budget (a point of the front), an explicit configuration, or the
        model's default (its config.json setting, else full length). Checked against the model."""
        if budget is not None and length_config is not None:
            raise QualaError("give a budget or a length configuration, not both")
        if budget is not None:
            if not isinstance(budget, str):
                raise QualaError(f"budget must be a string like 'balanced', '3x' or '20ms', got {budget!r}")
            if self.front is None:
                raise QualaError(f"budget {budget!r}: {self.model_dir} has no {front_path(self.model_dir).name}; "
                                 f"run `quala search --model {self.model_dir}` first, or give a length configuration")
            point = select(self.front, budget, str(front_path(self.model_dir)))
            return point.length_config, point
        if length_config is None:
            lc = LengthConfig.from_json(self.config.length_config) if self.config.length_config else None
        else:
            lc = LengthConfig.parse(length_config)
        if lc is not None:
            lc.check(self.config.num_hidden_layers, self.config.max_seq_length)
        return lc, None

    def features(self, examples: list[Example], training: bool = False) -> list:
        c = self.config
        return make_features(examples, self.tokenizer, c.max_seq_length, c.doc_stride, c.max_query_length, training)

    def answer_pairs(self, pairs: list[tuple[str, str]], length_config: LengthConfig | None, top_k: int = 1,
                     batch_size: int = 32, progress: bool = False, passages: int | None = PASSAGES,
                     max_answer_len: int = MAX_ANSWER_TOKENS) -> list[list[Answer]]:
        """(question, context) pairs -> the top_k answers of each, best first, offsets into the given context.

        A context of more than quala.longdoc.WHOLE_TOKENS tokens is read only in the `passages` passages BM25
        ranks best for the question, answers ranked across them by span logit plus a retrieval prior
        (quala.longdoc); shorter contexts, or any with passages None, are read whole, every window."""
        reads = [context_reads(q, c, self.tokenizer, passages) for q, c in pairs]
        examples = [e for (q, c), r in zip(pairs, reads) for e in read_examples(q, c, r)]
        features = self.features(examples)
        starts, ends, _ = run_features(self.predictor, features, length_config, batch_size, progress)
        ranked, out = ranked_answers(examples, features, starts, ends, max_answer_length=max_answer_len), []
        for r in reads:
            out.append(answers_of_reads(r, ranked[:len(r)], top_k))
            ranked = ranked[len(r):]
        return out

    def evaluate(self, examples: list[Example], length_config: LengthConfig | None = None, batch_size: int = 32,
                 progress: bool = True) -> EvalResult:
        """EM/F1 on SQuAD examples (official v1.1 rules) at one configuration."""
        return evaluate(self.predictor, self.tokenizer, examples, length_config, batch_size, features=self.features(
            examples), progress=progress)

    def __call__(self, question: str | list[str] | dict | list[dict], context: str | list[str] | None = None,
                 budget: str | None = None, top_k: int = 1, length_config: str | LengthConfig | None = None,
                 batch_size: int = 32, passages: int | None = PASSAGES, max_answer_len: int = MAX_ANSWER_TOKENS):
        """question may also be a dict {"question": ..., "context": ...} or a list of them, without `context`, as
        the Hugging Face pipeline takes. passages: a context of more than quala.longdoc.WHOLE_TOKENS tokens is read
        only in its `passages` best passages for the question (BM25, quala.longdoc); None reads every window of
        every context. max_answer_len: the longest answer in tokens."""
        if context is None:
            question, context = unpack_pairs(question)
        top_k, batch_size, max_answer_len = (whole_number(name, value) for name, value in (
            ("top_k", top_k), ("batch_size", batch_size), ("max_answer_len", max_answer_len)))
        passages = None if passages is None else whole_number("passages", passages)
        lc, _ = self.resolve(budget, length_config)
        questions, contexts = as_texts(question, "question"), as_texts(context, "context")
        if isinstance(question, str) and not isinstance(context, str):  # one question, several contexts
            # every context's candidates, so that a score does not depend on top_k
            ranked = self.answer_pairs([(question, c) for c in contexts], lc, max(top_k, N_BEST), batch_size,
                                       passages=passages, max_answer_len=max_answer_len)
            return shape(merge_contexts(ranked, top_k), top_k)
        if isinstance(context, str):
            contexts = contexts * len(questions)
        elif isinstance(question, str):
            questions = questions * len(contexts)
        if len(questions) != len(contexts):
            raise QualaError(f"{len(questions)} questions and {len(contexts)} contexts: give one context, or one "
                             f"per question")
        results = [shape([answer_dict(a) for a in ranked], top_k)
                   for ranked in self.answer_pairs(list(zip(questions, contexts)), lc, top_k, batch_size,
                                                   passages=passages, max_answer_len=max_answer_len)]
        return results[0] if isinstance(question, str) and isinstance(context, str) else results


def context_reads(question: str, context: str, tokenizer, passages: int | None) -> list[tuple[int, int, float]]:
    """(start, end, logit prior) of each part of the context the model reads: the whole context, or for a long
    one its best passages for the question (quala.longdoc)."""
    from quala.longdoc import best_passages
    return [(0, len(context), 0.0)] if passages is None else best_passages(question, context, tokenizer, passages)


def read_examples(question: str, context: str, reads: list[tuple[int, int, float]]) -> list[Example]:
    return [Example(str(j), question, context[s:e]) for j, (s, e, _) in enumerate(reads)]


def answers_of_reads(reads: list[tuple[int, int, float]], ranked: list[list[Answer]], top_k: int) -> list[Answer]:
    """The top_k answers of one context from the ranked answers of each of its reads: offsets moved into the whole
    context, span logits plus the read's prior, one ranking across reads."""
    moved = [[Answer(a.text, a.score, a.start + s, a.end + s, a.logit + prior) for a in answers]
             for (s, _, prior), answers in zip(reads, ranked)]
    return moved[0][:top_k] if len(moved) == 1 else merge_answers(moved, top_k)


def whole_number(name: str, value) -> int:
    """A count given to a call: a whole number >= 1 (numpy integers included), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise QualaError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def unpack_pairs(value) -> tuple[str | list[str], str | list[str]]:
    """{"question", "context"} -> (question, context); a list of such dicts -> (questions, contexts)."""
    def pair(d, where: str) -> tuple:
        if not isinstance(d, dict) or not {"question", "context"} <= set(d):
            raise QualaError(f"{where}: give a context, or a dict with 'question' and 'context' (or a list of them)")
        return d["question"], d["context"]
    if isinstance(value, (list, tuple)) and value:
        questions, contexts = zip(*(pair(d, f"question[{i}]") for i, d in enumerate(value)))
        return list(questions), list(contexts)
    return pair(value, "question")


def as_texts(value: str | list[str], name: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise QualaError(f"{name} must be a string or a non-empty list of strings, got {type(value).__name__}")
    for i, v in enumerate(values):
        where = name if isinstance(value, str) else f"{name}[{i}]"
        if not isinstance(v, str) or not v.strip():
            raise QualaError(f"{where} is empty or not a string")
        if problem := unencodable(v):
            raise QualaError(f"{where} {problem}")
    return list(values)


def answer_dict(a: Answer) -> dict:
    return {"answer": a.text, "score": a.score, "start": a.start, "end": a.end}


def shape(answers: list[dict], top_k: int):
    return answers[0] if top_k == 1 else answers


def merged(ranked: list[list[Answer]], top_k: int) -> list[tuple[int, Answer]]:
    """The best answers of one question across several texts, with the index of the text each comes from. Each
    text's scores are a softmax over its own candidates; across texts the span logits (start + end) are
    comparable, so candidates are ranked by logit and their scores are a softmax over every candidate of every
    text (as within one text: over its candidates, not only the top_k returned)."""
    rows = [(a.logit, i, a) for i, answers in enumerate(ranked) for a in answers if a.text]
    if not rows:
        return [(0, Answer("", 0.0, 0, 0))]
    rows.sort(key=lambda r: -r[0])
    probs = np.exp(np.array([r[0] for r in rows]) - rows[0][0])
    probs /= probs.sum()
    return [(i, Answer(a.text, float(p), a.start, a.end, a.logit)) for (_, i, a), p in zip(rows[:top_k], probs)]


def merge_answers(ranked: list[list[Answer]], top_k: int) -> list[Answer]:
    """Passages of one context: the same offsets, one ranking."""
    return [a for _, a in merged(ranked, top_k)]


def merge_contexts(ranked: list[list[Answer]], top_k: int) -> list[dict]:
    """Several contexts for one question: each answer names its context."""
    return [dict(answer_dict(a), context=i) for i, a in merged(ranked, top_k)]


def verify_checksums(model_dir: Path) -> None:
    """Every file listed in DIR/SHA256SUMS.json must exist and match: a damaged or edited model fails loudly."""
    path = model_dir / CHECKSUMS
    if not path.is_file():
        return
    sums = read_json(path)
    if not isinstance(sums, dict):
        raise QualaError(f"{path}: expected an object of file name -> sha256")
    for name, digest in sums.items():
        file = model_dir / name
        if not file.is_file():
            raise QualaError(f"{file}: listed in {CHECKSUMS} but missing")
        if sha256(file) != digest:
            raise QualaError(f"{file}: checksum mismatch with {CHECKSUMS} (the file is damaged or was changed); "
                             f"pass verify=False (CLI: --no-verify) for a model under development")


def load(model: str | os.PathLike | None = None, runtime: str = "auto", threads: int | None = None,
         verify: bool = True, dtype: str = "fp32") -> QuestionAnswerer:
    """A model directory (default: the released model shipped with quala) ready to answer.

    runtime: "auto" (the INT8 graph when the directory has one), "onnx-int8", "onnx" or "torch" (needs PyTorch);
    threads: ONNX Runtime intra-op threads (default: physical cores); verify: check SHA256SUMS.json when present.
    """
    from quala.runtime import load_predictor
    threads = None if threads is None else whole_number("threads", threads)
    model_dir = Path(model) if model is not None else default_model_dir()
    if not model_dir.is_dir():
        raise QualaError(f"{model_dir}: not a model directory (no such folder)")
    if verify:
        verify_checksums(model_dir)
    predictor, tokenizer, config = load_predictor(model_dir, runtime, dtype, threads)
    front = read_front(model_dir) if front_path(model_dir).is_file() else None
    return QuestionAnswerer(model_dir, predictor, tokenizer, config, front)
