"""The shipped release model: the default model loads, answers, and its files match their checksums."""
import hashlib
import json

from quala.budget import read_front, select
from quala.config import default_model_dir
from quala.evaluate import answer_questions
from quala.runtime import OnnxPredictor, load_predictor


def test_default_model_is_the_shipped_int8_release():
    model_dir = default_model_dir()
    assert model_dir.name == "quala-minilm" and not (model_dir / "model.safetensors").exists()
    sums = json.loads((model_dir / "SHA256SUMS.json").read_text())
    for name, digest in sums.items():
        assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == digest, name
    predictor, tokenizer, config = load_predictor(model_dir)
    assert isinstance(predictor, OnnxPredictor) and config.extra["stage"] == "lengthdrop"
    front = read_front(model_dir)
    context = ("The Amazon is the largest river in South America. It flows through Peru, Colombia and Brazil "
               "before it reaches the Atlantic Ocean.")
    for budget in ("accurate", "balanced"):
        lc = select(front, budget).length_config
        (best,), = answer_questions(predictor, tokenizer, [("Which ocean does the Amazon reach?", context)], lc)
        assert best.text.rstrip(".") in ("the Atlantic Ocean", "Atlantic Ocean", "Atlantic")
