"""benchmarks/compare_models.py: paired per-question F1 of two models, its standard error and the verdict."""
import shutil

import numpy as np
import pytest
import torch

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
