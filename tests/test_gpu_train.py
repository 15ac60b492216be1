"""scripts/gpu_train.py: the model leaves the GPU machine in fp16 pieces and comes back as a loadable directory."""

import pytest
import torch
from safetensors.torch import load_file

from quala.modeling import QualaForQuestionAnswering
from tests.conftest import load_script

gpu_train = load_script("scripts/gpu_train.py")


def test_pack_then_unpack_gives_the_model_back_in_fp16_precision(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_train, "PIECE", 100_000)  # several pieces even for the tiny model
    fetched = tmp_path / "out"
    fetched.mkdir()
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')
    gpu_train.pack(tiny_model_dir, fetched, [tmp_path / "log.jsonl", tmp_path / "missing.json"])
    pieces = sorted(fetched.glob("weights.fp16.part*"))
    assert len(pieces) > 2 and all(p.stat().st_size <= 100_000 for p in pieces)
    gpu_train.unpack(fetched, tmp_path / "back")
    model_dir = next(p.parent for p in (tmp_path / "back").rglob("model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    returned = load_file(str(model_dir / "model.safetensors"))
    assert original.keys() == returned.keys()
    for k in original:
        assert returned[k].dtype == torch.float32 and torch.equal(returned[k], original[k].half().float()), k
    QualaForQuestionAnswering.from_pretrained(model_dir)  # loads as a model directory
    assert (tmp_path / "back" / "log.jsonl").is_file()


def test_prepare_refuses_a_start_model_whose_embeddings_the_device_would_not_get(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(gpu_train, "CARRY", tmp_path / "carry")
    with pytest.raises(SystemExit, match=r"word embeddings differ from those of .* ship this model first"):
        gpu_train.prepare(tiny_model_dir)
    assert not (tmp_path / "carry" / "start" / "model.safetensors").exists()


def test_start_from_the_last_calls_output_moves_it_aside(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_train, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_train, "CARRY", tmp_path / ".carry")
    out = tmp_path / "runs" / "gpu" / "lengthdrop"
    out.parent.mkdir(parents=True)
    import shutil
    shutil.copytree(tiny_model_dir, out)
    (out / "checkpoint.pt").write_bytes(b"old run")
    src = gpu_train.start_dir("runs/gpu/lengthdrop", out)
    assert src == tmp_path / "runs" / "gpu" / "previous-1" and not out.exists()
    assert (src / "model.safetensors").is_file() and not (src / "checkpoint.pt").exists()
    with pytest.raises(SystemExit, match="no model.safetensors"):
        gpu_train.start_dir("runs/gpu/lengthdrop", out)


def test_a_learned_ranking_model_comes_back_with_its_scorers(tiny_model_dir, tmp_path):
    from tests.test_train import learned_model_dir
    model_dir = learned_model_dir(tiny_model_dir, tmp_path)
    fetched = tmp_path / "out"
    fetched.mkdir()
    gpu_train.pack(model_dir, fetched, [])
    gpu_train.unpack(fetched, tmp_path / "back")
    back = QualaForQuestionAnswering.from_pretrained(next((tmp_path / "back").rglob("config.json")).parent)
    sent = QualaForQuestionAnswering.from_pretrained(model_dir)
    assert back.config.ranking == "learned"
    for a, b in zip(back.layers, sent.layers):
        assert torch.equal(a.scorer.weight, b.scorer.weight)


def test_lengthdrop_passes_the_scorer_loss_to_quala_train(tmp_path, monkeypatch):
    """run --scorer-loss W --front-sample DIR: the LengthDrop stage's `quala train` command carries them (and
    parses); fine-tuning not."""
    import argparse

    from quala.cli import build_parser
    commands = []

    class Done:
        def __init__(self, cmd, **kw):
            commands.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(gpu_train.subprocess, "Popen", Done)
    args = argparse.Namespace(batch_size=32, eval_limit=10, warmup_ratio=0.02, length_drop_ratio_bound=0.4, limit=None,
                              scorer_loss=0.1, front_sample="quala/models/quala-minilm", front_share=0.25)
    for stage in ("finetune", "lengthdrop"):
        gpu_train.train(args, stage, tmp_path / "m", tmp_path / "o", 0.5, 2e-5, 10, tmp_path / f"{stage}.log")
    tail = [cmd[cmd.index("train"):] for cmd in commands]
    assert "--scorer-loss" not in tail[0] and "--front-sample" not in tail[0]
    parsed = build_parser().parse_args(tail[1])
    assert (parsed.scorer_loss, str(parsed.front_sample), parsed.front_share) == (0.1, "quala/models/quala-minilm", 0.25)
