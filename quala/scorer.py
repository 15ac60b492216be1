"""A learned token ranking: one linear scorer per layer, fitted to where the full-length model puts its answer.

Block-skimming QA methods learn which parts of a context the answer needs; this is the smallest version of that
idea. Each layer's scorer reads what the layer already has when it ranks its tokens (quala.config.SCORER_INPUTS):
the input state and the context it attended to ([x, context], 2H values, 769 parameters at H = 384); "question"
also each state matched to the question's mean state and the attention the question pays the token (3H + 1
values); and by default ("lexical") also where the question's rarer word pieces occur in the context, how near the token
is to them and how much of the question the context around it holds (quala.modeling.lexical_prior, from the token
ids and an idf table counted on the training articles: the first layer's hidden states barely know yet where the
answer is, the question's words do). It predicts how much of the full-length model's answer probability lies near the token:
log(1e-4 + max over the tokens within `RADIUS` of the start plus end probability), with the question, [CLS] and
[SEP] given the top target so they are kept first. The weights are a ridge regression on SQuAD *training* features
(closed form, no gradient steps), so fitting takes one forward pass over the features per configuration; the
backbone is unchanged. By default the states are those of the full-length run; `configs` adds the states each
layer ranks when the model already drops tokens (a sub-model's layers see fewer tokens than at full length, so
their states differ from the ones a full-length fit saw). Used as ranking "learned"; quala.modeling saves them as
DIR/scorer.safetensors.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quala.config import LengthConfig, QualaError, squad_path
from quala.data import Example, Feature, collate, length_grouped_batches, load_squad, make_features, split_articles
from quala.modeling import (LEXICAL_FEATURES, QUESTION_RANKINGS, SCORER_FILE, QualaForQuestionAnswering, Signals,
                            attach_scorers, save_scorers, scorer_inputs, scorer_kind, scorer_width)
from quala.onnx_ops import gather_rows
from quala.tokenizer import load_tokenizer

RADIUS = 8  # tokens either side of a likely answer token that count as its neighbourhood
RIDGE = 1e-2  # L2 weight, relative to the mean diagonal of the features' second moment


def targets(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, radius: int = RADIUS
            ) -> np.ndarray:
    """Per token of one feature: log(1e-4 + the answer mass within `radius`), the top value off the context."""
    start, end = (torch.as_tensor(np.asarray(v, dtype=np.float32))[None] for v in (start_logits, end_logits))
    valid = torch.ones(start.shape, dtype=torch.bool)
    return answer_targets(start, end, valid, torch.as_tensor(np.asarray(context))[None], radius)[0].numpy()


def answer_targets(start_logits: torch.Tensor, end_logits: torch.Tensor, valid: torch.Tensor, context: torch.Tensor,
                   radius: int = RADIUS) -> torch.Tensor:
    """(B, N) what the scorers predict, for a batch: log(1e-4 + the most start plus end probability of the
    full-length model within `radius` tokens), log(1e-4 + 2) off the context (question, [CLS], [SEP]: kept first);
    valid (B, N) the real tokens, context (B, N) the context's. Padding's values are never read."""
    mass = sum(logits.float().masked_fill(~valid, -torch.inf).softmax(-1) for logits in (start_logits, end_logits))
    near = F.max_pool1d(mass[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return torch.where(context, torch.log(1e-4 + near), math.log(1e-4 + 2.0))


def fit(model: QualaForQuestionAnswering, features: list[Feature], batch_size: int = 32,
        configs: Sequence[LengthConfig | None] = (None,), inputs: str | None = None) -> list[nn.Linear]:
    """Ridge-regression scorers for every layer from runs over `features` (training data only) under each of
    `configs` (None: full length; a length config: the states its layers rank, the tokens its earlier layers kept
    under the model's current ranking). Each run's rows count alike. inputs: what the scorers read
    (quala.config.SCORER_INPUTS; None: what the model's scorers read, "question" if it has none). The normal
    equations are summed in float64 on the model's device, one matrix product per batch, configuration and layer."""
    model.eval()
    layers = len(model.layers)
    inputs = inputs or current_inputs(model)
    width = scorer_width(inputs, model.config.hidden_size) + 1  # and the bias
    device = next(model.parameters()).device
    xtx = [torch.zeros(width, width, dtype=torch.float64, device=device) for _ in range(layers)]
    xty = [torch.zeros(width, dtype=torch.float64, device=device) for _ in range(layers)]
    for lc in configs:
        if lc is not None:
            lc.check(layers, model.config.max_seq_length)

    for idx in length_grouped_batches([len(f) for f in features], batch_size):
        batch = collate([features[i] for i in idx])
        ids, mask, types = (torch.as_tensor(batch[k], device=device)
                            for k in ("input_ids", "attention_mask", "token_type_ids"))
        with torch.no_grad():
            out = model(ids, mask, types)
        context = torch.as_tensor(batch["context"], device=device)
        y = answer_targets(out.start_logits, out.end_logits, mask.bool(), context).double()  # full-length run's
        for lc in configs:
            counts = None if lc is None else lc.token_counts(mask.sum(1))
            with torch.no_grad():
                states = layer_inputs(model, ids, mask, types, counts, inputs)
            for layer, (x, valid, positions) in enumerate(states):
                a = torch.cat([x[valid], torch.ones(int(valid.sum()), 1, device=device)], 1).double()
                xtx[layer] += a.T @ a
                xty[layer] += a.T @ y.gather(1, positions)[valid]
    xtx = [m.cpu().numpy() for m in xtx]
    xty = [v.cpu().numpy() for v in xty]
    scorers = []
    for layer in range(layers):
        ridge = RIDGE * np.trace(xtx[layer]) / len(xtx[layer]) * np.eye(len(xtx[layer]))
        ridge[-1, -1] = 0.0  # no penalty on the bias
        w = np.linalg.solve(xtx[layer] + ridge, xty[layer])
        lin = nn.Linear(width - 1, 1)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w[:-1], dtype=torch.float32)[None, :])
            lin.bias.fill_(float(w[-1]))
        scorers.append(lin)
    return scorers


