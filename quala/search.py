"""Evolutionary search for the length configurations that give the best F1 at each cost (Length-Adaptive
Transformer, Kim & Cho 2021, section 4).

Configurations are ratios, one per layer, monotone non-increasing, on a grid of `step`. Generation 0 is a
population spread over cost; each later generation adds `mutations` mutants and `crossovers` children of random
parents on the current Pareto front (cost = GMACs per feature, from quala.flops), and the front is recomputed over
everything scored so far. Scores are F1 on held-out training articles (quala.data.split_articles), never on the
dev set; the dev set only reports the final front. The front's points are then scored once more on a larger
held-out sample disjoint from the search's (`confirm_limit` questions), and names and budgets choose by that
score: a few hundred search questions rank points within a point of F1 of each other noisily. Every score is cached
on disk (a configuration is never scored twice) and the generation counter and random state are saved after each
generation, so an interrupted search resumes where it stopped.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from quala import flops
from quala.budget import Front, FrontPoint, front_path, name_points, read_front, write_front
from quala.config import LengthConfig, ModelConfig, QualaError, squad_path
from quala.data import Example, Feature, collate, load_squad, make_features, split_articles
from quala.evaluate import Predictor, TorchPredictor, evaluate
from quala.files import read_json, sha256, write_json_atomic

CACHE_FILE = "search_cache.json"
STATE_FILE = "search_state.json"
DEV_CACHE_FILE = "search_dev_cache.json"
CONFIRM_CACHE_FILE = "search_confirm_cache.json"


@dataclass
class SearchSettings:
    population: int = 20
    iterations: int = 30
    mutations: int = 30
    crossovers: int = 30
    mutation_prob: float = 0.5
    seed: int = 0
    min_ratio: float = 0.05  # the smallest ratio any layer may keep
    step: float = 0.01  # ratios are multiples of this
    limit: int | None = None  # questions of the search split scored (default all)
    confirm_limit: int = 2000  # held-out questions after the first `limit` that re-score the front (0: none)
    confirm_margin: float = 0.0  # also re-score configurations this close (search F1) to the front; see near_front
    dev_limit: int | None = None  # dev questions the front is reported on (default all)
    train_file: str = ""  # default: the model's training file, else the shared SQuAD train set
    dev_file: str = ""  # default: the shared SQuAD dev set
    heldout_fraction: float | None = None  # default: the model's training setting, else 0.05
    batch_size: int = 32
    latency: bool = False  # also time each front configuration (batch 1)
    latency_features: int = 32
    latency_repeats: int = 5
    work_dir: str = ""  # cache and state; default: the model directory
    progress: bool = True
    start_configs: tuple[str, ...] = ()  # joined to generation 0, e.g. an earlier model's front (start_configs())
    length_exponent: float = 1.0  # every configuration's LengthConfig.exponent (1: plain ratios)
    focus: tuple[float, ...] = ()  # (lo, hi): later generations only add configurations with that many times
    # fewer MACs than full length on the search's sample (see in_focus)

    EVOLUTION_KEYS = ("population", "mutations", "crossovers", "mutation_prob", "seed", "min_ratio", "step",
                      "start_configs", "length_exponent", "focus")


# ---- configurations ------------------------------------------------------------------------------------------
def on_grid(values: np.ndarray, s: SearchSettings) -> tuple[float, ...]:
    """Rounded to the grid, clipped to [min_ratio, 1] and made monotone non-increasing."""
    v = np.clip(np.round(np.asarray(values, dtype=float) / s.step) * s.step, s.min_ratio, 1.0)
    return tuple(round(float(x), 6) for x in np.minimum.accumulate(v))


def key(values: tuple[float, ...], exponent: float = 1.0) -> str:
    return str(LengthConfig(values, "ratio", exponent))


def initial_population(rng: np.random.Generator, layers: int, s: SearchSettings) -> list[tuple[float, ...]]:
    """From all tokens to about min_ratio: member j keeps ratios drawn in [t_j, sqrt(t_j)], t_j spread over cost."""
    targets = np.linspace(1.0, s.min_ratio, max(s.population, 1))
    return [on_grid(np.sort(rng.uniform(t, np.sqrt(t), layers))[::-1], s) for t in targets]


def start_configs(spec: str, s: SearchSettings) -> tuple[str, ...]:
    """Configurations for generation 0 from a length_configs.json or a model directory (its front's points) or
    'r,r,...;r,r,...': after more training, the last front is a better start than random draws alone; its points
    are scored afresh like any others."""
    if spec.endswith(".json") or is_directory(spec):
        configs = [p.length_config for p in read_front(spec).configs if p.length_config is not None]
    else:
        configs = [LengthConfig.parse(c) for c in spec.split(";") if c.strip()]
    if not configs or any(c is None or c.unit != "ratio" or c.exponent != s.length_exponent for c in configs):
        raise QualaError(f"--start-configs {spec}: give a front file, a model directory with one, or ratio "
                         f"configurations separated by ';' (e.g. '1,1,1,0.8,0.4,0.2;1,0.9,0.7,0.5,0.3,0.1'), each "
                         f"with the search's --length-exponent {s.length_exponent:g} ('@exponent' where it is not 1)")
    return tuple(dict.fromkeys(key(on_grid(np.array(c.values), s), s.length_exponent) for c in configs))


def is_directory(spec: str) -> bool:
    """Whether spec names a directory; False where it is too long to be a path (a long list of configurations)."""
    try:
        return Path(spec).is_dir()
    except OSError:
        return False


def mutate(rng: np.random.Generator, values: tuple[float, ...], s: SearchSettings) -> tuple[float, ...]:
    """Each layer, with probability mutation_prob, redrawn between its neighbours: the result stays monotone."""
    v = list(values)
    for i in range(len(v)):
        if rng.random() < s.mutation_prob:
            hi = v[i - 1] if i > 0 else 1.0
            lo = v[i + 1] if i + 1 < len(v) else s.min_ratio
            v[i] = float(rng.uniform(lo, hi))
    return on_grid(np.array(v), s)


def crossover(rng: np.random.Generator, a: tuple[float, ...], b: tuple[float, ...], s: SearchSettings
              ) -> tuple[float, ...]:
    """Each layer from either parent, then made monotone (a layer never keeps more than the one before)."""
    pick = rng.random(len(a)) < 0.5
    return on_grid(np.where(pick, a, b), s)


def pareto_front(scores: dict[str, dict]) -> list[str]:
    """Keys of the configurations no other beats on both cost and F1, by increasing cost ('full' left out: it is
    the same computation as all ratios 1)."""
    return near_front(scores, 0.0)


# ---- scoring, cached on disk ---------------------------------------------------------------------------------
class ScoreCache:
    """{config string: scores} in a JSON file, tied to what the scores depend on (model, data, runtime)."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path, self.fingerprint, self.scores = path, fingerprint, {}
        if path.is_file():
            obj = read_json(path)
            old = obj.get("fingerprint") if isinstance(obj, dict) else None
            if old != fingerprint:
                diff = [k for k in fingerprint if not isinstance(old, dict) or old.get(k) != fingerprint[k]]
                raise QualaError(f"{path}: made for another model, data or runtime (differs in: "
                                 f"{', '.join(diff) or 'format'}); use another --work-dir or delete it")
            self.scores = obj.get("scores", {})

    def __contains__(self, k: str) -> bool:
        return k in self.scores

    def __getitem__(self, k: str) -> dict:
        return self.scores[k]

    def put(self, k: str, value: dict) -> None:
        self.scores[k] = value
        write_json_atomic(self.path, {"fingerprint": self.fingerprint, "scores": self.scores})


class Scorer:
    """Scores configurations on one tokenized split, each at most once."""

    def __init__(self, predictor: Predictor, tokenizer, config: ModelConfig, examples: list[Example],
                 cache: ScoreCache, batch_size: int):
        self.predictor, self.tokenizer, self.config, self.examples = predictor, tokenizer, config, examples
        self.features = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride,
                                      config.max_query_length)  # tokenized once, for every configuration
        self.lengths = [len(f) for f in self.features]
        self.cache, self.batch_size, self.evaluations = cache, batch_size, 0

    def score(self, k: str) -> dict:
        if k not in self.cache:
            lc = LengthConfig.parse(k)
            r = evaluate(self.predictor, self.tokenizer, self.examples, lc, self.batch_size,
                         features=self.features, progress=False)
            self.cache.put(k, {"f1": r.f1, "em": r.exact_match, "gmacs": flops.mean_gmacs(self.config, lc,
                                                                                             self.lengths)})
            self.evaluations += 1
        return self.cache[k]

    def score_all(self, keys: list[str], desc: str, progress: bool) -> None:
        for k in tqdm(keys, desc=desc, unit="config", disable=not progress, leave=False):
            self.score(k)


