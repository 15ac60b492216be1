"""A learned token ranking: one linear scorer per layer, fitted to where the full-length model puts its answer.

Block-skimming QA methods learn which parts of a context the answer needs; this is the smallest version of that
idea. Each layer's scorer reads what the layer already has when it ranks its tokens, the input state and the
context it attended to ([x, context], 2H values, so 769 parameters at H = 384), and predicts how much of the
full-length model's answer probability lies near the token: log(1e-4 + max over the tokens within `RADIUS` of the
start plus end probability), with the question, [CLS] and [SEP] given the top target so they are kept first. The
weights are a ridge regression on SQuAD *training* features at full length (closed form, no gradient steps), so
fitting takes one forward pass over the features; the backbone is unchanged. Used as ranking "learned"; quala.modeling saves them as DIR/scorer.safetensors.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quala.config import QualaError, squad_path
from quala.data import Example, Feature, collate, length_grouped_batches, load_squad, make_features, split_articles
from quala.modeling import SCORER_FILE, QualaForQuestionAnswering, save_scorers
from quala.tokenizer import load_tokenizer

RADIUS = 8  # tokens either side of a likely answer token that count as its neighbourhood
RIDGE = 1e-2  # L2 weight, relative to the mean diagonal of the features' second moment


def targets(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, radius: int = RADIUS
            ) -> np.ndarray:
    """Per token of one feature: log(1e-4 + the answer mass within `radius`), the top value off the context."""
    p = np.exp(start_logits - start_logits.max())
    q = np.exp(end_logits - end_logits.max())
    mass = p / p.sum() + q / q.sum()
    near = np.lib.stride_tricks.sliding_window_view(np.pad(mass, radius), 2 * radius + 1).max(1)
    t = np.log(1e-4 + near)
    return np.where(context, t, np.log(1e-4 + 2.0))


def fit(model: QualaForQuestionAnswering, features: list[Feature], batch_size: int = 32) -> list[nn.Linear]:
    """Ridge-regression scorers for every layer from full-length runs over `features` (training data only).
    The normal equations are summed in float64 on the model's device, one matrix product per batch and layer."""
    model.eval()
    layers = len(model.layers)
    h = model.config.hidden_size
    device = next(model.parameters()).device
    xtx = [torch.zeros(2 * h + 1, 2 * h + 1, dtype=torch.float64, device=device) for _ in range(layers)]
    xty = [torch.zeros(2 * h + 1, dtype=torch.float64, device=device) for _ in range(layers)]

    for idx in length_grouped_batches([len(f) for f in features], batch_size):
        batch = collate([features[i] for i in idx])
        ids, mask, types = (torch.as_tensor(batch[k], device=device)
                            for k in ("input_ids", "attention_mask", "token_type_ids"))
        with torch.no_grad():
            out = model(ids, mask, types)
            states = layer_inputs(model, ids, mask, types)
        start, end = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        # the real tokens of the batch, row by row: the order of x[valid] below
        y = np.concatenate([targets(start[row, :len(features[i])], end[row, :len(features[i])],
                                    features[i].offsets[:, 0] >= 0) for row, i in enumerate(idx)])
        y = torch.as_tensor(y, dtype=torch.float64, device=device)
        valid = mask.bool()
        for layer, (x, ctx) in enumerate(states):
            a = torch.cat([x[valid], ctx[valid], torch.ones(len(y), 1, device=device)], 1).double()
            xtx[layer] += a.T @ a
            xty[layer] += a.T @ y
    xtx = [m.cpu().numpy() for m in xtx]
    xty = [v.cpu().numpy() for v in xty]
    scorers = []
    for layer in range(layers):
        ridge = RIDGE * np.trace(xtx[layer]) / len(xtx[layer]) * np.eye(len(xtx[layer]))
        ridge[-1, -1] = 0.0  # no penalty on the bias
        w = np.linalg.solve(xtx[layer] + ridge, xty[layer])
        lin = nn.Linear(2 * h, 1)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w[:-1], dtype=torch.float32)[None, :])
            lin.bias.fill_(float(w[-1]))
        scorers.append(lin)
    return scorers


def layer_inputs(model: QualaForQuestionAnswering, ids, mask, types) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input states, attended context) of every layer at full length: what each layer ranks its tokens by."""
    valid = mask.bool()
    x = model.embed(ids, types)
    out = []
    for layer in model.layers:
        out.append((x, layer.attend(x, valid)[1]))
        x, _, _ = layer(x, valid, None)
    return out


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
            heldout_fraction: float | None = None) -> Path:
    """Fit the scorers of a model directory's float weights and save them as DIR/scorer.safetensors."""
    model_dir = Path(model_dir)
    model = QualaForQuestionAnswering.from_pretrained(model_dir)
    c = model.config
    features = make_features(fitting_examples(model, questions, train_file, heldout_fraction),
                             load_tokenizer(model_dir), c.max_seq_length, c.doc_stride, c.max_query_length)
    t0 = time.perf_counter()
    path = save_scorers(fit(model, features), model_dir / SCORER_FILE)
    print(f"scorers fitted on {len(features)} training features in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path
