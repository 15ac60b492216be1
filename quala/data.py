"""SQuAD v1.1: reading and validation, examples -> windowed features, logits -> answers."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from quala.config import QualaError
from quala.files import read_json


@dataclass
class Example:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    title: str = ""


@dataclass
class Feature:
    """One window of (question, context) tokens. offsets[i] is the character span of token i in the context,
    (-1, -1) for question and special tokens. start/end are token positions of the answer (0 = not in window)."""
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    example_index: int
    start_position: int = 0
    end_position: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def load_squad(path: str | os.PathLike, limit: int | None = None, require_answers: bool = True) -> list[Example]:
    """Read a SQuAD v1.1 file; errors name the file, article and question at fault.

    An answer_start that does not point at its answer text is moved to the first equal copy in the context
    (the shared train file was rebuilt with first-occurrence offsets; see ../shared/README.md).
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise QualaError(f"{path}: not a SQuAD file (expected an object with a 'data' list of articles)")
    examples: list[Example] = []
    for a, article in enumerate(data["data"]):
        title = article.get("title", f"#{a}") if isinstance(article, dict) else f"#{a}"
        where = f"{path}: article {title!r}"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise QualaError(f"{where}: no 'paragraphs' list")
        for p, para in enumerate(article["paragraphs"]):
            context = para.get("context") if isinstance(para, dict) else None
            qas = para.get("qas", []) if isinstance(para, dict) else []
            if not isinstance(context, str) or not context.strip():
                qid = qas[0].get("id", "?") if qas and isinstance(qas[0], dict) else "?"
                raise QualaError(f"{where}, paragraph {p} (question {qid}): missing or empty 'context'")
            for q, qa in enumerate(qas):
                qid = qa.get("id") if isinstance(qa, dict) else None
                if not isinstance(qid, str) or not qid:
                    raise QualaError(f"{where}, paragraph {p}, question {q}: missing 'id'")
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise QualaError(f"{where}, question {qid}: missing or empty 'question'")
                texts, starts = [], []
                for ans in qa.get("answers", []):
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise QualaError(f"{where}, question {qid}: answer {ans!r} needs 'text' and 'answer_start'")
                    if context[start:start + len(text)] != text:
                        start = context.find(text)
                        if start < 0:
                            raise QualaError(f"{where}, question {qid}: answer {text!r} is not in the context")
                    texts.append(text)
                    starts.append(start)
                if require_answers and not texts:
                    raise QualaError(f"{where}, question {qid}: no answers")
                examples.append(Example(qid, question.strip(), context, texts, starts, title))
                if limit is not None and len(examples) >= limit:
                    return examples
    if not examples:
        raise QualaError(f"{path}: no questions found")
    return examples


def split_articles(examples: list[Example], heldout_fraction: float = 0.05, seed: int = 0
                   ) -> tuple[list[Example], list[Example]]:
    """(train, held-out): whole articles, chosen by a fixed seed. The held-out part is what the length search
    scores configurations on, so the official dev set is only used for reporting."""
    titles = sorted({e.title for e in examples})
    rng = np.random.default_rng(seed)
    n_heldout = max(1, round(heldout_fraction * len(titles))) if heldout_fraction > 0 else 0
    heldout = set(rng.choice(titles, size=n_heldout, replace=False).tolist()) if n_heldout else set()
    return [e for e in examples if e.title not in heldout], [e for e in examples if e.title in heldout]


def squad_dataset(examples: list[Example]) -> dict[str, list[str]]:
    """Question id -> gold answer texts, the form the metric takes."""
    return {e.id: e.answers for e in examples}


def make_features(examples: list[Example], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                  max_query_length: int = 64, training: bool = False) -> list[Feature]:
    """Windows of max_seq_length tokens over each context, overlapping by doc_stride tokens (the Hugging Face
    convention). Long contexts are split, never truncated. Questions are cut to max_query_length tokens."""
    if not examples:
        return []
    questions = [truncate_question(e.question, tokenizer, max_query_length) for e in examples]
    windows = tokenizer.windows([(q, e.context) for q, e in zip(questions, examples)], max_seq_length, doc_stride)
    features = []
    for ex_index, w in windows:
        seq_ids = np.array([-1 if s is None else s for s in w.sequence_ids])
        offsets = np.array(w.offsets, dtype=np.int32)
        offsets[seq_ids != 1] = -1
        f = Feature(np.array(w.ids, dtype=np.int64), np.array(w.type_ids, dtype=np.int64), offsets, ex_index)
        if training and examples[ex_index].answers:
            f.start_position, f.end_position = answer_tokens(examples[ex_index], offsets)
        features.append(f)
    return features


def truncate_question(question: str, tokenizer, max_query_length: int) -> str:
    offsets = tokenizer.question_offsets(question)
    return question if len(offsets) <= max_query_length else question[: offsets[max_query_length - 1][1]]


