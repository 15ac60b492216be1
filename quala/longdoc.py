"""Long contexts: rank passages against the question with BM25, read only the best few.

Read whole, a context of many windows costs one pass per window, and every window is a chance for a distractor
span to outscore the right one. A context of more than WHOLE_TOKENS tokens (and `passages` passages) is cut into
passages of about `PASSAGE_TOKENS` tokens (starting at word boundaries, overlapping by `OVERLAP` tokens), the passages are
scored against the question with BM25 (the `bm25s` library), and only the top `passages` are read, each as its own
window. Answers from different passages are ranked by span logit (start + end) plus `RETRIEVAL_WEIGHT` times their
passage's BM25 score standardised over the context's passages: the reader alone is easily drawn to a confident
span in a passage that does not match the question. PASSAGES and RETRIEVAL_WEIGHT were chosen on held-out
training articles (benchmarks/longdoc.py reports the dev set): 5 passages with weight 2 scored 65.5 F1 against
57.4 with weight 0, 62.5 with 3 passages and 57.7 with 1, and 56.3 when each passage's [CLS] score was subtracted.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from quala.config import QualaError

PASSAGE_TOKENS = 160  # tokens of context per passage (a SQuAD paragraph is about 150)
OVERLAP = 32  # tokens shared by neighbouring passages, so an answer cut by one boundary is whole in the next
PASSAGES = 5  # passages read of a long context (quala.load()'s default)
WHOLE_TOKENS = 2048  # a context up to this many tokens is read whole (every SQuAD paragraph is, as in evaluation)
RETRIEVAL_WEIGHT = 2.0  # span logit + this x the passage's standardised BM25 score


@dataclass
class Passages:
    """A context cut into passages: their character spans, and a BM25 index over their texts once asked for."""
    context: str
    spans: list[tuple[int, int]]

    @functools.cached_property
    def index(self):
        import bm25s
        corpus = bm25s.tokenize([self.context[s:e] for s, e in self.spans], stopwords="en", show_progress=False)
        index = bm25s.BM25()
        index.index(corpus, show_progress=False)
        return index

    def scores(self, question: str) -> np.ndarray:
        """BM25 score of every passage for the question (0 where no query word occurs)."""
        import bm25s
        words = bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)[0]
        return self.index.get_scores(words) if words else np.zeros(len(self.spans), dtype=np.float32)


def split_passages(context: str, tokenizer, tokens: int = PASSAGE_TOKENS, overlap: int = OVERLAP
                   ) -> list[tuple[int, int]]:
    """Character spans of passages of at most `tokens` model tokens, each starting at a word, neighbours sharing
    about `overlap` tokens."""
    if tokens < 8 or not 0 <= overlap < tokens // 2:
        raise QualaError(f"passages need at least 8 tokens and an overlap below half of them, got {tokens} tokens "
                         f"and overlap {overlap}")
    enc = tokenizer.base.encode(context, add_special_tokens=False)
    offsets, words = enc.offsets, enc.word_ids
    n = len(offsets)
    spans, start = [], 0
    while start < n:
        end = min(start + tokens, n)
        if end < n:  # do not cut a word in two: end where the last word of the window begins
            cut = end
            while cut > start + 1 and words[cut] == words[cut - 1]:
                cut -= 1
            end = cut
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == n:
            break
        nxt = max(end - overlap, start + 1)
        while nxt > start + 1 and words[nxt] == words[nxt - 1]:  # start at the first token of a word
            nxt -= 1
        start = nxt
    return spans


def best_passages(question: str, context: str, tokenizer, passages: int, tokens: int = PASSAGE_TOKENS,
                  overlap: int = OVERLAP) -> list[tuple[int, int, float]]:
    """(start, end, prior) of the `passages` passages of the context that BM25 ranks best for the question, in the
    order they stand in the context; prior is what their answers' span logits get added (RETRIEVAL_WEIGHT x the
    standardised BM25 score). [(0, len(context), 0.0)] when the context has at most WHOLE_TOKENS tokens, or no more
    than `passages` passages."""
    if isinstance(passages, bool) or not isinstance(passages, int) or passages < 1:
        raise QualaError(f"passages must be a whole number >= 1, got {passages!r}")
    if len(tokenizer.base.encode(context, add_special_tokens=False).ids) <= WHOLE_TOKENS:
        return [(0, len(context), 0.0)]  # no passages made, nothing cached
    index = passages_of(context, tokenizer, tokens, overlap)
    if len(index.spans) <= passages:
        return [(0, len(context), 0.0)]
    scores = np.asarray(index.scores(question), dtype=np.float64)
    prior = RETRIEVAL_WEIGHT * (scores - scores.mean()) / (scores.std() + 1e-6)
    top = np.argsort(-scores, kind="stable")[:passages]  # ties: the earlier passage
    return [(*index.spans[i], float(prior[i])) for i in sorted(top)]


@functools.lru_cache(maxsize=32)
def passages_of(context: str, tokenizer, tokens: int, overlap: int) -> Passages:
    """The passages of a context and their index, kept for the next questions about the same document."""
    return Passages(context, split_passages(context, tokenizer, tokens, overlap))
