"""The length-adaptive BERT encoder with a span head (Length-Adaptive Transformer, Drop-and-Restore).

Each layer attends over the tokens it receives, ranks them by the attention they received (summed over heads and
query positions, padding excluded, [CLS] always first), and runs its feed-forward block only on the top-k of the
length configuration. A dropped token keeps the last vector it had; before the span head every token is restored
to its position, so every token gets start and end logits. Other rankings (RANKINGS, one small function each):
"question" counts only the attention paid by the question's tokens and [CLS], "cls" only [CLS]'s; "learned" scores
each token with a fitted linear scorer per layer (quala.scorer), which can also read where the question's words
occur in the context (lexical_prior); "position" (eager PyTorch only, never exported) keeps the first k tokens, a
baseline.
With config.json's `quala.question_last_layer` L, layers L and later rank the question's tokens after every
context token whatever the ranking ([CLS] stays first): by then the context has read the question, and the few slots
a cheap configuration keeps there go to the passage (+0.2-0.3 F1 from 1.4x to 3x fewer MACs on held-out questions,
docs/benchmarks.md).

A token count of 0 at a layer skips it (depth as a second axis, like LayerDrop in training): no compute there,
every token keeps its vector. Eager PyTorch skips it in Python; a graph exported with layer skips runs the layer
on no tokens and passes the others through (see `run_or_skip`), so one graph still serves every configuration.
That pass-through costs 7-14% at full length in ONNX Runtime, so graphs are exported without it unless asked.

Weights are stored under Hugging Face `BertForQuestionAnswering` names, so a saved directory also loads in
`transformers`, and any BERT checkpoint directory loads here.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from quala.config import SCORER_INPUTS, LengthConfig, ModelConfig, QualaError
from quala.files import atomic_write, read_json
from quala.onnx_ops import (exporting, gather_rows, reshape, scatter_rows, slots_before, slots_from,
                            top_slots)
from quala.tokenizer import load_tokenizer


class Signals(NamedTuple):
    """What a layer knows when it ranks its token slots (B = batch, K = slots, H = hidden)."""
    probs: torch.Tensor  # (B, heads, K, K) attention probabilities
    valid: torch.Tensor  # (B, K) real tokens
    queries: torch.Tensor | None  # (B, K) the question's tokens and [CLS]; for QUESTION_RANKINGS only
    x: torch.Tensor  # (B, K, H) the layer's input states
    context: torch.Tensor  # (B, K, H) what each slot attended to (before the output projection)
    prior: torch.Tensor | None = None  # (B, K, LEXICAL_FEATURES) lexical_prior's; for "lexical" scorers only


def rank_by_attention(s: Signals, layer: nn.Module) -> torch.Tensor:
    """Attention received from every real token (the Length-Adaptive Transformer's ranking)."""
    return attention_received(s.probs, s.valid)


def rank_by_question(s: Signals, layer: nn.Module) -> torch.Tensor:
    """Attention received from the question's tokens and [CLS] only: in span QA the question decides which context
    tokens matter."""
    return attention_received(s.probs, s.queries)


def rank_by_cls(s: Signals, layer: nn.Module) -> torch.Tensor:
    """Attention received from [CLS] (slot 0) only, summed over heads."""
    return s.probs[:, :, :1].sum(dim=(1, 2))  # a slice, not an index: a skipped layer in the graph has no slot 0


# What a learned scorer reads (quala.scorer fits each; the width of its weights says which):
# "states": [input state, attended context], 2H values;
# "question": those, the input state times the mean state of the question's slots (one learned weight per hidden
# unit: a diagonal bilinear match of token and question), and log(1e-6 + attention the question's slots pay the
# token): 3H + 1 values. The question is the segment-0 slots, [CLS] and [SEP] included;
# "lexical": those and lexical_prior's LEXICAL_FEATURES values: 3H + 1 + LEXICAL_FEATURES.
# (SCORER_INPUTS: quala.config)
LEXICAL_SPREADS = (4.0, 16.0, 48.0)  # token distances over which a question word found in the context counts
COVERAGE_SPREADS = (8.0, 24.0)  # windows in which the share of the question's distinct words found counts
BIGRAM_SPREAD = 16.0  # distance over which two question words found side by side, in the question's order, count
MATCH_FEATURES = 2 + len(LEXICAL_SPREADS)  # what the first lexical scorers read (release 7): a prefix of the rest
LEXICAL_FEATURES = MATCH_FEATURES + 2 * len(COVERAGE_SPREADS) + 1


def scorer_width(inputs: str, hidden_size: int) -> int:
    if inputs not in SCORER_INPUTS:
        raise QualaError(f"scorer inputs {inputs!r}: choose one of {', '.join(SCORER_INPUTS)}")
    return {"states": 2 * hidden_size, "question": 3 * hidden_size + 1,
            "lexical": 3 * hidden_size + 1 + LEXICAL_FEATURES}[inputs]


def lexical_features(width: int, hidden_size: int) -> int:
    """How many of lexical_prior's values a "lexical" scorer of `width` inputs reads: LEXICAL_FEATURES, or
    MATCH_FEATURES for scorers fitted before the coverage values existed (they still load and rank as fitted)."""
    return width - scorer_width("question", hidden_size)


def scorer_widths(hidden_size: int) -> dict[int, str]:
    """Every width a scorer can have -> the SCORER_INPUTS kind it reads (release 7's lexical scorers included)."""
    widths = {scorer_width(inputs, hidden_size): inputs for inputs in SCORER_INPUTS}
    return widths | {scorer_width("question", hidden_size) + MATCH_FEATURES: "lexical"}


def scorer_kind(width: int, hidden_size: int) -> str:
    """Which SCORER_INPUTS a scorer of `width` inputs reads."""
    for known, inputs in scorer_widths(hidden_size).items():  # ==, not a dict lookup: traced shapes are tensors
        if known == width:
            return inputs
    raise QualaError(f"a scorer of {width} inputs fits no kind of {', '.join(SCORER_INPUTS)} at hidden size "
                     f"{hidden_size}")


def scorer_inputs(s: Signals, inputs: str, prior_features: int = LEXICAL_FEATURES) -> torch.Tensor:
    """(B, K, width): what a scorer of kind `inputs` reads at every slot ("lexical": the first `prior_features`
    values of the prior)."""
    parts = [s.x, s.context]
    if inputs in ("question", "lexical"):
        q = s.queries.to(s.x.dtype)[..., None]
        question = (s.x * q).sum(1, keepdim=True) / q.sum(1, keepdim=True).clamp(min=1.0)
        parts += [s.x * question, torch.log(1e-6 + attention_received(s.probs, s.queries))[..., None]]
    if inputs == "lexical":
        if s.prior is None:
            raise QualaError("a 'lexical' scorer needs the model's lexicon (DIR/scorer.safetensors, "
                             "fitted by quala.scorer)")
        parts.append(s.prior[..., :prior_features].to(s.x.dtype))
    return torch.cat(parts, -1)


def lexical_prior(input_ids: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor, idf: torch.Tensor,
                  question_slots: int, features: int = LEXICAL_FEATURES) -> torch.Tensor:
    """(B, N, features) per input position, from the token ids alone. Answers sit near the rarer question words
    the context repeats, which the first layer's hidden states barely show yet (docs/benchmarks.md). The first
    MATCH_FEATURES values: is it the question's (segment 0); its match, the inverse document frequency of a context
    token whose word piece the question also has (0 for others); and log(0.01 + that match averaged over the
    context with weights exp(-distance / d)) for each d of LEXICAL_SPREADS. Then question_coverage's. Special
    tokens have idf 0 and never match. The question lies in the first `question_slots` positions ([CLS], at most
    max_query_length word pieces, [SEP])."""
    dtype = idf.dtype
    weight = idf[input_ids]
    asked = (queries & (weight > 0)).to(dtype)
    context = (valid & ~queries).to(dtype)
    same = (input_ids[:, :, None] == input_ids[:, None, :]).to(dtype)
    match = weight * context * ((same @ asked[..., None])[..., 0] > 0).to(dtype)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).to(dtype)
    distance = (positions[:, None] - positions[None, :]).abs()
    out = [queries.to(dtype), match]
    for spread in LEXICAL_SPREADS:
        out.append(torch.log(0.01 + nearby_mean(match, context, distance, spread)))
    if features > MATCH_FEATURES:
        out += question_coverage(same, queries, weight, context, distance, question_slots)
    return torch.stack(out[:features], -1)


