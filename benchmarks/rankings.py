"""Which tokens to keep, and how deep to go: token rankings and skipped layers compared zero-shot.

    python benchmarks/rankings.py [--model DIR] [--rankings attention,question,cls] [--limit 2000] [--offset 2400]
                                  [--depth] [--configs "1,1,1,0.5,0.3,0.2;..."] [--work runs/rankings]

The same weights (no training) scored with every ranking (quala.modeling.RANKINGS) at the same length
configurations, on held-out TRAIN questions (quala.data.split_articles, the split the search uses; never the dev
set): questions offset..offset+limit of it. The default offset 2,400 skips the questions the shipped front was
searched (400) and confirmed (2,000) on, so its configurations are not favoured by the sample. PyTorch fp32.

Configurations, priced in GMACs per held-out feature at its real length (quala.flops):
- front:     the model's front (length_configs.json) from --min-speedup to --max-speedup, thinned to --front-points;
- uniform:   every layer keeps the ratio r of the input length, r = 0.9 .. 0.3;
- geometric: layer l keeps g^(l+1) of the input length, g = 0.95 .. 0.7;
- custom:    --configs;
- learned (--rankings ...,learned): a linear scorer per layer fitted on training questions (quala.scorer), at
             full length, and with --fit-configs also on the states of those sub-models;
- depth (--depth): a ratio of 0 skips a layer (no compute; needs LengthConfig to allow 0): every single layer
             skipped at full length, every pair of layers skipped at full length, and the two best single skips
             added to each front configuration. A configuration whose running layers all keep every token does not
             drop tokens, so it is scored once, whatever the ranking.
Scores are cached in WORK/scores.json (keyed by ranking and configuration); --max-minutes stops early, a rerun goes
on. Output: a markdown table (F1 per ranking side by side), the best F1 per ranking at 1.2x/1.5x/2x/3x fewer MACs,
WORK/rankings.json and a plot of F1 against GMACs, one series per ranking (WORK/rankings.png).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quala.budget import read_front
from quala.config import SCORER_INPUTS, LengthConfig, ModelConfig, QualaError, default_model_dir
from quala.data import make_features
from quala.evaluate import TorchPredictor, evaluate
from quala.files import atomic_write, write_json_atomic
from quala.flops import mean_gmacs
from quala.modeling import QualaForQuestionAnswering
from quala.search import ScoreCache, heldout_questions, weights_digest
from quala.tokenizer import load_tokenizer

UNIFORM = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
GEOMETRIC = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
TARGETS = (1.2, 1.5, 2.0, 3.0)


@dataclass
class Config:
    family: str
    lc: LengthConfig | None

    @property
    def key(self) -> str:
        return str(self.lc) if self.lc else "full"

    def ranked(self) -> bool:
        """False when no layer drops a token (full length, or only skipped layers): every ranking is the same."""
        return self.lc is not None and any(0 < v < 1 or self.lc.unit == "tokens" for v in self.lc.values)


def front_configs(model_dir: Path, config: ModelConfig, lengths: list[int], lo: float, hi: float, n: int
                  ) -> list[LengthConfig]:
    """The front's configurations from lo to hi times fewer MACs, n of them spread evenly in log cost."""
    full = mean_gmacs(config, None, lengths)
    points = sorted({str(p.length_config): p.length_config for p in read_front(model_dir).configs
                     if p.length_config is not None}.values(), key=lambda lc: mean_gmacs(config, lc, lengths))
    inside = [lc for lc in points if lo <= full / mean_gmacs(config, lc, lengths) <= hi]
    if len(inside) <= n:
        return inside
    cost = np.log([mean_gmacs(config, lc, lengths) for lc in inside])
    picks = [int(np.argmin(np.abs(cost - t))) for t in np.linspace(cost[0], cost[-1], n)]
    return [inside[i] for i in dict.fromkeys(picks)]


