"""How far is the learned ranking from the best it could be, and at which layer? Each layer's ranking replaced by an
oracle that knows where the full-length model puts its answer.

    python benchmarks/oracle_ranking.py [--model DIR] [--configs "1,0.99,0.71,0.61,0.19,0.19;..."]
        [--variants "learned;oracle;oracle@0;oracle@1-5;learned+question-last@4;oracle+question-last@4"]
        [--limit 500] [--offset 2400]

The oracle ranks a window's tokens by quala.scorer.targets of the same window's full-length logits: the answer mass
within RADIUS tokens, the question's tokens, [CLS] and [SEP] first (what the learned scorers are fitted to predict).
It costs a full-length pass, so it is a diagnosis, not a ranking to ship. Variants, each scored at every
configuration:
- "learned": the model's scorers (the shipped ranking); "oracle": the oracle at every layer;
- "oracle@0" / "oracle@1-5": the oracle at those layers (0-based), the learned scorers at the others;
- "+question-last@L": from layer L on, the question's tokens rank after every context token ([CLS] stays first;
  ModelConfig.question_last_layer). Without it a variant keeps the model's own setting.
The oracle's per-token value rides along in the lexical prior, which the model gathers with the slots it keeps, so
the model needs "lexical" scorers. Held-out TRAIN questions (the search's split, from --offset, never the dev set),
PyTorch fp32. Output: a markdown table of F1 per configuration and variant.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from quala import modeling
from quala.budget import configs_to_score
from quala.config import LengthConfig, QualaError, default_model_dir, exit_status
from quala.data import make_features
from quala.evaluate import evaluate
from quala.flops import mean_gmacs
from quala.modeling import QualaForQuestionAnswering
from quala.scorer import targets
from quala.search import heldout_questions
from quala.tokenizer import load_tokenizer

VARIANTS = "learned;oracle;oracle@0;oracle@1-5;learned+question-last@4;oracle+question-last@4"


def parse_variant(text: str, layers: int) -> tuple[frozenset[int], int | None]:
    """"oracle@1-5+question-last@4" -> (layers ranked by the oracle, first layer ranking the question last)."""
    oracle, question_last = frozenset(), None
    for part in text.strip().split("+"):
        name, _, at = part.partition("@")
        if name == "learned" and not at:
            continue
        if name == "oracle":
            oracle = frozenset(range(layers)) if not at else layer_set(at)
        elif name == "question-last" and at.isdigit():
            question_last = int(at)
        else:
            raise QualaError(f"variant {text!r}: parts are learned, oracle[@layers] and question-last@L")
        if any(not 0 <= i < layers for i in oracle) or (question_last is not None and question_last >= layers):
            raise QualaError(f"variant {text!r}: layers are 0..{layers - 1}")
    return oracle, question_last


def layer_set(text: str) -> frozenset[int]:
    """"1-5" or "0,2" -> those layers."""
    if "-" in text:
        first, last = text.split("-")
        return frozenset(range(int(first), int(last) + 1))
    return frozenset(int(v) for v in text.split(","))


def oracle_values(start: np.ndarray, end: np.ndarray, mask: np.ndarray, types: np.ndarray) -> torch.Tensor:
    """(B, N) quala.scorer.targets per window; the context is segment 1 without the closing [SEP]."""
    values = np.zeros(start.shape, dtype=np.float32)
    for row in range(len(start)):
        n = int(mask[row].sum())
        context = (types[row, :n] == 1) & (np.arange(n) < n - 1)
        values[row, :n] = targets(start[row, :n], end[row, :n], context)
    return torch.as_tensor(values)


class OraclePredictor:
    """A Predictor (quala.evaluate) ranking by the oracle at `oracle_layers` and the learned scorers elsewhere."""

    def __init__(self, model: QualaForQuestionAnswering, oracle_layers: frozenset[int], question_last: int | None,
                 cache: dict[bytes, np.ndarray] | None = None):
        """cache: each window's oracle values by its token ids, shared by predictors over the same windows so that
        each window's full-length pass runs once."""
        if model.config.ranking != "learned" or not model.reads_lexicon:
            raise QualaError("the oracle rides in the lexical prior: the model needs 'lexical' learned scorers "
                             "(quala fit-scorer)")
        self.model, self.oracle_layers, self.question_last = model.eval(), oracle_layers, question_last
        self.index = {id(layer): i for i, layer in enumerate(model.layers)}
        self.values: torch.Tensor | None = None
        self.cache = {} if cache is None else cache

    def rank(self, learned, s: modeling.Signals, layer) -> torch.Tensor:
        i = self.index[id(layer)]
        if i in self.oracle_layers:
            score = s.prior[..., -1]
        else:
            score = learned(s._replace(prior=s.prior[..., :-1]), layer)
        return score

    @contextmanager
    def installed(self):
        """The oracle's values appended to the lexical prior and this ranking as "learned", for one call."""
        learned, prior = modeling.RANKINGS["learned"], self.model.lexical_prior
        modeling.RANKINGS["learned"] = lambda s, layer: self.rank(learned, s, layer)
        self.model.lexical_prior = lambda *a, **k: torch.cat([prior(*a, **k), self.values[..., None]], -1)
        question_last = self.model.config.question_last_layer  # the model's own unless the variant names one
        if self.question_last is not None:
            self.model.config.question_last_layer = self.question_last
        try:
            yield
        finally:
            modeling.RANKINGS["learned"] = learned
            del self.model.lexical_prior
            self.model.config.question_last_layer = question_last

    def oracle(self, batch: dict) -> torch.Tensor:
        """(B, N) oracle values of the batch's windows, from the cache or one full-length pass (inside installed():
        the prior's extra column is zeros then)."""
        lengths = batch["attention_mask"].sum(1)
        keys = [row[:n].tobytes() for row, n in zip(batch["input_ids"], lengths)]
        if any(k not in self.cache for k in keys):
            ids, mask, types = (torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
            full = self.model(ids, mask, types)
            values = oracle_values(full.start_logits.numpy(), full.end_logits.numpy(), batch["attention_mask"],
                                   batch["token_type_ids"])
            self.cache.update((k, v[:n]) for k, v, n in zip(keys, values.numpy(), lengths))
        values = np.zeros(batch["input_ids"].shape, dtype=np.float32)
        for row, (k, n) in enumerate(zip(keys, lengths)):
            values[row, :n] = self.cache[k]
        return torch.as_tensor(values)

    def __call__(self, batch: dict, length_config: LengthConfig | None):
        ids, mask, types = (torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        with torch.inference_mode(), self.installed():
            self.values = torch.zeros(ids.shape)
            if self.oracle_layers and length_config is not None:
                self.values = self.oracle(batch)
            out = self.model(ids, mask, types, length_config)
        return out.start_logits.numpy(), out.end_logits.numpy(), out.kept.numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="quala model directory (default: the released model)")
    p.add_argument("--configs", default=None,
                   help="';'-separated length configurations (default: full and the front's named points)")
    p.add_argument("--variants", default=VARIANTS, help=f"';'-separated rankings to compare (default {VARIANTS!r})")
    p.add_argument("--limit", type=int, default=500, help="held-out questions (default 500)")
    p.add_argument("--offset", type=int, default=2400,
                   help="first held-out question (default 2400: after the search's and the confirmation's)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    return exit_status(run, args)


def run(args) -> None:
    model_dir = args.model or default_model_dir()
    model = QualaForQuestionAnswering.from_pretrained(model_dir)
    config = model.config
    layers = config.num_hidden_layers
    variants = {v.strip(): parse_variant(v, layers) for v in args.variants.split(";") if v.strip()}
    configs = configs_to_score(model_dir, args.configs, config)
    examples, _ = heldout_questions(config, args.offset, args.limit)
    tokenizer = load_tokenizer(model_dir)
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    lengths = [len(f) for f in features]
    full = mean_gmacs(config, None, lengths)
    cache: dict[bytes, np.ndarray] = {}
    predictors = {name: OraclePredictor(model, *parsed, cache) for name, parsed in variants.items()}
    print(f"{len(examples)} held-out questions from {args.offset}, {len(features)} windows; PyTorch fp32; F1\n")
    print("| length config | fewer MACs | " + " | ".join(predictors) + " |")
    print("| --- | ---: |" + " ---: |" * len(predictors))
    for lc in configs:
        scored = predictors.values() if lc is not None else [next(iter(predictors.values()))]  # full: one ranking
        f1 = [evaluate(pred, tokenizer, examples, lc, args.batch_size, features=features, progress=False).f1
              for pred in scored]
        cells = f1 * (len(predictors) // len(f1))
        print(f"| {lc or 'full'} | {full / mean_gmacs(config, lc, lengths):.2f}x | "
              + " | ".join(f"{v:.2f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