def nearby_mean(values: torch.Tensor, context: torch.Tensor, distance: torch.Tensor, spread: float) -> torch.Tensor:
    """(B, N): `values` (B, N) averaged over the context with weights exp(-distance / spread)."""
    near = torch.exp(distance / -spread)[None] * context[:, None, :]
    return (near @ values[..., None])[..., 0] / near.sum(-1).clamp(min=1e-6)


def question_coverage(same: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor, context: torch.Tensor,
                      distance: torch.Tensor, question_slots: int) -> list[torch.Tensor]:
    """Per position, for each d of COVERAGE_SPREADS: the share of the question's distinct word pieces (weighted by
    idf) found in the context within about d tokens (occurrences weighted exp(-distance / d), each word counted
    at most once), and that share over the best one in the window (1 where the context covers the question most);
    then log(0.01 + the nearby share of context tokens in a bigram the question has, in its order). A token near
    one repeated question word scores high on lexical_prior's match values; one in the passage that holds most of
    the question's words scores high here. same (B, N, N): 1 where two positions hold the same word piece. Costs
    N * N * question_slots multiply-adds per coverage spread."""
    dtype = weight.dtype
    asked = queries[:, :question_slots] & (weight[:, :question_slots] > 0)
    found = same[:, :, :question_slots]  # (B, N, slots)
    slot = torch.arange(found.shape[2], device=found.device)
    repeat = (found[:, :question_slots] > 0) & (slot[:, None] > slot[None, :]) & asked[:, None, :]
    first = (asked & ~repeat.any(-1)).to(dtype)  # each distinct word piece of the question once
    share = weight[:, :question_slots] * first
    found = found * context[..., None]  # context positions only
    out = []
    for spread in COVERAGE_SPREADS:
        near = torch.exp(distance / -spread) @ (found * first[:, None, :])
        covered = (near.clamp(max=1.0) * share[:, None, :]).sum(-1) / share.sum(-1, keepdim=True).clamp(min=1e-6)
        out += [covered, covered / (covered * context).amax(-1, keepdim=True).clamp(min=1e-6)]
    pairs = asked[:, :-1] & asked[:, 1:]
    bigram = ((found[:, :-1, :-1] * found[:, 1:, 1:]) * pairs[:, None, :].to(dtype)).amax(-1)  # (B, N - 1)
    bigram = torch.maximum(F.pad(bigram, (0, 1)), F.pad(bigram, (1, 0)))  # both tokens of the pair
    out.append(torch.log(0.01 + nearby_mean(bigram, context, distance, BIGRAM_SPREAD)))
    return out


