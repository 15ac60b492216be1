import json
import time
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import quala.search as search
from quala.budget import name_points, read_front, select
from quala.cli import main
from quala.config import LengthConfig, QualaError
from quala.modeling import ModelConfig, QualaForQuestionAnswering
from quala.search import SearchSettings, crossover, initial_population, mutate, on_grid, pareto_front, run_search
from tests.conftest import tiny_config

SMALL = dict(population=5, iterations=2, mutations=3, crossovers=3, limit=6, dev_limit=4, heldout_fraction=0.5,
             confirm_limit=0, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random model with large weights, so its F1 changes with the length configuration."""
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    d = tmp_path_factory.mktemp("search-model")
    model.save_pretrained(d)
    tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture
def counted(monkeypatch) -> list:
    """Every (number of questions, length config) the search evaluates."""
    calls = []
    evaluate = search.evaluate

    def spy(predictor, tokenizer, examples, length_config, *args, **kwargs):
        calls.append((len(examples), str(length_config)))
        return evaluate(predictor, tokenizer, examples, length_config, *args, **kwargs)

    monkeypatch.setattr(search, "evaluate", spy)
    return calls


def settings(data_dir, work, **overrides) -> SearchSettings:
    kw = dict(SMALL, train_file=str(data_dir / "train.json"), dev_file=str(data_dir / "dev.json"), work_dir=str(work))
    kw.update(overrides)
    return SearchSettings(**kw)


def test_mutation_and_crossover_keep_configurations_monotone_and_on_the_grid():
    s = SearchSettings(step=0.05, min_ratio=0.1, mutation_prob=0.7)
    rng = np.random.default_rng(0)
    population = initial_population(rng, 6, s)
    assert population[0] == (1.0,) * 6 and len(population) == s.population
    assert np.mean(population[-1]) < 0.35  # spread down to the cheap end
    for _ in range(300):
        a, b = population[rng.integers(len(population))], population[rng.integers(len(population))]
        for child in (mutate(rng, a, s), crossover(rng, a, b, s)):
            assert all(x >= y for x, y in zip(child, child[1:])) and 0.1 <= min(child) and max(child) <= 1.0
            assert all(abs(x / 0.05 - round(x / 0.05)) < 1e-6 for x in child)
            assert LengthConfig.parse(search.key(child)) == LengthConfig(child)
    assert on_grid(np.array([0.5, 0.73, 0.02]), s) == (0.5, 0.5, 0.1)


def test_pareto_front_keeps_only_non_dominated_points():
    scores = {"a": {"gmacs": 1, "f1": 50}, "b": {"gmacs": 2, "f1": 40}, "c": {"gmacs": 2, "f1": 60},
              "d": {"gmacs": 3, "f1": 60}, "e": {"gmacs": 4, "f1": 70}, "full": {"gmacs": 4, "f1": 99}}
    assert pareto_front(scores) == ["a", "c", "e"]


def test_search_finds_a_non_dominated_monotone_front_and_scores_each_config_once(model_dir, data_dir, tmp_path,
                                                                                   counted):
    front = run_search(model_dir, settings(data_dir, tmp_path, latency=True, latency_features=2, latency_repeats=1))
    cache = json.loads((tmp_path / search.CACHE_FILE).read_text())["scores"]
    search_calls = [lc for n, lc in counted if n == 6]
    assert len(search_calls) == len(set(search_calls)) == len(cache)  # never scored twice
    assert {lc for n, lc in counted if n == 4} == {str(p.length_config or "None") for p in front.configs} | {"None"}
    assert len(cache) > SMALL["population"] + 2  # generations after the first added configurations
    assert len({v["f1"] for v in cache.values()}) > 1  # the tiny model's F1 depends on the configuration
    points = [(v["gmacs"], v["f1"]) for k, v in cache.items() if k != "full"]
    for p in front.configs:
        assert not any(g <= p.search_gmacs and f >= p.search_f1 and (g, f) != (p.search_gmacs, p.search_f1)
                       for g, f in points), f"{p.name} is dominated"
        assert p.length_config.unit == "ratio" and list(p.length_config.values) == sorted(p.length_config.values,
                                                                                          reverse=True)
        assert p.latency_ms > 0 and p.runtime == "torch-fp32" and p.dev_f1 is not None
    assert [p.search_f1 for p in front.configs] == sorted(p.search_f1 for p in front.configs)
    saved = read_front(model_dir)
    assert saved.configs == front.configs and saved.full.speedup_gmacs == 1.0
    assert select(saved, "fastest") == front.configs[0]
    assert (model_dir / "length_configs.png").read_bytes()[:4] == b"\x89PNG"


def test_front_is_confirmed_on_the_held_out_questions_after_the_searchs(model_dir, data_dir, tmp_path, counted):
    s = settings(data_dir, tmp_path, confirm_limit=5)
    front = run_search(model_dir, s)
    confirm_calls = [lc for n, lc in counted if n == 5]  # the 12 held-out questions: 6 searched, then 5 confirmed
    assert sorted(confirm_calls) == sorted({str(p.length_config) for p in front.configs} | {"None"})
    cache = json.loads((tmp_path / search.CONFIRM_CACHE_FILE).read_text())
    assert cache["fingerprint"]["questions"] == 5 and cache["fingerprint"]["confirm_limit"] == 5
    for p in front.configs:
        assert p.confirm_f1 == cache["scores"][str(p.length_config)]["f1"] == p.selection_f1
    assert front.named == name_points(front.configs) and read_front(model_dir).named == front.named
    assert front.info["confirm"] == {"questions": 5, "after": 6, "margin": 0.0}
    counted.clear()
    run_search(model_dir, s)  # resumed: nothing is scored again
    assert counted == []
    examples, _ = search.search_split(ModelConfig.from_dict(json.loads((model_dir / "config.json").read_text())),
                                      s, confirm=True)
    searched, _ = search.search_split(ModelConfig.from_dict(json.loads((model_dir / "config.json").read_text())), s)
    assert not {e.id for e in examples} & {e.id for e in searched}


class Interrupt(Exception):
    pass


def test_search_resumes_where_it_stopped(model_dir, data_dir, tmp_path, counted, monkeypatch):
    straight = tmp_path / "straight"
    run_search(model_dir, settings(data_dir, straight, iterations=2, dev_limit=2))
    expected = json.loads((straight / search.CACHE_FILE).read_text())["scores"]

    # stopped after generation 1, then again in the middle of generation 2
    resumed = tmp_path / "resumed"
    run_search(model_dir, settings(data_dir, resumed, iterations=1, dev_limit=2))
    counted.clear()
    evaluate = search.evaluate

    def dies_after_one(*args, **kwargs):
        if len(counted) >= 1:
            raise Interrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(search, "evaluate", dies_after_one)
    with pytest.raises(Interrupt):
        run_search(model_dir, settings(data_dir, resumed, iterations=2, dev_limit=2))
    monkeypatch.setattr(search, "evaluate", evaluate)
    before = len(json.loads((resumed / search.CACHE_FILE).read_text())["scores"])
    assert len(expected) - before >= 1  # generation 2 was cut short: some of its configurations are still missing
    counted.clear()
    run_search(model_dir, settings(data_dir, resumed, iterations=2, dev_limit=2))
    scores = json.loads((resumed / search.CACHE_FILE).read_text())["scores"]
    assert scores == expected  # same configurations, same scores, as the uninterrupted search
    assert len([1 for n, _ in counted if n == 6]) == len(scores) - before  # only the missing ones were scored
    assert json.loads((resumed / search.STATE_FILE).read_text())["generation"] == 2

    with pytest.raises(QualaError, match=r"other settings \(seed\)"):
        run_search(model_dir, settings(data_dir, resumed, iterations=2, seed=1))
    with pytest.raises(QualaError, match=r"another model, data or runtime \(differs in: limit, questions\)"):
        run_search(model_dir, settings(data_dir, resumed, limit=5))


def test_cli_search_and_report(model_dir, data_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "length_configs.json").unlink(missing_ok=True)
    argv = ["search", "--model", str(model), "--train-file", str(data_dir / "train.json"), "--dev-file",
            str(data_dir / "dev.json"), "--heldout-fraction", "0.5", "--limit", "6", "--dev-limit", "3",
            "--population", "4", "--iterations", "1", "--mutations", "3", "--crossovers", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| p0" in out and "| full | full |" in out and (model / "length_configs.json").is_file()
    (model / "length_configs.png").unlink()
    assert main(["report", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert ("| point | length config | GMACs | speedup (GMACs) | latency (ms) | search F1 | confirmed F1 | dev F1 |"
            in out)
    assert (model / "length_configs.png").is_file()
    stale = json.loads((model / "length_configs.json").read_text())
    for p in stale["configs"]:
        p["latency_ms"] = 999.0
    (model / "length_configs.json").write_text(json.dumps(stale))
    assert main(["report", "--model", str(model), "--time", "--runtime", "torch", "--latency-features", "2",
                 "--latency-repeats", "1"]) == 0
    retimed = read_front(model)
    assert all(0 < p.latency_ms < 999 and p.runtime == "torch-fp32" for p in retimed.configs)
    assert [p.search_f1 for p in retimed.configs] == [p["search_f1"] for p in stale["configs"]]
    assert main(argv + ["--length-config", "0.5,0.5,0.5"]) == 2
    assert "drop --length-config" in capsys.readouterr().err


def test_latencies_are_timed_with_configurations_taking_turns(tiny_model_dir, dev_examples, tokenizer):
    from quala.data import make_features
    calls = []

    def predictor(batch, lc):  # records the order of the timed calls
        calls.append(str(lc))
        time.sleep(0.002 if lc is None else 0.0)
        return None

    features = make_features(dev_examples[:2], tokenizer, 128, 48)[:2]
    lcs = [None, LengthConfig((0.5, 0.5, 0.5))]
    ms = search.measure_latencies(predictor, features, lcs, repeats=3, progress=False)
    assert len(ms) == 2 and ms[0] > 2 > ms[1]
    per_feature = ["None", "0.5,0.5,0.5"] * 4  # warm-up of each, then 3 repeats taking turns
    assert calls == per_feature * 2


def test_start_configs_join_generation_0_from_a_front_file_or_a_list(model_dir, data_dir, tmp_path, counted):
    s = settings(data_dir, tmp_path / "first", iterations=0)
    first = run_search(model_dir, s)
    seeds = search.start_configs(str(model_dir), s)
    assert seeds == tuple(str(p.length_config) for p in first.configs)
    listed = search.start_configs("1,1,0.555;0.5,0.4,0.3", s)
    assert listed == ("1,1,0.56", "0.5,0.4,0.3")  # on the search's grid
    many = [f"1,{r / 100},{(r - 10) / 100}" for r in range(20, 100)]  # longer than a path may be: still a list
    assert search.start_configs(";".join(many), s) == tuple(many)
    counted.clear()
    run_search(model_dir, settings(data_dir, tmp_path / "seeded", iterations=0, start_configs=listed))
    assert {"1,1,0.56", "0.5,0.4,0.3"} <= {lc for n, lc in counted if n == 6}
    state = json.loads((tmp_path / "seeded" / search.STATE_FILE).read_text())
    assert state["settings"]["start_configs"] == list(listed)
    run_search(model_dir, settings(data_dir, tmp_path / "seeded", iterations=1, start_configs=listed))  # resumes
    with pytest.raises(QualaError, match=r"other settings \(start_configs\)"):
        run_search(model_dir, settings(data_dir, tmp_path / "seeded", iterations=1))
    for bad in ("100,80,60", "full", str(tmp_path / "missing.json")):
        with pytest.raises(QualaError):
            search.start_configs(bad, s)


def test_near_front_widens_the_pareto_front_by_the_margin():
    scores = {"a": {"gmacs": 1.0, "f1": 50.0}, "b": {"gmacs": 2.0, "f1": 49.5}, "c": {"gmacs": 3.0, "f1": 60.0},
              "d": {"gmacs": 4.0, "f1": 58.0}, "full": {"gmacs": 5.0, "f1": 61.0}}
    assert search.near_front(scores, 0.0) == pareto_front(scores) == ["a", "c"]
    assert search.near_front(scores, 1.0) == ["a", "b", "c"]
    assert search.near_front(scores, 2.5) == ["a", "b", "c", "d"]


def test_with_a_margin_the_front_is_the_confirmed_scores_front(model_dir, data_dir, tmp_path, counted):
    s = settings(data_dir, tmp_path, confirm_limit=5, confirm_margin=100.0)
    front = run_search(model_dir, s)
    searched = json.loads((tmp_path / search.CACHE_FILE).read_text())["scores"]
    confirmed = json.loads((tmp_path / search.CONFIRM_CACHE_FILE).read_text())["scores"]
    assert set(searched) - {"full"} <= set(confirmed)  # every configuration scored again
    assert [str(p.length_config) for p in front.configs] == pareto_front(
        {k: v for k, v in confirmed.items() if k != "full"})
    assert front.info["confirm"]["margin"] == 100.0


def test_compare_picks_each_fronts_best_point_at_or_beyond_each_saving(tmp_path, capsys):
    from quala.budget import Front, FrontPoint, front_path, write_front
    from quala.report import best_beyond, compare_markdown

    def point(name, speedup, confirm, dev):
        return FrontPoint(name, LengthConfig((round(1 / speedup, 2),) * 3), 2.0 / speedup, speedup, confirm,
                          dev_f1=dev, confirm_f1=confirm)
    old = Front([point("a", 3.1, 30.0, 31.0), point("b", 2.0, 50.0, 52.0), point("c", 1.5, 70.0, 71.0)])
    new = Front([point("a", 3.0, 60.0, 59.0), point("b", 1.9, 75.0, 76.0), point("c", 1.5, 79.0, 80.0)])
    assert best_beyond(new, 2.0, "dev_f1").name == "a"  # 1.9x is short of 2x: the 3x point is the best that fits
    assert best_beyond(old, 2.0, "confirm_f1").name == "b" and best_beyond(old, 4.0, "dev_f1") is None
    table = compare_markdown({"new": new, "old": old}).splitlines()
    assert table[3] == "| 1.5x | 79.00 | 80.00 | 0.67,0.67,0.67 | 70.00 | 71.00 | 0.67,0.67,0.67 |"
    assert table[4] == "| 2x | 60.00 | 59.00 | 0.33,0.33,0.33 | 50.00 | 52.00 | 0.5,0.5,0.5 |"
    assert table[-1].startswith("| 4x | - | - | - |")
    for name, front in (("new", new), ("old", old)):
        (tmp_path / name).mkdir()
        write_front(front_path(tmp_path / name), front)
    assert main(["report", "--model", str(tmp_path / "new"), "--compare", str(tmp_path / "old")]) == 0
    assert table[4] in capsys.readouterr().out and (tmp_path / "new" / "length_configs.png").is_file()


def test_parse_slice_reads_offset_and_count_and_names_the_flag_when_wrong():
    from quala.search import parse_slice
    assert parse_slice(" 2400:1500 ", "--test") == (2400, 1500)
    for bad in ("", "2400", "a:b", "10:0", "-1:5", "1:2:3"):
        with pytest.raises(QualaError, match="--test"):
            parse_slice(bad, "--test")


def test_a_search_with_an_exponent_scores_and_keeps_configurations_with_it(model_dir, data_dir, tmp_path, counted):
    s = settings(data_dir, tmp_path, iterations=1, length_exponent=0.5)
    front = run_search(model_dir, s)
    scored = {lc for n, lc in counted if n == 6} - {"None"}  # full length is scored as before
    assert scored and all(k.endswith("@0.5") for k in scored)
    assert all(p.length_config.exponent == 0.5 for p in front.configs)
    assert read_front(model_dir).configs == front.configs  # written and read back with the exponent
    assert search.start_configs("1,0.9,0.5@0.5", s) == ("1,0.9,0.5@0.5",)
    with pytest.raises(QualaError, match="--length-exponent 0.5"):
        search.start_configs("1,0.9,0.5", s)  # a plain ratio means something else: refused, not reinterpreted
    with pytest.raises(QualaError, match=r"other settings \(length_exponent\)"):
        run_search(model_dir, settings(data_dir, tmp_path, iterations=2))


def test_front_gmacs_are_priced_over_every_dev_window_whatever_dev_limit_scores(model_dir, data_dir, tmp_path,
                                                                               tokenizer):
    """An exponent configuration's MACs depend on the length mix: a few dev questions would misprice it."""
    from quala.data import load_squad, make_features
    from quala.flops import mean_gmacs
    front = run_search(model_dir, settings(data_dir, tmp_path, iterations=1, length_exponent=0.5, dev_limit=2))
    config = ModelConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    dev = load_squad(data_dir / "dev.json")
    assert len(dev) > 2
    every = [len(f) for f in make_features(dev, tokenizer, config.max_seq_length, config.doc_stride,
                                           config.max_query_length)]
    first = [len(f) for f in make_features(dev[:2], tokenizer, config.max_seq_length, config.doc_stride,
                                           config.max_query_length)]
    p = front.configs[0]
    assert p.gmacs == pytest.approx(mean_gmacs(config, p.length_config, every))
    assert front.full.gmacs == pytest.approx(mean_gmacs(config, None, every))
    assert mean_gmacs(config, None, every) != pytest.approx(mean_gmacs(config, None, first))  # the test can tell


def test_a_focused_search_adds_only_configurations_inside_its_range_of_savings(model_dir, data_dir, tmp_path,
                                                                               counted):
    s = settings(data_dir, tmp_path, iterations=3, mutations=4, crossovers=4, focus=(1.3, 2.0))
    run_search(model_dir, s)
    state = json.loads((tmp_path / search.STATE_FILE).read_text())
    cache = json.loads((tmp_path / search.CACHE_FILE).read_text())["scores"]
    full = cache["full"]["gmacs"]
    assert state["settings"]["focus"] == [1.3, 2.0]
    generation_0 = {search.key(v) for v in initial_population(np.random.default_rng(0), 3, s)} | {"full"}
    added = [k for k in cache if k not in generation_0]
    assert len(added) >= 4  # later generations added configurations ...
    assert all(1.3 <= full / cache[k]["gmacs"] <= 2.0 for k in added)  # ... all inside the focus
    assert any(not 1.3 <= full / v["gmacs"] <= 2.0 for k, v in cache.items() if k in generation_0 - {"full"})
    with pytest.raises(QualaError, match=r"other settings \(focus\)"):
        run_search(model_dir, settings(data_dir, tmp_path, iterations=4, mutations=4, crossovers=4))


def test_cli_focus_takes_lo_hi_savings_and_names_a_wrong_one(capsys):
    from quala.cli import speedup_range
    assert speedup_range("1.4:1.75") == (1.4, 1.75)
    for bad in ("1.4", "2:1.5", "0.5:2", "a:b", "1:inf"):
        with pytest.raises(Exception, match="LO:HI"):
            speedup_range(bad)
    with pytest.raises(SystemExit):
        main(["search", "--focus", "3:2"])
    assert "--focus" in capsys.readouterr().err


def test_a_lucky_cheap_configuration_does_not_hide_the_costlier_ones_from_confirmation():
    searched = {"cheap": {"gmacs": 1.0, "f1": 50.0}, "lucky": {"gmacs": 2.0, "f1": 70.0},
                "middle": {"gmacs": 3.0, "f1": 66.0}, "costly": {"gmacs": 4.0, "f1": 68.0},
                "poor": {"gmacs": 3.5, "f1": 55.0}, "full": {"gmacs": 4.0, "f1": 69.0}}
    larger = {"cheap": 52.0, "lucky": 60.0, "middle": 67.0, "costly": 70.0, "poor": 56.0}
    asked = []

    def confirm(keys):
        asked.append(list(keys))
        return {k: {"gmacs": searched[k]["gmacs"], "f1": larger[k]} for k in keys}
    assert search.near_front(searched, 0.3) == ["cheap", "lucky"]  # the lucky one hides the rest
    candidates = search.confirmation_candidates(searched, confirm, 0.3)
    assert candidates == ["cheap", "lucky", "middle", "costly"] and "poor" not in candidates
    assert asked == [["cheap", "lucky"], ["cheap", "lucky", "middle", "costly"]]
    assert pareto_front(confirm(candidates)) == ["cheap", "lucky", "middle", "costly"]


def test_every_configuration_the_confirming_sample_scored_counts_for_the_front(model_dir, data_dir, tmp_path,
                                                                               counted):
    run_search(model_dir, settings(data_dir, tmp_path, confirm_limit=5, confirm_margin=100.0))
    confirmed = json.loads((tmp_path / search.CONFIRM_CACHE_FILE).read_text())["scores"]
    counted.clear()
    front = run_search(model_dir, settings(data_dir, tmp_path, confirm_limit=5, confirm_margin=0.01))
    assert counted == []  # nothing scored again
    assert [str(p.length_config) for p in front.configs] == pareto_front(
        {k: v for k, v in confirmed.items() if k != "full"})