def near_front(scores: dict[str, dict], margin: float) -> list[str]:
    """Keys of the configurations whose F1 is at most `margin` below the best F1 at the same or lower cost: the
    front of a noisy sample plus those a larger sample might put on it. Margin 0 is the Pareto front."""
    near, best = [], -np.inf
    for k in sorted((k for k in scores if k != "full"), key=lambda k: (scores[k]["gmacs"], -scores[k]["f1"])):
        if scores[k]["f1"] > best - margin:
            near.append(k)
        best = max(best, scores[k]["f1"])
    return near


def confirmation_candidates(searched: dict[str, dict], confirm: Callable[[list[str]], dict[str, dict]],
                            margin: float, neighbours: int = 5) -> list[str]:
    """The configurations near the search sample's front (near_front), scored again by `confirm`, in rounds.

    One lucky configuration on the small search sample raises the best F1 at its cost and so hides every costlier
    one from near_front, full length included. After each round the confirmed configurations' search F1 is
    replaced by their confirmed F1 put on the search sample's scale (shifted by the mean difference between the two
    samples over the `neighbours` confirmed configurations nearest in cost: the samples differ more at some costs
    than at others), the front is taken again, and what it newly reaches is confirmed, until nothing is added."""
    candidates: list[str] = []
    scores = searched
    while new := [k for k in near_front(scores, margin) if k not in candidates]:
        confirmed = confirm(candidates := candidates + new)

        def on_search_scale(k: str) -> float:
            near = sorted(candidates, key=lambda j: abs(np.log(searched[j]["gmacs"] / searched[k]["gmacs"])))
            return confirmed[k]["f1"] + float(np.mean([searched[j]["f1"] - confirmed[j]["f1"]
                                                       for j in near[:neighbours]]))
        scores = {k: {**v, "f1": on_search_scale(k)} if k in confirmed else v for k, v in searched.items()}
    return candidates


