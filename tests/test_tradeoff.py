import json
import shutil
from pathlib import Path

import pytest
import torch

from quala.budget import Front, FrontPoint, write_front
from quala.cli import main as quala_main
from quala.config import LengthConfig, QualaError
from quala.evaluate import TorchPredictor
from quala.modeling import QualaForQuestionAnswering
from quala.report import best_under
from tests.conftest import load_script, tiny_config

tradeoff = load_script("benchmarks/tradeoff.py")


def sharp_model(seed: int) -> QualaForQuestionAnswering:
    """A tiny random model with large weights, so its answers change with the tokens kept."""
    torch.manual_seed(seed)
    model = QualaForQuestionAnswering(tiny_config(max_seq_length=384, doc_stride=128))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    """RUN/lengthdrop (with a tiny front file) and RUN/finetune, as `quala train --stage both` lays them out."""
    run = tmp_path_factory.mktemp("run")
    for name, seed in (("lengthdrop", 0), ("finetune", 1)):
        sharp_model(seed).save_pretrained(run / name)
        tokenizer.save_pretrained(str(run / name))
    points = [FrontPoint("p0", LengthConfig((0.5, 0.3, 0.2)), 0.01, 3.0, 10.0),
              FrontPoint("p1", LengthConfig((0.9, 0.7, 0.6)), 0.02, 1.5, 20.0)]
    write_front(run / "lengthdrop" / "length_configs.json",
                Front(points, FrontPoint("full", None, 0.03, 1.0, 21.0), {"fastest": "p0", "balanced": "p1",
                                                                           "accurate": "p1"}))
    return run


def test_position_ranking_keeps_the_first_k_tokens():
    model = sharp_model(0)
    x = torch.randn(2, 10, 64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False
    keep = torch.tensor([4, 6])
    with torch.no_grad():
        _, new_valid, slots, _ = model.layers[0](x, valid, keep, "position")
        _, _, attended, _ = model.layers[0](x, valid, keep)
    assert slots[0, :4].tolist() == [0, 1, 2, 3] and slots[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert new_valid.sum(1).tolist() == [4, 6]
    assert not torch.equal(attended, slots)  # the default still ranks by attention
    ids = torch.randint(1000, 2000, (2, 30))
    mask = torch.ones_like(ids)
    lc = LengthConfig((0.6, 0.4, 0.2))
    with torch.no_grad():
        default = model(ids, mask, None, lc)
        by_attention = model(ids, mask, None, lc, ranking="attention")
        by_position = model(ids, mask, None, lc, ranking="position")
    assert torch.equal(default.start_logits, by_attention.start_logits)
    assert not torch.allclose(default.start_logits, by_position.start_logits)
    assert torch.equal(default.kept, by_position.kept)
    # 30 tokens keep 18, 12, 6: by position, layer 0 drops tokens 18.., which keep their embeddings to the end
    with torch.no_grad():
        embedded = model.qa_outputs(model.embed(ids, torch.zeros_like(ids)))[..., 0]
    assert torch.allclose(by_position.start_logits[:, 18:], embedded[:, 18:], atol=1e-5)
    assert not torch.allclose(by_position.start_logits[:, :18], embedded[:, :18], atol=1e-3)
    assert not torch.allclose(default.start_logits[:, 18:], embedded[:, 18:], atol=1e-3)
    predictor = TorchPredictor(model, ranking="position")
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    assert (predictor(batch, lc)[0] == by_position.start_logits.numpy()).all()
    with pytest.raises(QualaError, match="ranking 'random'"):
        model(ids, mask, None, lc, ranking="random")


def test_budget_comparison_picks_the_best_f1_at_or_under_each_cost():
    rows = [{"method": "a", "gmacs": 1.0, "f1": 50}, {"method": "a", "gmacs": 2.0, "f1": 70},
            {"method": "a", "gmacs": 3.0, "f1": 90}, {"method": "b", "gmacs": 1.5, "f1": 60},
            {"method": "b", "gmacs": 1.2, "f1": 60}, {"method": "c", "gmacs": 5.0, "f1": 99}]
    best = best_under(rows, 2.0)
    assert best["a"]["f1"] == 70 and best["b"]["gmacs"] == 1.2 and best["c"] is None
    assert best_under(rows, 0.5) == {"a": None, "b": None, "c": None}
    assert best_under(rows, 3.0)["a"]["f1"] == 90


def test_tradeoff_end_to_end_on_a_tiny_model(run_dir, tmp_path, capsys):
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    assert tradeoff.main(["--model", str(run_dir / "lengthdrop"), "--limit", "3", "--latency-features", "2",
                          "--repeats", "1", "--threads", "1", "--json", str(out), "--png", str(png)]) == 0
    obj = json.loads(out.read_text())
    methods = [r["method"] for r in obj["rows"]]
    assert set(methods) == {"front", "uniform", "window", "position", "stage1"} and not obj["skipped"]
    assert methods.count("uniform") == methods.count("position") == 8 and methods.count("window") == 4
    assert obj["info"]["stage1"] == str((run_dir / "finetune").resolve()) and obj["info"]["questions"] == 3
    rows = {(r["method"], r["config"]): r for r in obj["rows"]}
    full = rows[("front", "full")]
    assert full["speedup"] == pytest.approx(1.0) and full["f1"] == rows[("uniform", "r=1.0")]["f1"]
    assert rows[("uniform", "r=0.5")]["gmacs"] == pytest.approx(rows[("position", "r=0.5")]["gmacs"])
    assert rows[("window", "128 tokens, stride 43")]["max_seq_length"] == 128
    assert all(r["latency_ms"] > 0 and 0 <= r["f1"] <= 100 for r in obj["rows"])
    assert set(obj["budgets"]) == {"fastest", "balanced", "accurate"}
    assert obj["budgets"]["fastest"] == pytest.approx(rows[("front", "0.5,0.3,0.2")]["gmacs"])
    assert png.stat().st_size > 1000
    text = capsys.readouterr().out
    assert "| front | 0.5,0.3,0.2 |" in text and "budget fastest" in text
    assert quala_main(["report", "--tradeoff", str(out)]) == 0
    assert "budget balanced" in capsys.readouterr().out and out.with_suffix(".png").is_file()


def test_tradeoff_skips_stage1_without_a_finetune_dir_and_names_bad_inputs(run_dir, tmp_path, capsys):
    alone = tmp_path / "alone"
    shutil.copytree(run_dir / "lengthdrop", alone)
    out = tmp_path / "t.json"
    assert tradeoff.main(["--model", str(alone), "--limit", "1", "--windows", "", "--repeats", "0",
                          "--json", str(out), "--png", str(tmp_path / "t.png")]) == 0
    obj = json.loads(out.read_text())
    assert "stage1" not in {r["method"] for r in obj["rows"]} and obj["rows"][0]["latency_ms"] is None
    assert "finetune" in obj["skipped"][0] and "skipped: stage1" in capsys.readouterr().out
    assert tradeoff.main(["--model", str(alone), "--stage1", str(tmp_path / "nope"), "--limit", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert tradeoff.main(["--model", str(alone), "--windows", "512", "--limit", "1", "--repeats", "0",
                          "--json", str(out), "--png", str(tmp_path / "t.png")]) == 2
    assert "--windows 512" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert quala_main(["report", "--tradeoff", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