def rank_by_scorer(s: Signals, layer: nn.Module) -> torch.Tensor:
    """A learned linear scorer per layer on SCORER_INPUTS (2H + 1, 3H + 2 or 3H + 2 + LEXICAL_FEATURES
    parameters), fitted to predict where the full-length model puts its answer (quala.scorer)."""
    if layer.scorer is None:
        raise QualaError("ranking 'learned' needs scorer weights: DIR/scorer.safetensors (fitted by quala.scorer.fit)")
    width, h = layer.scorer.in_features, s.x.shape[-1]
    return layer.scorer(scorer_inputs(s, scorer_kind(width, h), lexical_features(width, h))).squeeze(-1)


def rank_by_position(s: Signals, layer: nn.Module) -> torch.Tensor:
    """The lower slot ranks higher (the lowest positions while every layer ranks by position: slots then stay in
    position order). A baseline, eager PyTorch only."""
    k = s.probs.shape[-1]
    return (k - torch.arange(k, device=s.probs.device, dtype=torch.float32)).expand(s.probs.shape[0], k)


# significance of each token slot (B, K), higher is kept first; padded slots are ranked last by Layer.forward
RANKINGS = {"attention": rank_by_attention, "question": rank_by_question, "cls": rank_by_cls,
            "learned": rank_by_scorer, "position": rank_by_position}
