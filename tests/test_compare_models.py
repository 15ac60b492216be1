"""benchmarks/compare_models.py: paired per-question F1 of two models, its standard error and the verdict."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from quala.budget import Front, FrontPoint, write_front
from quala.config import LengthConfig, QualaError
from quala.modeling import QualaForQuestionAnswering
from tests.conftest import load_script

compare_models = load_script("benchmarks/compare_models.py")


def test_paired_difference_standard_error_and_verdict():
    a, b = np.array([100.0, 50.0, 0.0, 100.0]), np.array([100.0, 0.0, 0.0, 0.0])
    p = compare_models.paired(a, b)
    assert (p.candidate, p.baseline, p.difference, p.questions) == (62.5, 25.0, 37.5, 4)
    assert p.stderr == pytest.approx(np.std([0, 50, 0, 100], ddof=1) / 2)
    assert compare_models.verdict(p) == "level"  # 37.5 < 2 x 23.9: four questions are not evidence
    many = compare_models.paired(np.tile(a, 100), np.tile(b, 100))
    assert compare_models.verdict(many) == "ahead"
    assert compare_models.verdict(compare_models.paired(np.tile(b, 100), np.tile(a, 100))) == "behind"
    with pytest.raises(QualaError, match="same"):
        compare_models.paired(a, b[:3])


def test_samples_parse_and_bad_ones_name_the_problem():
    assert compare_models.parse_samples("2400:1500,400:2000") == [(2400, 1500), (400, 2000)]
    for bad in ("", "2400", "a:b", "10:0", "-1:5"):
        with pytest.raises(QualaError, match="--samples"):
            compare_models.parse_samples(bad)


def test_a_model_against_itself_is_level_and_samples_pool_by_question(tiny_model_dir, dev_examples,
                                                                              tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    model = QualaForQuestionAnswering.from_pretrained(other)
    torch.manual_seed(1)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(std=0.5)
    model.save_pretrained(other)
    samples = {"a": dev_examples[:3], "b": dev_examples[3:6]}
    configs = [None, LengthConfig((0.5, 0.5, 0.5))]
    rows = compare_models.compare(tiny_model_dir, tiny_model_dir, "torch", samples, configs)
    assert [(key, name) for key, name, _ in rows] == [(k, n) for k in ("full", "0.5,0.5,0.5")
                                                      for n in ("a", "b", "pooled")]
    assert all(p.difference == 0 and p.candidate == p.baseline for _, _, p in rows)
    assert rows[2][2].questions == 6
    differs = compare_models.compare(other, tiny_model_dir, "torch", samples, configs[:1])
    per_sample = [p for _, name, p in differs if name != "pooled"]
    pooled = differs[-1][2]
    assert pooled.candidate == pytest.approx(np.mean([p.candidate for p in per_sample]))
    text = compare_models.table(rows)
    assert text.count("| level |") == 2 and "pooled (6)" in text


def test_budgets_pair_the_point_each_models_own_front_picks(tiny_model_dir, dev_examples, tmp_path):
    def with_front(name: str, points: list[tuple[str, float]]) -> Path:  # (ratios, speed-up) points
        d = tmp_path / name
        shutil.copytree(tiny_model_dir, d)
        write_front(d / "length_configs.json", Front(
            [FrontPoint(f"p{i}", LengthConfig.parse(r), 1.0 / x, x, 60 - 3 * x) for i, (r, x) in enumerate(points)]))
        return d

    old = with_front("old", [("0.5,0.5,0.5", 1.6), ("0.2,0.2,0.2", 3.1)])
    new = with_front("new", [("0.3,0.3,0.3", 2.1), ("0.8,0.8,0.8", 1.2)])  # for 2x: 0.3s; old gives 0.2s
    samples = {"a": dev_examples[:3], "b": dev_examples[3:6]}
    rows = compare_models.compare_budgets(new, old, "torch", samples, ["2x", "1.5x"])
    assert [label for label, name, _ in rows if name == "pooled"] == [
        "2x: 0.3,0.3,0.3 (2.10x) vs 0.2,0.2,0.2 (3.10x)", "1.5x: 0.3,0.3,0.3 (2.10x) vs 0.5,0.5,0.5 (1.60x)"]
    scored = compare_models.score(old, "torch", samples, [LengthConfig.parse(r) for r in
                                                          ("0.3,0.3,0.3", "0.2,0.2,0.2", "0.5,0.5,0.5")], 32)
    for (_, name, p), (mine, base) in zip(rows[:2], [("0.3,0.3,0.3", "0.2,0.2,0.2")] * 2):
        expected = compare_models.paired(scored[name][mine], scored[name][base])
        assert p == expected  # same weights: the difference is the two configurations'
    same = compare_models.compare_budgets(old, old, "torch", samples, ["1.5x"])
    assert all(p.difference == 0 for _, _, p in same)
    with pytest.raises(QualaError, match="budget '9x': no configuration"):
        compare_models.compare_budgets(new, old, "torch", samples, ["9x"])