def fit_with_sub_models(model: QualaForQuestionAnswering, features: list[Feature],
                        configs: Sequence[LengthConfig] = (), refit: bool = False, inputs: str | None = None
                        ) -> list[nn.Linear]:
    """Scorers fitted at full length and on the states of `configs`' sub-models, whose tokens are those the model's
    scorers keep: fitted first at full length when it has none (or `refit`). Without configs: the full-length fit."""
    inputs = inputs or current_inputs(model)
    if not configs:
        return fit(model, features, inputs=inputs)
    if refit or any(layer.scorer is None for layer in model.layers):
        attach_scorers(model, fit(model, features, inputs=inputs))
    ranking, model.config.ranking = model.config.ranking, "learned"
    try:
        return fit(model, features, configs=(None, *configs), inputs=inputs)
    finally:
        model.config.ranking = ranking


def current_inputs(model: QualaForQuestionAnswering) -> str:
    """What the model's scorers read ("question" when it has none: the default for new fits)."""
    scorer = model.layers[0].scorer
    return "question" if scorer is None else scorer_kind(scorer.in_features, model.config.hidden_size)


def layer_inputs(model: QualaForQuestionAnswering, ids, mask, types, token_counts: torch.Tensor | None = None,
                 inputs: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """What each layer's scorer reads, per layer: (scorer inputs (B, K, width) of kind `inputs` (None: what the
    model's scorers read), real slots, each slot's position in the input), at full length, or with `token_counts`
    (B, layers) kept as the model's forward keeps them (its ranking, [CLS] first). Kind "lexical" needs the
    model's lexicon."""
    inputs = inputs or current_inputs(model)
    valid = mask.bool()
    queries = valid & (types == 0)
    ranking = model.config.ranking
    if inputs == "lexical" and model.lexicon is None:
        raise QualaError("'lexical' scorer inputs need the model's lexicon (fit_lexicon)")
    needs_prior = inputs == "lexical" or (ranking in QUESTION_RANKINGS and model.reads_lexicon)
    features = LEXICAL_FEATURES if inputs == "lexical" else model.prior_features
    prior = model.lexical_prior(ids, valid, queries, features) if needs_prior else None
    x = model.embed(ids, types)
    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape)
    current = valid.sum(1)
    out = []
    for i, layer in enumerate(model.layers):
        probs, context = layer.attend(x, valid)
        out.append((scorer_inputs(Signals(probs, valid, queries, x, context, prior), inputs), valid, positions))
        keep = None if token_counts is None else torch.minimum(token_counts[:, i], current).clamp(min=1)
        question = ranking in QUESTION_RANKINGS
        x, valid, slots, _ = layer(x, valid, keep, ranking, queries if question else None,
                                   prior if question and model.reads_lexicon else None)
        if slots is not None:
            positions, current = positions.gather(1, slots), keep
            queries = queries.gather(1, slots) & valid
            prior = None if prior is None else gather_rows(prior, slots)
    return out


