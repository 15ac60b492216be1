import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from quala.budget import Front, FrontPoint, name_points
from quala.config import LengthConfig
from quala.evaluate import TorchPredictor
from quala.modeling import load
from quala.data import collate, make_features
from quala.runtime import load_predictor
from quala.serve import Engine, create_app

CONTEXT = "The Amazon River flows through Brazil, Peru and Colombia. It is the largest river by discharge."


def tiny_front() -> Front:
    points = [FrontPoint("p0", LengthConfig((0.5, 0.3, 0.2)), 0.01, 3.0, 10.0, latency_ms=1.0),
              FrontPoint("p1", LengthConfig((0.8, 0.6, 0.4)), 0.02, 1.5, 20.0, latency_ms=2.0),
              FrontPoint("p2", LengthConfig((1.0, 1.0, 1.0)), 0.03, 1.0, 21.0, latency_ms=3.0)]
    return Front(points, None, name_points(points))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    return Engine(TorchPredictor(model), tokenizer, model.config, tiny_front(), max_batch=4, max_wait_ms=20)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, max_body_bytes=20_000)) as c:
        yield c


def test_answer_uses_the_budget_and_returns_offsets(client):
    r = client.post("/answer", json={"question": "Where does it flow?", "context": CONTEXT, "budget": "fastest",
                                     "top_k": 3})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["config"] == "p0" and d["expected_latency_ms"] == 1.0 and d["measured_ms"] > 0
    assert CONTEXT[d["start"]:d["end"]] == d["answer"] and 1 <= len(d["answers"]) <= 3
    assert client.post("/answer", json={"question": "Where?", "context": CONTEXT}).json()["config"] == "p2"
    assert client.post("/answer", json={"question": "Where?", "context": CONTEXT, "budget": "1.5x"}
                       ).json()["config"] == "p1"


def test_batch_answers_in_order_and_configs_listed(client):
    items = [{"question": q, "context": CONTEXT, "budget": b}
             for q, b in [("Where?", "fastest"), ("What is it?", "accurate"), ("Which river?", "2.5ms")]]
    r = client.post("/answer/batch", json={"items": items})
    assert r.status_code == 200, r.text
    assert [x["config"] for x in r.json()["results"]] == ["p0", "p2", "p1"]
    configs = client.get("/configs").json()["configs"]
    assert [c["name"] for c in configs] == ["p0", "p1", "p2"] and configs[0]["label"] == "fastest"
    assert client.get("/health").json() == {"status": "ok", "pending": 0}
    assert "<input type=\"range\" id=\"budget\"" in client.get("/").text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(engine):
    questions = ["Where does it flow?", "What is the largest river?", "Which continent?", "How big?", "Why?"]
    contexts = [CONTEXT, CONTEXT, "It is in South America.", "Very big.", "Because of rain."]

    async def many():
        return await asyncio.gather(*(engine.answer(q, c, None, 1) for q, c in zip(questions, contexts)))

    results = asyncio.run(many())
    for (answer,), c in zip(results, contexts):
        assert answer.text == c[answer.start:answer.end]


def test_int8_answers_do_not_depend_on_batch_mates(onnx_dir, dev_examples):
    """Dynamic INT8 scales activations per tensor, over the whole batch: the engine must not let one request's
    answer change with the requests that happen to arrive with it."""
    predictor, tokenizer, config = load_predictor(onnx_dir, "onnx-int8")
    assert not predictor.batch_invariant and load_predictor(onnx_dir, "onnx")[0].batch_invariant
    features = make_features(dev_examples[:6], tokenizer, 128, 48)
    alone, _, _ = predictor(collate(features[:1]), None)
    batched, _, _ = predictor(collate(features[:6]), None)
    n = len(features[0])
    assert not np.array_equal(alone[0, :n], batched[0, :n])  # the runtime itself is batch-dependent

    engine = Engine(predictor, tokenizer, config, None, max_batch=8, max_wait_ms=200)
    pairs = [(e.question, e.context) for e in dev_examples[:6]]

    async def together():
        return await asyncio.gather(*(engine.answer(q, c, None, 3) for q, c in pairs))

    async def one(q, c):
        return await engine.answer(q, c, None, 3)

    solo = [asyncio.run(one(q, c)) for q, c in pairs]
    assert asyncio.run(together()) == solo


def test_long_context_is_windowed_not_truncated(client):
    context = " ".join(["filler text goes here."] * 400) + " The key is under the mat."
    r = client.post("/answer", json={"question": "Where is the key?", "context": context})
    assert r.status_code == 200
    assert len(context) > 8000 and r.json()["end"] <= len(context)


@pytest.mark.parametrize("body, status, message", [
    (b"{\"question\": ", 422, "malformed JSON"),
    (json.dumps({"context": CONTEXT}), 422, "question: Field required"),
    (json.dumps({"question": "  ", "context": CONTEXT}), 422, "question: Value error, must not be empty"),
    (json.dumps({"question": 5, "context": CONTEXT}), 422, "question: Input should be a valid string"),
    (json.dumps({"question": "Q?", "context": CONTEXT, "budget": "20 parsecs"}), 400, "unknown unit 'parsecs'"),
    (json.dumps({"question": "Q?", "context": CONTEXT, "budget": "0.1ms"}), 400, "the cheapest is p0"),
    (json.dumps({"question": "Q?", "context": CONTEXT, "top_k": 0}), 422, "top_k: Input should be greater"),
    (json.dumps({"question": "Q?", "context": CONTEXT, "extra": 1}), 422, "extra: Extra inputs are not permitted"),
    (json.dumps({"question": "Q?", "context": "x" * 30_000}), 413, "over the limit of 20000 bytes"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(client, body, status, message):
    r = client.post("/answer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/health").status_code == 200  # still serving