# ---- the search ----------------------------------------------------------------------------------------------
def offspring(rng: np.random.Generator, parents: list[tuple[float, ...]], seen: set[str], s: SearchSettings,
              accept=lambda k: True) -> list[str]:
    """mutations + crossovers new configurations (not scored before, accepted) from parents on the front."""
    children: list[str] = []
    for count, make in ((s.mutations, lambda: mutate(rng, parents[rng.integers(len(parents))], s)),
                        (s.crossovers, lambda: crossover(rng, parents[rng.integers(len(parents))],
                                                         parents[rng.integers(len(parents))], s))):
        made = 0
        for _ in range(20 * count):  # the front may be small: give up rather than loop forever
            if made == count:
                break
            k = key(make(), s.length_exponent)
            if k not in seen and accept(k):
                seen.add(k)
                children.append(k)
                made += 1
    return children


def in_focus(scorer: Scorer, s: SearchSettings):
    """A test of whether a configuration saves between s.focus's two factors of MACs on the search's sample (all
    pass without a focus). A focused search spends its later generations around the budgets a release is held to,
    where a front with no point between two factors forces a budget's pick past it."""
    if not s.focus:
        return lambda k: True
    full = flops.mean_gmacs(scorer.config, None, scorer.lengths)
    lo, hi = s.focus
    return lambda k: lo <= full / flops.mean_gmacs(scorer.config, LengthConfig.parse(k), scorer.lengths) <= hi


def focus_parents(front: list[str], accept: Callable[[str], bool]) -> list[str]:
    """The front's points inside the focus (`accept`, from in_focus); the whole front where fewer than two are."""
    inside = [k for k in front if accept(k)]
    return inside if len(inside) >= 2 else front