def with_skips(lc: LengthConfig | None, layers: tuple[int, ...], num_layers: int) -> LengthConfig:
    values = list(lc.values) if lc else [1.0] * num_layers
    return LengthConfig(tuple(0.0 if i in layers else v for i, v in enumerate(values)))


def depth_configs(num_layers: int) -> list[Config]:
    """Every layer, and every pair of layers, skipped at full length."""
    singles = [Config("skip 1", with_skips(None, (i,), num_layers)) for i in range(num_layers)]
    pairs = [Config("skip 2", with_skips(None, p, num_layers)) for p in itertools.combinations(range(num_layers), 2)]
    return singles + pairs


def score(cache: ScoreCache, ranking: str, c: Config, predictors: dict, tokenizer, examples, features, config,
          lengths, batch_size: int) -> dict:
    k = f"{ranking if c.ranked() else 'any'} {c.key}"
    if k not in cache:
        t0 = time.perf_counter()
        r = evaluate(predictors[ranking], tokenizer, examples, c.lc, batch_size, features=features, progress=False)
        cache.put(k, {"f1": r.f1, "em": r.exact_match, "gmacs": mean_gmacs(config, c.lc, lengths)})
        print(f"{ranking:9s} {c.key:32s} F1 {r.f1:6.2f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    return cache[k]


def attach_scorer(model, tokenizer, data: dict, args) -> None:
    """The "learned" ranking's scorers: fitted on --fit-scorer questions of the *training* articles (never the
    held-out ones scored here; quala.scorer.fitting_examples, as `quala fit-scorer` does), reading
    --scorer-inputs, kept in WORK/scorer-INPUTS.safetensors."""
    from quala import scorer
    from quala.modeling import SCORER_FILE, attach_scorers, load_scorers, save_scorers
    path = args.work / SCORER_FILE.replace("scorer", f"scorer-{args.scorer_inputs}")
    if not path.is_file():
        examples = scorer.fitting_examples(model, args.fit_scorer, data["train_file"], data["heldout_fraction"])
        features = make_features(examples, tokenizer, model.config.max_seq_length, model.config.doc_stride,
                                 model.config.max_query_length)
        t0 = time.perf_counter()
        configs = [lc for c in args.fit_configs.split(";") if (lc := LengthConfig.parse(c)) is not None]
        if args.scorer_inputs == "lexical":
            model.lexicon = scorer.fit_lexicon(scorer.fitting_examples(model, 10 ** 9, data["train_file"],
                                                                       data["heldout_fraction"]),
                                               tokenizer, model.config.vocab_size)
        save_scorers(scorer.fit_with_sub_models(model, features, configs, refit=True, inputs=args.scorer_inputs),
                     path, model.lexicon if args.scorer_inputs == "lexical" else None)
        print(f"scorer fitted on {len(features)} training features in {time.perf_counter() - t0:.0f} s: {path}",
              file=sys.stderr)
    attach_scorers(model, *load_scorers(path, model.config.hidden_size))


def run(args) -> dict:
    model_dir = Path(args.model or default_model_dir())
    model = QualaForQuestionAnswering.from_pretrained(model_dir)
    tokenizer = load_tokenizer(model_dir)
    config = model.config
    examples, data = heldout_questions(config, args.offset, args.limit)
    args.work.mkdir(parents=True, exist_ok=True)
    if "learned" in args.rankings:
        attach_scorer(model, tokenizer, data, args)
    predictors = {r: TorchPredictor(model, ranking=r) for r in args.rankings}
    features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    lengths = [len(f) for f in features]
    fingerprint = {"model": weights_digest(model_dir, predictors[args.rankings[0]]), "runtime": "torch-fp32",
                   "train_file": data["train_file"], "heldout_fraction": data["heldout_fraction"],
                   "offset": args.offset, "limit": args.limit,
                   "scorer_inputs": args.scorer_inputs if "learned" in args.rankings else None}
    cache = ScoreCache(args.work / "scores.json", fingerprint)
    layers = config.num_hidden_layers
    front = front_configs(model_dir, config, lengths, args.min_speedup, args.max_speedup, args.front_points)
    configs = [Config("full", None)] + [Config("front", lc) for lc in front]
    if args.grid:
        configs += [Config("uniform", LengthConfig((r,) * layers)) for r in UNIFORM]
        configs += [Config("geometric", LengthConfig(tuple(round(g ** (i + 1), 4) for i in range(layers))))
                    for g in GEOMETRIC]
    configs += [Config("custom", LengthConfig.parse(c)) for c in args.configs.split(";") if c.strip()]
    deadline = time.monotonic() + 60 * args.max_minutes
    done = True

    def score_all(todo: list[Config]) -> None:
        nonlocal done
        for c in todo:
            for r in args.rankings:
                if time.monotonic() > deadline:
                    done = False
                    return
                score(cache, r, c, predictors, tokenizer, examples, features, config, lengths, args.batch_size)

    score_all(configs)
    if args.depth and done:
        extra = depth_configs(layers)
        score_all(extra)
        if done:  # the two layers whose skip costs least at full length, added to each front configuration
            singles = sorted(extra[:layers], key=lambda c: -cache[f"any {c.key}"]["f1"])[:2]
            best = [next(i for i, v in enumerate(c.lc.values) if v == 0) for c in singles]
            combos = [Config("skip + front", with_skips(lc, (i,), layers)) for i in best for lc in front]
            score_all(combos)
            extra += combos
        configs += extra
    full = mean_gmacs(config, None, lengths)
    rows = []
    for c in configs:
        scores = {r: cache.scores.get(f"{r if c.ranked() else 'any'} {c.key}") for r in args.rankings}
        if all(s is None for s in scores.values()):
            continue
        gmacs = mean_gmacs(config, c.lc, lengths)
        rows.append({"family": c.family, "length_config": c.key, "gmacs": gmacs, "speedup": full / gmacs,
                     "f1": {r: s["f1"] if s else None for r, s in scores.items()}})
    rows.sort(key=lambda r: -r["gmacs"])
    info = {"model": str(model_dir), "runtime": "torch-fp32", "questions": len(examples), "features": len(features),
            "offset": args.offset, "heldout": data, "rankings": list(args.rankings), "complete": done,
            "scorer_inputs": args.scorer_inputs if "learned" in args.rankings else None}
    return {"info": info, "rows": rows}


def best_at(rows: list[dict], ranking: str, target: float, families: set[str] | None = None) -> dict | None:
    """The most accurate row at least `target` times cheaper than full length (families: only those)."""
    ok = [r for r in rows if r["speedup"] >= target - 1e-9 and r["f1"].get(ranking) is not None
          and (families is None or r["family"] in families)]
    return max(ok, key=lambda r: r["f1"][ranking], default=None)


def markdown(result: dict) -> str:
    rankings, rows = result["info"]["rankings"], result["rows"]
    lines = [f"{result['info']['questions']} held-out train questions ({result['info']['features']} features), "
             f"PyTorch fp32, F1 per ranking:", "",
             "| family | length config | GMACs | speed-up | " + " | ".join(rankings) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in rankings) + " |"]
    for r in rows:
        f1 = [r["f1"][k] for k in rankings]
        top = max((v for v in f1 if v is not None), default=None)
        cells = ["-" if v is None else (f"**{v:.2f}**" if v == top and len(set(f1)) > 1 else f"{v:.2f}") for v in f1]
        lines.append(f"| {r['family']} | {r['length_config']} | {r['gmacs']:.3f} | {r['speedup']:.2f}x | "
                     + " | ".join(cells) + " |")
    lines += ["", "Best F1 at or beyond each speed-up (any configuration above; token dropping only / with a "
              "skipped layer):", "", "| ranking | " + " | ".join(f">= {t}x" for t in TARGETS) + " |",
              "| --- | " + " | ".join("---" for _ in TARGETS) + " |"]
    depth = {"skip 1", "skip 2", "skip + front"}
    token = {r["family"] for r in rows} - depth
    for k in rankings:
        cells = []
        for t in TARGETS:
            a, b = best_at(rows, k, t, token), best_at(rows, k, t, depth)
            cells.append(" / ".join("-" if x is None else f"{x['f1'][k]:.2f} ({x['length_config']})" for x in (a, b)))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, k in enumerate(result["info"]["rankings"]):
        color = f"C{i}"
        for family, marker in (("token", "o"), ("depth", "x")):
            pts = [(r["gmacs"], r["f1"][k]) for r in result["rows"] if r["f1"][k] is not None
                   and (r["family"].startswith("skip") == (family == "depth"))]
            if pts:
                ax.scatter(*zip(*pts), color=color, marker=marker, s=22,
                           label=f"{k}" + (" (a layer skipped)" if family == "depth" else ""))
        pts = sorted((r["gmacs"], r["f1"][k]) for r in result["rows"] if r["f1"][k] is not None)
        envelope, best = [], -1.0
        for g, f in pts:  # the upper envelope: best F1 at or under each cost
            if f > best:
                envelope.append((g, f))
                best = f
        ax.plot(*zip(*envelope), color=color, lw=1)
    ax.set_xlabel("GMACs per feature (real length)")
    ax.set_ylabel("F1 (held-out train questions)")
    ax.set_title(f"Token rankings, zero-shot ({result['info']['questions']} held-out questions, fp32)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the released model)")
    p.add_argument("--rankings", default="attention,question,cls", help="rankings to compare, comma-separated")
    p.add_argument("--limit", type=int, default=2000, help="held-out questions scored (default 2000)")
    p.add_argument("--offset", type=int, default=2400, help="skip the first N held-out questions (default 2400)")
    p.add_argument("--front-points", type=int, default=10, help="front configurations compared (default 10)")
    p.add_argument("--min-speedup", type=float, default=1.1, help="cheapest front point's least speed-up")
    p.add_argument("--max-speedup", type=float, default=3.6, help="front points up to this speed-up")
    p.add_argument("--configs", default="", help="more length configurations, separated by ';'")
    p.add_argument("--depth", action="store_true", help="also configurations with a skipped layer")
    p.add_argument("--fit-scorer", type=int, default=2000,
                   help="training questions the 'learned' ranking's scorers are fitted on (default 2000)")
    p.add_argument("--fit-configs", default="",
                   help="also fit the scorers on these sub-models' states (ratio configurations separated by ';', "
                        "as `quala fit-scorer --length-configs`)")
    p.add_argument("--scorer-inputs", choices=SCORER_INPUTS, default="question",
                   help="what the 'learned' ranking's scorers read (as `quala fit-scorer --inputs`; default "
                        "question)")
    p.add_argument("--no-grid", dest="grid", action="store_false",
                   help="skip the uniform and geometric configurations (front, custom and depth only)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop scoring after this long (rerun to go on)")
    p.add_argument("--work", type=Path, default=Path("runs/rankings"), help="cache and outputs (default runs/rankings)")
    args = p.parse_args(argv)
    try:
        from quala.modeling import RANKINGS
        args.rankings = [r.strip() for r in args.rankings.split(",") if r.strip()]
        bad = [r for r in args.rankings if r not in RANKINGS]
        if bad or not args.rankings:
            raise QualaError(f"--rankings {','.join(bad)}: choose from {', '.join(RANKINGS)}")
        result = run(args)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(args.work / "rankings.json", result)
    plot(result, args.work / "rankings.png")
    text = markdown(result)
    atomic_write(args.work / "rankings.md", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    print(text)
    print(f"\n{'complete' if result['info']['complete'] else 'INCOMPLETE (rerun to go on)'}: "
          f"{args.work / 'rankings.md'}, {args.work / 'rankings.json'}, {args.work / 'rankings.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