def answer_tokens(example: Example, offsets: np.ndarray) -> tuple[int, int]:
    """Token span of the first answer inside this window, or (0, 0) ([CLS]) when it is not wholly inside."""
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])
    in_context = np.nonzero(offsets[:, 0] >= 0)[0]
    if len(in_context) == 0 or offsets[in_context[0], 0] > start_char or offsets[in_context[-1], 1] < end_char:
        return 0, 0
    starts = in_context[offsets[in_context, 0] <= start_char]
    ends = in_context[offsets[in_context, 1] >= end_char]
    return int(starts[-1]), int(ends[0])


def collate(features: list[Feature], pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Dynamic padding: pad to the longest feature of the batch, not to max_seq_length (numpy int64 arrays, and
    `context` (bool): the context's tokens; training converts them with torch.from_numpy)."""
    n = max(len(f) for f in features)
    ids = np.full((len(features), n), pad_token_id, dtype=np.int64)
    types = np.zeros((len(features), n), dtype=np.int64)
    mask = np.zeros((len(features), n), dtype=np.int64)
    context = np.zeros((len(features), n), dtype=bool)
    for i, f in enumerate(features):
        ids[i, : len(f)], types[i, : len(f)], mask[i, : len(f)] = f.input_ids, f.token_type_ids, 1
        context[i, : len(f)] = f.offsets[:, 0] >= 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "context": context,
            "start_positions": np.array([f.start_position for f in features], dtype=np.int64),
            "end_positions": np.array([f.end_position for f in features], dtype=np.int64)}


def length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None = None
                           ) -> list[list[int]]:
    """Batches of indices with similar lengths, so dynamic padding wastes little. With rng: sorted within
    random mega-batches of 50 batches, then the batches shuffled (the Hugging Face group_by_length recipe)."""
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    mega = batch_size * (50 if rng is not None else len(lengths) or 1)
    batches = []
    for s in range(0, len(order), mega):
        chunk = order[s:s + mega]
        chunk = chunk[np.argsort(-lengths_arr[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


@dataclass
class Answer:
    text: str
    score: float  # probability among the n-best candidates of the example
    start: int  # character offsets in the context (Python code points)
    end: int
    logit: float = 0.0  # start + end logit of the span: comparable across windows and contexts


N_BEST = 20  # distinct candidate spans per example: an answer's score is its softmax over them
MAX_ANSWER_TOKENS = 30  # longest answer span in tokens (the SQuAD reference scripts' setting)


def unencodable(text: str) -> str:
    """'' when the text can be written as UTF-8, else why not: an unpaired surrogate, which is what Python makes
    of bytes that are not UTF-8 (command-line arguments, files read with surrogateescape) and what JSON's \\ud800
    escapes decode to. The tokenizer would fail on it deep inside."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid UTF-8 text (an unpaired surrogate {text[e.start]!r} at character {e.start})"
    return ""


def postprocess(examples: list[Example], features: list[Feature], start_logits: list[np.ndarray],
                end_logits: list[np.ndarray], n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_TOKENS
                ) -> list[Answer]:
    """The best span of each example across all its windows; the score is its softmax over the n-best spans."""
    return [ranked[0] for ranked in ranked_answers(examples, features, start_logits, end_logits, n_best,
                                                   max_answer_length)]


def ranked_answers(examples: list[Example], features: list[Feature], start_logits: list[np.ndarray],
                   end_logits: list[np.ndarray], n_best: int = N_BEST, max_answer_length: int = MAX_ANSWER_TOKENS
                   ) -> list[list[Answer]]:
    """Up to n_best distinct spans per example, best first, across all its windows (an empty answer when no
    valid span exists). Scores are the softmax of start+end logits over those spans."""
    candidates: list[list[np.ndarray]] = [[] for _ in examples]  # rows of (score, start char, end char)
    for f, s_logits, e_logits in zip(features, start_logits, end_logits):
        n = len(f)
        s_logits, e_logits = s_logits[:n], e_logits[:n]
        starts = np.argsort(-s_logits, kind="stable")[:n_best]
        ends = np.argsort(-e_logits, kind="stable")[:n_best]
        span = ends[None, :] - starts[:, None]
        ok = ((f.offsets[starts, 0] >= 0)[:, None] & (f.offsets[ends, 0] >= 0)[None, :]
              & (span >= 0) & (span < max_answer_length))
        i, j = np.nonzero(ok)
        scores = s_logits[starts[i]] + e_logits[ends[j]]
        candidates[f.example_index].append(
            np.stack([scores, f.offsets[starts[i], 0], f.offsets[ends[j], 1]], axis=1).astype(np.float64))
    results = []
    for ex, cands in zip(examples, candidates):
        rows = np.concatenate(cands) if cands else np.zeros((0, 3))
        if len(rows) == 0:
            results.append([Answer("", 0.0, 0, 0)])
            continue
        rows = rows[np.argsort(-rows[:, 0], kind="stable")]
        _, first = np.unique(rows[:, 1:], axis=0, return_index=True)  # the same span from two windows: once
        rows = rows[np.sort(first)][:n_best]
        probs = np.exp(rows[:, 0] - rows[0, 0])
        probs /= probs.sum()
        results.append([Answer(ex.context[int(s):int(e)], float(p), int(s), int(e), float(logit))
                        for (logit, s, e), p in zip(rows, probs)])
    return results