def evolve(scorer: Scorer, layers: int, s: SearchSettings, state_path: Path, fingerprint: dict) -> list[str]:
    """Runs (or resumes) the evolution; returns the Pareto front's keys.

    The state after each generation is its number, the random state and how many cache entries existed then: a
    resumed generation draws the same children as the interrupted one, and those already scored come from the cache.
    """
    # lists as JSON reads them back; no start_configs or focus entry when there are none, nor length_exponent at 1,
    # as in states saved before they existed
    settings = {k: list(v) if isinstance(v, tuple) else v for k in SearchSettings.EVOLUTION_KEYS
                if (v := getattr(s, k)) != () and not (k == "length_exponent" and v == 1)} | fingerprint
    accept = in_focus(scorer, s)
    rng = np.random.default_rng(s.seed)
    generation, n_scored = -1, 0
    if state_path.is_file():
        state = read_json(state_path)
        saved = state.get("settings", {})
        diff = [k for k in dict.fromkeys([*settings, *saved]) if saved.get(k) != settings.get(k)]
        if diff:
            raise QualaError(f"{state_path}: a search with other settings ({', '.join(diff)}) is saved there; "
                             f"use the same settings to resume, or another --work-dir")
        generation, n_scored = state["generation"], state["scored"]
        rng.bit_generator.state = state["rng"]
    bar = tqdm(total=s.iterations + 1, initial=min(generation + 1, s.iterations + 1), desc="search",
               unit="gen", disable=not s.progress)
    while generation < s.iterations:
        if generation < 0:
            keys = list(dict.fromkeys([key(v, s.length_exponent) for v in initial_population(rng, layers, s)]
                                      + list(s.start_configs)))
        else:
            known = dict(list(scorer.cache.scores.items())[:n_scored])
            parents = focus_parents(pareto_front(known), accept)
            keys = offspring(rng, [LengthConfig.parse(k).values for k in parents], set(known), s, accept)
        scorer.score_all(keys, f"generation {generation + 1}", s.progress)
        generation, n_scored = generation + 1, len(scorer.cache.scores)
        write_json_atomic(state_path, {"settings": settings, "generation": generation, "scored": n_scored,
                                       "rng": rng.bit_generator.state})
        front = pareto_front(scorer.cache.scores)
        bar.update(1)
        bar.set_postfix(front=len(front), scored=len(scorer.cache.scores))
    bar.close()
    return pareto_front(scorer.cache.scores)


def measure_latencies(predictor: Predictor, features: list[Feature], lcs: list[LengthConfig | None], repeats: int,
                      progress: bool = True) -> list[float]:
    """Milliseconds per feature at batch 1 of each configuration: each feature's median over repeats, averaged over
    the features. Configurations take turns on each feature, so a drifting machine slows them all alike."""
    batches = [collate([f]) for f in features]
    times = np.zeros((len(lcs), len(features), repeats))
    for j, batch in enumerate(tqdm(batches, desc="time", unit="feature", disable=not progress, leave=False)):
        for lc in lcs:
            predictor(batch, lc)  # warm-up
        for r in range(repeats):
            for i, lc in enumerate(lcs):
                t0 = time.perf_counter()
                predictor(batch, lc)
                times[i, j, r] = time.perf_counter() - t0
    return (1000 * np.median(times, axis=2).mean(axis=1)).tolist()


def runtime_name(predictor: Predictor) -> str:
    """'torch-fp32', 'torch-bf16', 'onnxruntime:model.int8.onnx' (a predictor with a .path; with
    ':u8s8-saturating' when its int8 kernel is not exact on this CPU, ':u8s7' on 7-bit weights), or its .name."""
    if isinstance(predictor, TorchPredictor):
        return "torch-bf16" if predictor.dtype == "bf16" else "torch-fp32"
    if getattr(predictor, "path", None) is not None:  # a saturating int8 kernel scores differently: not cached alike
        kernel = getattr(predictor, "int8_kernel", None)  # u8s7 computes other integers than the stored graph's
        tag = (f":{kernel}-saturating" if not getattr(predictor, "int8_exact", True)
               else ":u8s7" if kernel == "u8s7" else "")
        return f"onnxruntime:{Path(predictor.path).name}{tag}"
    return str(getattr(predictor, "name", type(predictor).__name__))


def weights_digest(model_dir: Path, predictor: Predictor) -> str:
    """The weights the scores depend on: the predictor's file (ONNX), else model.safetensors."""
    path = Path(getattr(predictor, "path", None) or model_dir / "model.safetensors")
    if not path.is_file():
        raise QualaError(f"{path}: no such file (the model's weights)")
    return f"{path.name}:{sha256(path)[:16]}"