def fit_lexicon(examples: list[Example], tokenizer, vocab_size: int) -> torch.Tensor:
    """Inverse document frequency of every word piece over the examples' distinct contexts (training articles),
    log((1 + contexts) / (1 + contexts holding it)); 0 for the tokenizer's special tokens, which never match."""
    contexts = sorted({e.context for e in examples})
    if not contexts:
        raise QualaError("no contexts to count word pieces in")
    df = np.zeros(vocab_size)
    for encoding in tokenizer.base.encode_batch(contexts, add_special_tokens=False):
        ids = np.unique(encoding.ids)
        df[ids[ids < vocab_size]] += 1
    idf = np.log((1 + len(contexts)) / (1 + df))
    vocab = tokenizer.get_vocab()
    idf[[vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if vocab.get(t, vocab_size) < vocab_size]] = 0
    return torch.as_tensor(idf, dtype=torch.float32)


def fitting_examples(model: QualaForQuestionAnswering, questions: int, train_file: str = "",
                     heldout_fraction: float | None = None) -> list[Example]:
    """`questions` questions spread evenly over the *training* articles of the model's own split: never the
    held-out articles the length search scores, never dev."""
    trained = (model.config.extra or {}).get("train_config", {})
    path = train_file or trained.get("train_file") or str(squad_path("train"))
    fraction = heldout_fraction if heldout_fraction is not None else trained.get("heldout_fraction", 0.05)
    train, _ = split_articles(load_squad(path, limit=None if train_file else trained.get("limit")), fraction)
    if not train:
        raise QualaError(f"{path}: no training articles to fit the scorers on")
    return train[:: max(1, len(train) // questions)][:questions]


def fit_dir(model_dir: str | os.PathLike, questions: int = 2000, train_file: str = "",
            heldout_fraction: float | None = None, configs: Sequence[LengthConfig] = (), inputs: str = "lexical"
            ) -> Path:
    """Fit the scorers of a model directory's float weights and save them as DIR/scorer.safetensors: on
    full-length states, and with `configs` also on the states of those sub-models, ranked by the directory's
    scorers (fitted first at full length when it has none, or when they read other inputs). "lexical" scorers
    also get their lexicon, counted on every training article's context, saved in the same file."""
    model_dir = Path(model_dir)
    model = QualaForQuestionAnswering.from_pretrained(model_dir)
    c = model.config
    for lc in configs:
        lc.check(len(model.layers), c.max_seq_length)
    tokenizer = load_tokenizer(model_dir)
    features = make_features(fitting_examples(model, questions, train_file, heldout_fraction),
                             tokenizer, c.max_seq_length, c.doc_stride, c.max_query_length)
    t0 = time.perf_counter()
    refit = current_inputs(model) != inputs
    if inputs == "lexical" and (refit or model.lexicon is None):
        model.lexicon = fit_lexicon(fitting_examples(model, 10 ** 9, train_file, heldout_fraction),
                                    tokenizer, c.vocab_size)
    lexicon = model.lexicon if inputs == "lexical" else None
    path = save_scorers(fit_with_sub_models(model, features, configs, refit, inputs), model_dir / SCORER_FILE, lexicon)
    print(f"scorers fitted on {len(features)} training features under {1 + len(configs)} configuration(s) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path