QUESTION_RANKINGS = ("question", "learned")  # rankings given Signals.queries


class QAOutput(NamedTuple):
    start_logits: torch.Tensor  # (batch, seq)
    end_logits: torch.Tensor  # (batch, seq)
    kept: torch.Tensor  # (batch, layers): tokens each layer's feed-forward block ran on
    scores: tuple[torch.Tensor, ...] | None = None  # each layer's raw significance per token, when asked for


class Embeddings(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        h = c.hidden_size
        self.heads = c.num_attention_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.ffn_in = nn.Linear(h, c.intermediate_size)
        self.ffn_out = nn.Linear(c.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.attn_dropout = nn.Dropout(c.attention_probs_dropout_prob)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.scorer: nn.Linear | None = None  # the "learned" ranking's, when fitted (quala.scorer)

    def attend(self, x: torch.Tensor, valid: torch.Tensor, probs_needed: bool = True
               ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Self-attention over the real slots: the probabilities (B, heads, K, K) and each slot's context (B, K, H)
        before the output projection. In training, without `probs_needed` (no ranking at this layer), it returns
        None for the probabilities and runs PyTorch's fused attention, which never holds the (K, K) scores
        (LengthDrop steps 1.07x faster on a Zen 3). Not in inference: the fused kernel's sums depend on how wide the
        batch is padded, so an answer would change with its batch-mates (1.6-1.7x faster there all the same)."""
        h = self.attn_out.in_features  # a Python int: reshape targets must be constants in the graph
        d = h // self.heads
        q, kk, v = (reshape(p, (0, -1, self.heads, d)).transpose(1, 2) for p in self.project_qkv(x))
        if not probs_needed and self.training and not exporting():
            out = F.scaled_dot_product_attention(q, kk, v, attn_mask=valid[:, None, None, :],
                                                 dropout_p=self.attn_dropout.p)
            return None, out.transpose(1, 2).reshape(x.shape[0], -1, h)
        scores = q @ kk.transpose(-1, -2) / math.sqrt(d)
        probs = mask_scores(scores, valid).softmax(-1)
        return probs, reshape((self.attn_dropout(probs) @ v).transpose(1, 2), (0, -1, h))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value projections. The exported graph computes them as one matmul with the three weights
        side by side, split after: one int8 GEMM three times as wide instead of three after quantization, with
        the same numbers (one activation scale either way, per-column weight scales)."""
        if not exporting():
            return self.query(x), self.key(x), self.value(x)
        lins = (self.query, self.key, self.value)
        qkv = F.linear(x, torch.cat([lin.weight for lin in lins]), torch.cat([lin.bias for lin in lins]))
        return qkv.split(self.query.out_features, dim=-1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor | None, ranking: str = "attention",
                queries: torch.Tensor | None = None, prior: torch.Tensor | None = None, score: bool = False,
                question_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                      torch.Tensor | None]:
        """x (B, K, H) over K token slots, valid (B, K) marks real tokens, keep (B,) tokens to keep or None.

        ranking: a key of RANKINGS; QUESTION_RANKINGS need queries (B, K), the real slots holding a question token or
        [CLS]; "lexical" scorers also the slots' lexical_prior (B, K, LEXICAL_FEATURES). question_last (needs
        queries): the question's tokens are kept only when every context token is (ModelConfig.question_last_layer).
        Returns the new states, their validity, the slots kept (B, k) when tokens were dropped, and each slot's raw
        significance (B, K) when the layer ranked (tokens dropped, or `score`; padded slots unmasked).
        """
        ranks = keep is not None or score
        probs, context = self.attend(x, valid, probs_needed=ranks)
        slots, scores = None, None
        if ranks:
            scores = RANKINGS[ranking](Signals(probs, valid, queries, x, context, prior), self)
        if keep is not None:
            significance = scores.float().masked_fill(~valid, -torch.inf)
            if question_last:  # below any context token's score, above padding's
                significance = significance - QUESTION_LAST * queries.to(significance.dtype)
            significance = F.pad(significance[:, 1:], (1, 0), value=float("inf"))  # slot 0 is always [CLS]
            # k as a tensor: the ONNX exporter traces it as a runtime value (TopK's k), not a constant
            slots = top_slots(significance, keep.max())
            valid = torch.arange(slots.shape[1], device=x.device)[None, :] < keep[:, None]
            x, context = gather_rows(x, slots), gather_rows(context, slots)
        x = self.attn_norm(x + self.dropout(self.attn_out(context)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))
        return x, valid, slots, scores


QUESTION_LAST = 1e4  # subtracted from the question's significance where it ranks last: scores stay far smaller


def mask_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Attention scores with padded keys at the lowest float. The exported graph adds the mask instead of
    selecting (ONNX Runtime's broadcasting Where is slow); the softmax is the same (exp underflows to 0)."""
    low = torch.finfo(scores.dtype).min
    if exporting():
        return scores + reshape((1.0 - valid.to(scores.dtype)) * low, (0, 1, 1, -1))
    return scores.masked_fill(~valid[:, None, None, :], low)


def attention_received(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K): attention each key got, summed over heads and real queries. Exported as a MatMul with the query
    mask (ONNX Runtime's broadcast Mul + ReduceSum over (B, heads, K, K) is slow); equal up to rounding."""
    if exporting():
        return (reshape(valid.to(probs.dtype), (0, 1, 1, -1)) @ probs).sum(dim=(1, 2))
    return (probs * valid[:, None, :, None]).sum(dim=(1, 2))


def restore_rows(flat: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, x: torch.Tensor, scratch: torch.Tensor
                 ) -> torch.Tensor:
    """flat (B*N + 1, H) with flat[rows[b, j]] = x[b, j] where valid[b, j]. An invalid slot (a token that another
    sequence of the batch kept) writes to row `scratch` (the last), which is dropped at the end: no select over rows."""
    return scatter_rows(flat, torch.where(valid, rows, scratch), x)


def run_or_skip(layer: Layer, x: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor | None,
                prior: torch.Tensor | None, rows: torch.Tensor, keep: torch.Tensor, current: torch.Tensor, ranking: str,
                question_last: bool = False) -> tuple:
    """One layer as the exported graph runs it: on all of its slots, or on none when every row's count is 0 (the
    layer skipped), without a branch: the layer runs on the first m slots, m = all or 0, and the slots from m on
    pass through unchanged. Returns x, valid, queries, prior, rows, the tokens kept (0 when skipped) and the tokens
    passed on to the next layer."""
    active = (keep.max() > 0).long()
    keep = torch.maximum(keep, active)  # in a layer that runs, every row keeps at least [CLS]
    m = active * x.shape[1]
    part = None if queries is None else slots_before(queries, m)
    prior_part = None if prior is None else slots_before(prior, m)
    y, y_valid, slots, _ = layer(slots_before(x, m), slots_before(valid, m), keep, ranking, part, prior_part,
                                 question_last=question_last)

    def join(done: torch.Tensor, passed: torch.Tensor) -> torch.Tensor:
        return torch.cat([done, slots_from(passed, m)], 1)

    if queries is not None:
        queries = join(part.gather(1, slots) & y_valid, queries)
    if prior is not None:
        prior = join(gather_rows(prior_part, slots), prior)
    return (join(y, x), join(y_valid, valid), queries, prior, join(rows.gather(1, slots), rows), keep,
            torch.where(active > 0, keep, current))


class QualaForQuestionAnswering(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        last = config.question_last_layer
        if last is not None and (type(last) is not int or not 0 <= last < config.num_hidden_layers):
            raise QualaError(f"config.json quala.question_last_layer {last!r}: a layer 0..{config.num_hidden_layers - 1}"
                             " or null")
        self.config = config
        self.embed = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.graph_layer_skips = False  # set by quala.export while tracing a graph that can skip layers
        # inverse document frequency per word piece, for "lexical" scorers (lexical_prior); saved with the scorers
        self.register_buffer("lexicon", None, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def prior_features(self) -> int:
        """How many lexical_prior values the learned ranking's scorers read (0 unless kind "lexical")."""
        scorer = self.layers[0].scorer
        h = self.config.hidden_size
        if scorer is None or scorer_kind(scorer.in_features, h) != "lexical":
            return 0
        return lexical_features(scorer.in_features, h)

    @property
    def reads_lexicon(self) -> bool:
        """Whether the learned ranking's scorers read lexical_prior (kind "lexical")."""
        return self.prior_features > 0

    def lexical_prior(self, input_ids: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor,
                      features: int | None = None) -> torch.Tensor:
        """lexical_prior with the model's lexicon: the first `features` values (None: what its scorers read)."""
        features = self.prior_features if features is None else features
        return lexical_prior(input_ids, valid, queries, self.lexicon, self.config.max_query_length + 2, features)

    @property
    def default_length_config(self) -> LengthConfig | None:
        lc = self.config.length_config
        return LengthConfig.from_json(lc) if lc else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                length_config: LengthConfig | None = None, skip_layers: frozenset[int] = frozenset(),
                token_counts: torch.Tensor | None = None, ranking: str | None = None, return_scores: bool = False
                ) -> QAOutput:
        """length_config None runs at full length; token_counts (B, layers) overrides it with explicit counts.

        A count of 0 skips the layer: when every row has 0 there, nothing is computed and every token keeps its
        vector (kept reports 0); a row with 0 in a layer that other rows of the batch run keeps only [CLS] there.
        skip_layers are passed through unchanged (LayerDrop in training; kept reports the tokens passed on).
        ranking: which tokens a layer keeps, a key of RANKINGS: "attention" (the most attended, the model's
        method), "question" (most attended by the question and [CLS]), "cls" (by [CLS]), "learned" (the fitted
        scorers) or "position" (the first k, a baseline for comparison; eager PyTorch only); None: the config's.
        return_scores (full length only): QAOutput.scores holds what each layer's ranking gives every token (B, N),
        the learned ranking's scorer outputs, which training can fit along with the model (quala.train).
        """
        ranking = ranking or self.config.ranking
        if ranking not in RANKINGS:
            raise QualaError(f"ranking {ranking!r}: choose one of {', '.join(RANKINGS)}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        valid = attention_mask.bool()
        seq_lens = valid.sum(1)
        if token_counts is None and length_config is not None:
            length_config.check(len(self.layers), self.config.max_seq_length)
            token_counts = length_config.token_counts(seq_lens)
        if return_scores and (token_counts is not None or skip_layers):
            raise QualaError("return_scores: at full length only (no length configuration, no skipped layers)")
        # the question's tokens and [CLS] (segment 0), followed through the kept slots for the rankings that read it
        question_last = self.config.question_last_layer
        needs_queries = ranking in QUESTION_RANKINGS or question_last is not None
        queries = valid & (token_type_ids == 0) if needs_queries else None
        prior = self.lexical_prior(input_ids, valid, queries) if ranking == "learned" and self.reads_lexicon else None
        x = self.embed(input_ids, token_type_ids)
        b, n, h = x.shape[0], x.shape[1], self.config.hidden_size
        full, rows = x, None  # rows: each slot's row in full, flattened to rows once tokens are dropped
        current, kept, scores = seq_lens, [], []
        for i, layer in enumerate(self.layers):
            last = question_last is not None and i >= question_last
            keep = None if token_counts is None else torch.minimum(token_counts[:, i], current)
            if i in skip_layers or (keep is not None and not exporting() and not keep.any()):
                kept.append(current if i in skip_layers else keep)
                continue
            if keep is not None and rows is None:  # first drop: full becomes (B*N + 1, H), its last row a scratch row
                rows = torch.arange(b, device=x.device)[:, None] * n + torch.arange(n, device=x.device)[None, :]
                scratch = torch.as_tensor(b * n, device=x.device)
                full = torch.cat([reshape(full, (-1, h)), full.new_zeros(1, h)])
            if keep is None:
                x, valid, _, layer_scores = layer(x, valid, None, ranking, queries, prior, return_scores)
                scores.append(layer_scores)
            elif exporting() and self.graph_layer_skips:
                x, valid, queries, prior, rows, keep, current = run_or_skip(layer, x, valid, queries, prior, rows,
                                                                            keep, current, ranking, last)
            else:
                keep = keep.clamp(min=1)
                x, valid, slots, _ = layer(x, valid, keep, ranking, queries, prior, question_last=last)
                rows = rows.gather(1, slots)
                queries = None if queries is None else queries.gather(1, slots) & valid
                prior = None if prior is None else gather_rows(prior, slots)
                current = keep  # the layer kept exactly `keep` real tokens
            # restore: write the kept tokens' new states back into the full sequence
            full = x if rows is None else restore_rows(full, rows, valid, x, scratch)
            kept.append(current if keep is None else keep)
        logits = self.qa_outputs(full if rows is None else full[:-1].view(b, n, h))
        return QAOutput(logits[..., 0], logits[..., 1], torch.stack(kept, dim=1),
                        tuple(scores) if return_scores else None)

    # ---- Hugging Face-style directories -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> QualaForQuestionAnswering:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise QualaError(f"{path}: not a model directory (no config.json)")
        config_dict = read_json(path / "config.json")
        config = ModelConfig.from_dict(config_dict)
        for k, v in overrides.items():
            setattr(config, k, v)
        model = cls(config)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise QualaError(f"{path}: no model.safetensors")
        try:
            hf_state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise QualaError(f"{weights}: cannot read weights ({e})") from None
        ours = {hf: name for name, hf in hf_names(model).items()}
        # a bare BertModel checkpoint has no "bert." prefix; its pooler and position_ids are not used
        state = {ours[k]: v for k, v in hf_state.items() if k in ours}
        state.update({ours["bert." + k]: v for k, v in hf_state.items() if "bert." + k in ours})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if (path / SCORER_FILE).is_file():
            attach_scorers(model, *load_scorers(path / SCORER_FILE, config.hidden_size))
        if "qa_outputs.weight" in missing:  # a backbone without a span head: give it a reproducible one
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model._init_weights(model.qa_outputs)
        if unexpected or [m for m in missing if not m.startswith("qa_outputs")]:
            raise QualaError(f"{weights}: weights do not match the config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = hf_names(self)
        state = {names[k]: v.detach().contiguous() for k, v in self.state_dict().items() if ".scorer." not in k}
        atomic_write(path / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        scorers = [layer.scorer for layer in self.layers if layer.scorer is not None]
        if scorers:
            save_scorers(scorers, path / SCORER_FILE, self.lexicon if self.reads_lexicon else None)
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


SCORER_FILE = "scorer.safetensors"  # the "learned" ranking's scorers, beside model.safetensors


def attach_scorers(model: QualaForQuestionAnswering, scorers: list[nn.Linear], lexicon: torch.Tensor | None = None
                   ) -> QualaForQuestionAnswering:
    """Give each layer its scorer; `lexicon` (idf per word piece) is what "lexical" scorers need besides, and a
    model keeps the one it has when none is given."""
    if len(scorers) != len(model.layers):
        raise QualaError(f"{len(scorers)} scorers for a model of {len(model.layers)} layers")
    if len({s.in_features for s in scorers}) > 1:
        raise QualaError(f"scorers of different inputs ({sorted({s.in_features for s in scorers})} values) in one model")
    if lexicon is not None:
        if lexicon.shape != (model.config.vocab_size,):
            raise QualaError(f"a lexicon of shape {tuple(lexicon.shape)} for a vocabulary of {model.config.vocab_size}")
        model.lexicon = lexicon.float().to(model.qa_outputs.weight.device)
    if scorer_kind(scorers[0].in_features, model.config.hidden_size) == "lexical" and model.lexicon is None:
        raise QualaError("'lexical' scorers need a lexicon (idf per word piece); none was given")
    for layer, scorer in zip(model.layers, scorers):
        layer.scorer = scorer
    return model


def save_scorers(scorers: list[nn.Linear], path: str | os.PathLike, lexicon: torch.Tensor | None = None) -> Path:
    tensors = {f"layers.{i}.scorer.{k}": v.detach().contiguous() for i, s in enumerate(scorers)
               for k, v in s.state_dict().items()}
    if lexicon is not None:
        tensors[LEXICON_KEY] = lexicon.detach().float().cpu().contiguous()
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path


LEXICON_KEY = "lexicon.idf"


def load_scorers(path: str | os.PathLike, hidden_size: int) -> tuple[list[nn.Linear], torch.Tensor | None]:
    """(the scorers of every layer, the lexicon or None)."""
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise QualaError(f"{path}: cannot read scorer weights ({e})") from None
    scorers = []
    widths = list(scorer_widths(hidden_size))
    for i in range(sum(k.endswith(".scorer.weight") for k in tensors)):
        weight = tensors.get(f"layers.{i}.scorer.weight")
        width = weight.shape[-1] if weight is not None and weight.shape[-1] in widths else widths[0]
        lin = nn.Linear(width, 1)
        try:
            lin.load_state_dict({k: tensors[f"layers.{i}.scorer.{k}"] for k in ("weight", "bias")})
        except (KeyError, RuntimeError) as e:
            raise QualaError(f"{path}: layer {i}'s scorer is missing or of the wrong shape ({e})") from None
        scorers.append(lin)
    return scorers, tensors.get(LEXICON_KEY)


def hf_names(model: nn.Module) -> dict[str, str]:
    """Our parameter names -> Hugging Face BertForQuestionAnswering names."""
    prefixes = {"embed.word.": "bert.embeddings.word_embeddings.",
                "embed.position.": "bert.embeddings.position_embeddings.",
                "embed.token_type.": "bert.embeddings.token_type_embeddings.",
                "embed.norm.": "bert.embeddings.LayerNorm.", "qa_outputs.": "qa_outputs."}
    for i in range(len(model.layers)):
        hf = f"bert.encoder.layer.{i}."
        prefixes.update({f"layers.{i}.query.": hf + "attention.self.query.",
                         f"layers.{i}.key.": hf + "attention.self.key.",
                         f"layers.{i}.value.": hf + "attention.self.value.",
                         f"layers.{i}.attn_out.": hf + "attention.output.dense.",
                         f"layers.{i}.attn_norm.": hf + "attention.output.LayerNorm.",
                         f"layers.{i}.ffn_in.": hf + "intermediate.dense.",
                         f"layers.{i}.ffn_out.": hf + "output.dense.",
                         f"layers.{i}.ffn_norm.": hf + "output.LayerNorm."})
    names = {}
    for name in model.state_dict():
        if ".scorer." in name:  # the learned ranking's, saved on its own (SCORER_FILE)
            continue
        prefix = next(p for p in prefixes if name.startswith(p))
        names[name] = prefixes[prefix] + name[len(prefix):]
    return names


def load(path: str | os.PathLike) -> tuple[QualaForQuestionAnswering, object]:
    """A model directory -> (model in eval mode, its tokenizer)."""
    return QualaForQuestionAnswering.from_pretrained(path), load_tokenizer(path)