def search_split(model_config: ModelConfig, s: SearchSettings, confirm: bool = False
                 ) -> tuple[list[Example], dict]:
    """The held-out training articles the model was not trained on, as training split them, and where from: the
    first `limit` questions (the search's), or with `confirm` the `confirm_limit` questions after them."""
    trained = (model_config.extra or {}).get("train_config", {})
    train_file = s.train_file or trained.get("train_file") or str(squad_path("train"))
    fraction = s.heldout_fraction if s.heldout_fraction is not None else trained.get("heldout_fraction", 0.05)
    train_limit = trained.get("limit") if not s.train_file else None  # training split its first N questions
    _, heldout = split_articles(load_squad(train_file, limit=train_limit), fraction)
    if not heldout:
        raise QualaError(f"{train_file}: the held-out split is empty (heldout fraction {fraction})")
    if confirm:
        heldout = heldout[s.limit: s.limit + s.confirm_limit] if s.limit and s.confirm_limit > 0 else []
    else:
        heldout = heldout[: s.limit] if s.limit else heldout
    return heldout, {"train_file": str(train_file), "train_limit": train_limit, "heldout_fraction": fraction,
                     "limit": s.limit, "questions": len(heldout)} | ({"confirm_limit": s.confirm_limit}
                                                                     if confirm else {})


def parse_slice(text: str, flag: str) -> tuple[int, int]:
    """'2400:1500' -> (2400, 1500), heldout_questions' offset and limit; a bad value names `flag`."""
    try:
        offset, count = (int(v) for v in text.strip().split(":"))
    except ValueError:
        offset, count = -1, 0
    if offset < 0 or count < 1:
        raise QualaError(f"{flag} {text!r}: give OFFSET:COUNT of the held-out questions, e.g. 2400:1500")
    return offset, count


def heldout_questions(model_config: ModelConfig, offset: int, limit: int) -> tuple[list[Example], dict]:
    """Questions offset..offset + limit of the held-out split (what benchmarks score: never the dev set; offset
    2,400 skips those a front was searched and confirmed on), and where from."""
    heldout, data = search_split(model_config, SearchSettings())
    if len(heldout) < offset + limit:
        raise QualaError(f"--offset {offset} --limit {limit}: the held-out split has {len(heldout)} questions")
    return heldout[offset: offset + limit], data


def run_search(model_dir: str | os.PathLike, s: SearchSettings, predictor: Predictor | None = None,
               tokenizer=None) -> Front:
    """Search, report the front on the dev set, and write MODEL_DIR/length_configs.json and its plot."""
    model_dir = Path(model_dir)
    if predictor is None or tokenizer is None:
        from quala.runtime import load_predictor
        predictor, tokenizer, config = load_predictor(model_dir, "torch")
    else:
        if not (model_dir / "config.json").is_file():
            raise QualaError(f"{model_dir}: not a model directory (no config.json)")
        config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    work = Path(s.work_dir) if s.work_dir else model_dir
    work.mkdir(parents=True, exist_ok=True)
    examples, data = search_split(config, s)
    runtime = runtime_name(predictor)
    fingerprint = {"model": weights_digest(model_dir, predictor), "runtime": runtime, **data}
    scorer = Scorer(predictor, tokenizer, config, examples, ScoreCache(work / CACHE_FILE, fingerprint),
                    s.batch_size)
    front_keys = evolve(scorer, config.num_hidden_layers, s, work / STATE_FILE, fingerprint)
    full = scorer.score("full")
    confirm_examples, confirm_data = search_split(config, s, confirm=True)
    confirmer = Scorer(predictor, tokenizer, config, confirm_examples,
                       ScoreCache(work / CONFIRM_CACHE_FILE, {**fingerprint, **confirm_data}),
                       s.batch_size) if confirm_examples else None
    if confirmer and s.confirm_margin > 0:  # the front is then the one of the larger, confirming sample
        def confirm(keys: list[str]) -> dict[str, dict]:
            confirmer.score_all(keys, "confirm", s.progress)
            return {k: confirmer.score(k) for k in keys}
        confirmation_candidates(scorer.cache.scores, confirm, s.confirm_margin)
        # every configuration this sample has scored, an earlier run's included (the cache is tied to the sample)
        front_keys = pareto_front({k: v for k, v in confirmer.cache.scores.items() if k != "full"})
    front = report_on_dev(predictor, tokenizer, config, scorer, confirmer, front_keys, full, s, runtime, work)
    front.info = {"model": str(model_dir), "runtime": runtime, "search": {**data, **{
        k: getattr(s, k) for k in SearchSettings.EVOLUTION_KEYS + ("iterations",)}},
        "confirm": {"questions": confirm_data["questions"], "after": s.limit, "margin": s.confirm_margin}
        if confirmer else None,
        "dev_file": s.dev_file or str(squad_path("dev")), "dev_limit": s.dev_limit, "work_dir": str(work),
        "evaluations": len(scorer.cache.scores)}
    write_front(front_path(model_dir), front)
    from quala.report import PLOT_FILE, plot_front
    plot_front(front, model_dir / PLOT_FILE)
    return front


