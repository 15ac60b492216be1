"""Shared fixtures: real SQuAD slices from ../shared (QUALA_SHARED), tiny random models, the backbone tokenizer."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from quala.config import backbone_dir, squad_path
from quala.data import load_squad
from quala.export import export_dir
from quala.modeling import ModelConfig, QualaForQuestionAnswering, load_tokenizer
from quala.quantize import quantize_model

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A file of benchmarks/ or scripts/ (not a package) imported as a module named after the file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> ModelConfig:
    kwargs = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                  max_seq_length=128, doc_stride=48)
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def squad_slice(split: str, n_articles: int, max_paragraphs: int = 2, max_questions: int = 3) -> dict:
    data = json.loads(squad_path(split).read_text(encoding="utf-8"))
    articles = []
    for a in data["data"][:n_articles]:
        paragraphs = [dict(p, qas=p["qas"][:max_questions]) for p in a["paragraphs"][:max_paragraphs]]
        articles.append({"title": a["title"], "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(backbone_dir())


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("squad")
    (d / "dev.json").write_text(json.dumps(squad_slice("dev", 3)), encoding="utf-8")
    (d / "train.json").write_text(json.dumps(squad_slice("train", 4)), encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def dev_examples(data_dir):
    return load_squad(data_dir / "dev.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    QualaForQuestionAnswering(tiny_config()).save_pretrained(d)
    tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def onnx_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with model.onnx and a dynamically quantized model.int8.onnx beside its weights."""
    d = tmp_path_factory.mktemp("onnx_model")
    shutil.copytree(tiny_model_dir, d, dirs_exist_ok=True)
    export_dir(d, layer_skips=True)  # tests run configurations that skip a layer too
    quantize_model(d, "dynamic")
    return d


@pytest.fixture(scope="session")
def release_dir() -> Path:
    """The shipped, trained model (quala/models/quala-minilm): where a test needs a model that has learned SQuAD."""
    return Path(__file__).resolve().parents[1] / "quala" / "models" / "quala-minilm"


@pytest.fixture(scope="session")
def release_model(release_dir):
    if not (release_dir / "model.safetensors").is_file():
        pytest.fail(f"{release_dir}: no model.safetensors (the float weights of the shipped model)")
    return QualaForQuestionAnswering.from_pretrained(release_dir)