def report_on_dev(predictor: Predictor, tokenizer, config: ModelConfig, scorer: Scorer, confirmer: Scorer | None,
                  front_keys: list[str], full: dict, s: SearchSettings, runtime: str, work: Path) -> Front:
    """Dev EM/F1 (cached), dev GMACs, the confirmation sample's F1 and, with s.latency, batch-1 latency of the
    front and the full length (timed together, see measure_latencies)."""
    dev = load_squad(s.dev_file or squad_path("dev"), limit=s.dev_limit)
    dev_cache = ScoreCache(work / DEV_CACHE_FILE, {"model": scorer.cache.fingerprint["model"], "runtime": runtime,
                                                   "dev_file": str(s.dev_file or squad_path("dev")),
                                                   "dev_limit": s.dev_limit})
    dev_scorer = Scorer(predictor, tokenizer, config, dev, dev_cache, s.batch_size)
    sample = [scorer.features[i] for i in np.random.default_rng(0).permutation(len(scorer.features))
              [: s.latency_features]]
    # priced over every dev window whatever dev_limit scores: a configuration with a length exponent keeps a smaller
    # share of long windows, so its MACs depend on the length mix, and the first thousand dev questions (a handful of
    # articles) price it 3% off the whole set, enough to move a point across a budget like '2x'
    lengths = dev_scorer.lengths if s.dev_limit is None else flops.dev_lengths(tokenizer, config, dev_file=s.dev_file)
    full_gmacs = flops.mean_gmacs(config, None, lengths)

    def point(name: str, k: str, search: dict) -> FrontPoint:
        lc = LengthConfig.parse(k)
        d = dev_scorer.score(k)
        gmacs = flops.mean_gmacs(config, lc, lengths)
        confirm_f1 = confirmer.score(k)["f1"] if confirmer else None
        return FrontPoint(name, lc, gmacs, full_gmacs / gmacs, search["f1"], search["gmacs"], d["em"], d["f1"],
                          None, runtime, confirm_f1)

    points = [point(f"p{i}", k, scorer.score(k))
              for i, k in enumerate(tqdm(front_keys, desc="dev", unit="config", disable=not s.progress))]
    evaluated = [{"length_config": k, "search_gmacs": v["gmacs"], "search_f1": v["f1"]}
                 for k, v in scorer.cache.scores.items()]
    front = Front(points, point("full", "full", full), name_points(points), evaluated)
    if s.latency:
        timed = front.configs + [front.full]
        for p, ms in zip(timed, measure_latencies(predictor, sample, [p.length_config for p in timed],
                                                  s.latency_repeats, s.progress)):
            p.latency_ms = ms
    return front


def retime_front(model_dir: str | os.PathLike, predictor: Predictor, tokenizer, repeats: int = 5,
                 features: int = 32) -> Front:
    """Time every point of MODEL/length_configs.json again with this predictor on this machine, keeping the scores.

    Latency budgets ('20ms') are only as good as the timings behind them: after moving a model to another CPU, or
    after changing how its graph is stored, retime instead of searching again. The sample is the one the search
    timed: the first `features` features (random order, seed 0) of the held-out questions it scored."""
    model_dir = Path(model_dir)
    front = read_front(model_dir)
    config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
    info = front.info.get("search") or {}
    same_file = info.get("train_file", "") if info.get("train_limit") is None else ""
    examples, _ = search_split(config, SearchSettings(limit=info.get("limit"), train_file=same_file,
                                                      heldout_fraction=info.get("heldout_fraction")))
    pool = make_features(examples, tokenizer, config.max_seq_length, config.doc_stride, config.max_query_length)
    sample = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[:features]]
    runtime = runtime_name(predictor)
    timed = front.configs + ([front.full] if front.full else [])
    for p, ms in zip(timed, measure_latencies(predictor, sample, [p.length_config for p in timed], repeats)):
        p.latency_ms, p.runtime = ms, runtime
    front.info["timed"] = {"runtime": runtime, "features": len(sample), "repeats": repeats}
    write_front(front_path(model_dir), front)
    return front
