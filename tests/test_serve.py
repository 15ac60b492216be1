import asyncio
import contextlib
import itertools
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from quala.budget import Front, FrontPoint, name_points
from quala.config import LengthConfig
from quala.evaluate import TorchPredictor
from quala.modeling import load
from quala.data import collate, make_features
from quala.runtime import choose_int8_kernel, load_predictor
from quala.serve import MAX_BUDGET_CHARS, Engine, Limits, TimedOut, create_app

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
    assert client.get("/configs").json()["runtime"] == {"int8_kernel": None, "batch_invariant": True}  # torch fp32
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
    with TestClient(create_app(engine)) as c:
        assert c.get("/configs").json()["runtime"] == {"int8_kernel": predictor.int8_kernel, "batch_invariant": False}
    assert predictor.int8_kernel == choose_int8_kernel()  # the runtime's pick for this CPU


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
    (b'{"question": "Q?", "context": "\\ud800 lone"}', 422, "context: Input should be a valid string"),
    (b'{"question": "\xff?", "context": "text"}', 400, "request body is not valid UTF-8 (byte 14"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(client, body, status, message):
    r = client.post("/answer", content=body, headers={"Content-Type": "application/json"})
    error(r, status, message)
    assert client.get("/health").status_code == 200  # still serving



# ---- the defences against hostile traffic: each test fails if its defence is taken out ------------------------

LONG = " ".join(["filler text goes here."] * 700) + " The key is under the mat."  # 58 windows of the tiny model


def error(r, status: int, *needles: str) -> str:
    """Every 4xx/5xx answer is {"error": message}: exactly that key, whatever raised it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    for needle in needles:
        assert needle in body["error"], body
    return body["error"]


@pytest.fixture(scope="module")
def make_engine(tiny_model_dir):
    """A dedicated engine with its own limits (the model loaded once)."""
    model, tokenizer = load(tiny_model_dir)

    def make(limits: Limits = Limits(), max_batch: int = 4, max_wait_ms: float = 1.0) -> Engine:
        return Engine(TorchPredictor(model), tokenizer, model.config, tiny_front(), max_batch, max_wait_ms, limits)
    return make


def settle(engine: Engine, timeout_s: float = 10.0) -> None:
    """Wait for the worker to have nothing left (dropped work goes at its next turn)."""
    deadline = time.monotonic() + timeout_s
    while engine.pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.pending() == 0


async def asgi_request(app, chunks, headers=(("content-type", "application/json"),), path="/answer", gone=None):
    """One POST straight through the ASGI app, the way uvicorn delivers it: the body as one receive() message per
    chunk (no Content-Length unless given), then receive() blocks until `gone` (an asyncio.Event) is set and reports
    the client's disconnect. Returns (status, JSON body or None, chunks the app asked for)."""
    chunks, read, finished, sent = iter(chunks), 0, False, []

    async def receive():
        nonlocal read, finished
        if not finished:
            chunk = next(chunks, None)
            if chunk is not None:
                read += 1
                return {"type": "http.request", "body": chunk, "more_body": True}
            finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await (gone or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body else None, read


# a. the body limit, counted as the body streams in


def test_a_chunked_body_over_the_limit_gets_a_json_413(client):
    def chunks():  # a generator: httpx sends it chunked, with no Content-Length
        for _ in range(10):
            yield b"x" * 5000
    r = client.post("/answer", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    error(r, 413, "request body is over the limit of 20000 bytes")
    assert r.headers["connection"] == "close"  # the rest of the body is not read
    assert client.get("/health").json() == {"status": "ok", "pending": 0}


def test_a_streamed_body_is_refused_once_past_the_limit_and_never_read_further(client):
    # uvicorn hands a chunked body over chunk by chunk: the 5th of 5000 bytes passes 20,000; none after it is read
    status, body, read = asyncio.run(asgi_request(client.app, itertools.repeat(b"x" * 5000, 10)))
    assert (status, read) == (413, 5) and body == {"error": "request body is over the limit of 20000 bytes"}
    # a Content-Length over the limit is refused before a single byte of the body is read
    status, body, read = asyncio.run(asgi_request(
        client.app, itertools.repeat(b"x", 20_001), headers=[("content-type", "application/json"),
                                                             ("content-length", "20001")]))
    assert (status, read) == (413, 0) and body == {"error": "request body is over the limit of 20000 bytes"}
    # at the limit exactly the body is read and answered
    text = json.dumps({"question": "Which river?", "context": CONTEXT}).ljust(20_000)  # JSON may end in spaces
    status, body, read = asyncio.run(asgi_request(client.app, [text[:10_000].encode(), text[10_000:].encode()]))
    assert status == 200 and CONTEXT[body["start"]:body["end"]] == body["answer"]


# b. the budget: 64 characters at most, checked before it is parsed


def test_b_budget_over_64_characters_is_refused_at_once(client):
    started = time.perf_counter()
    r = client.post("/answer", json={"question": "Q?", "context": CONTEXT, "budget": "1" * 5000 + "!"})
    assert time.perf_counter() - started < 1.0
    error(r, 422, "budget: String should have at most 64 characters")
    items = [{"question": "Q?", "context": CONTEXT}, {"question": "Q?", "context": CONTEXT, "budget": "9" * 65}]
    error(client.post("/answer/batch", json={"items": items}), 422, "items.1.budget: String should have at most 64")
    ok = client.post("/answer", json={"question": "Q?", "context": CONTEXT, "budget": "1" * (MAX_BUDGET_CHARS - 2)
                                      + "ms"})
    assert ok.status_code == 200 and ok.json()["config"] == "p2"  # 64 characters are read (a huge budget: p2)


def test_b_blank_budget_is_the_most_accurate_and_a_negative_one_is_refused(client):
    r = client.post("/answer", json={"question": "Q?", "context": CONTEXT, "budget": "   "})
    assert r.status_code == 200 and r.json()["config"] == "p2"
    error(client.post("/answer", json={"question": "Q?", "context": CONTEXT, "budget": "-1ms"}), 400,
          "budget '-1ms': must be positive")


# c. the window cap


@pytest.fixture(scope="module")
def two_windows(make_engine):
    with TestClient(create_app(make_engine(Limits(max_windows=2)), max_body_bytes=50_000)) as c:
        yield c


def test_c_a_context_over_max_windows_gets_a_413_before_and_after_tokenizing(two_windows, tokenizer):
    # 400 words are at least 5 windows: refused on the word count, before any tokenizing
    r = two_windows.post("/answer", json={"question": "Q?", "context": " ".join(["river"] * 400)})
    error(r, 413, "needs at least 5 windows of 128 tokens", "the limit is 2 windows per request (max_windows")
    # 60 long words look like one window but are 9: refused once tokenized, before the model runs
    word = "supercalifragilisticexpialidocious"
    assert len(tokenizer.question_offsets(word)) > 5
    r = two_windows.post("/answer", json={"question": "Q?", "context": " ".join([word] * 60)})
    error(r, 413, "needs 9 windows of 128 tokens", "(max_windows")
    # a batch's items count together: 3 one-window items are over 2
    items = [{"question": "Q?", "context": CONTEXT}] * 3
    error(two_windows.post("/answer/batch", json={"items": items}), 413, "at least 3 windows", "max_windows")
    assert two_windows.post("/answer/batch", json={"items": items[:2]}).status_code == 200
    assert two_windows.app.state.engine.pending() == 0


def test_c_configs_report_the_limits_and_the_always_accepted_context_fits(two_windows, tokenizer):
    limits = two_windows.get("/configs").json()["limits"]
    assert limits["max_windows"] == 2 and limits["max_body_bytes"] == 50_000
    assert limits["max_budget_chars"] == MAX_BUDGET_CHARS and limits["window_tokens"] == 128
    n = limits["context_tokens_always_accepted"]
    context = " ".join(["river"] * n)  # one token a word
    assert len(tokenizer.question_offsets(context)) == n
    longest_question = " ".join(["which"] * 100)  # cut to max_query_length tokens
    r = two_windows.post("/answer", json={"question": longest_question, "context": context})
    assert r.status_code == 200, r.text
    # and one token more does not (so the number is exact, not merely safe)
    error(two_windows.post("/answer", json={"question": longest_question, "context": context + " river"}),
          413, "needs 3 windows", f"a context of {n} tokens always fits")


# d. the request deadline, and dropped work


def test_d_past_the_deadline_a_504_and_the_work_is_dropped(make_engine, client):
    engine = make_engine(Limits(request_timeout_s=0.1, max_windows=300))
    huge = " ".join(["filler text goes here."] * 2500)  # 200+ windows: far more than 0.1 s of work
    with TestClient(create_app(engine)) as c:
        ran, dropped = engine.windows_run, engine.dropped
        started = time.perf_counter()
        r = c.post("/answer", json={"question": "Where is the key?", "context": huge})
        assert time.perf_counter() - started < 2.0
        error(r, 504, "no answer within the request timeout of 0.1 s")
        settle(engine)
        assert engine.dropped == dropped + 1 and engine.windows_run - ran < engine.min_windows(huge)
        # and the engine goes on answering, as it would have without the dropped request
        body = {"question": "Which countries?", "context": CONTEXT, "budget": "fastest", "top_k": 3}
        again, alone = c.post("/answer", json=body), client.post("/answer", json=body)
        assert again.status_code == 200, again.text
        assert {k: v for k, v in again.json().items() if k != "measured_ms"} == \
               {k: v for k, v in alone.json().items() if k != "measured_ms"}
        assert c.get("/health").json() == {"status": "ok", "pending": 0}


def test_d_the_worker_drops_work_past_its_deadline_without_http_too(make_engine):
    engine = make_engine(Limits(request_timeout_s=0.1, max_windows=300))
    huge = " ".join(["filler text goes here."] * 2500)
    ran, dropped = engine.windows_run, engine.dropped
    with pytest.raises(TimedOut, match="no answer within the request timeout of 0.1 s"):
        asyncio.run(engine.answer("Where is the key?", huge, None, 1))  # no HTTP handler to give up on it
    settle(engine)
    assert engine.dropped == dropped + 1 and engine.windows_run - ran < engine.min_windows(huge)


def test_d_the_504_comes_at_the_deadline_whatever_the_worker_is_doing(make_engine):
    """The event loop answers at the deadline itself: it does not wait for the worker's next turn (here the worker
    spends half a second waiting for batch mates before it looks at the request)."""
    engine = make_engine(Limits(request_timeout_s=0.05), max_batch=16, max_wait_ms=500)
    with TestClient(create_app(engine)) as client:
        started = time.perf_counter()
        r = client.post("/answer", json={"question": "Which river?", "context": CONTEXT})
        elapsed = time.perf_counter() - started
        error(r, 504, "no answer within the request timeout of 0.05 s")
        assert elapsed < 0.3, elapsed
        settle(engine)
        assert engine.windows_run == 0 and engine.dropped == 1


def test_d_a_client_that_disconnects_has_its_work_dropped(make_engine):
    engine = make_engine(Limits(max_windows=300))
    app = create_app(engine)
    context = " ".join(["filler text goes here."] * 2500)  # 200+ windows
    body = json.dumps({"question": "Where is the key?", "context": context})

    async def leave_early():
        gone = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, gone.set)
        return await asgi_request(app, [body.encode()], gone=gone)

    ran, dropped = engine.windows_run, engine.dropped
    started = time.perf_counter()
    status, _, _ = asyncio.run(leave_early())
    assert status == 499 and time.perf_counter() - started < 2.0
    settle(engine)
    assert engine.dropped == dropped + 1 and engine.windows_run - ran < engine.min_windows(context)


# e. fairness: requests take turns, a few windows each


@pytest.mark.parametrize("max_batch", [4, 16])
def test_e_a_small_request_is_not_stuck_behind_a_large_one(make_engine, max_batch):
    engine = make_engine(max_batch=max_batch, max_wait_ms=20)
    question = "Which countries does it flow through?"

    async def race():
        finished = []

        async def ask(name, q, c):
            answer = await engine.answer(q, c, None, 1)
            finished.append(name)
            return answer

        large = asyncio.create_task(ask("large", "Where is the key?", LONG))
        await asyncio.sleep(0)  # the large one is submitted first
        small = asyncio.create_task(ask("small", question, CONTEXT))
        await asyncio.gather(large, small)
        return finished, small.result()

    ran = engine.windows_run
    finished, small = asyncio.run(race())
    assert engine.windows_run - ran == 59  # the large request's 58 windows and the small one's
    assert finished == ["small", "large"]
    alone = asyncio.run(engine.answer(question, CONTEXT, None, 1))
    assert small == alone


# f. content types, encodings, HEAD and offline docs


def test_f_non_json_bodies_head_requests_and_offline_docs(client):
    r = client.post("/answer", content=json.dumps({"question": "Q?", "context": CONTEXT}),
                    headers={"Content-Type": "text/plain"})
    error(r, 415, "Content-Type 'text/plain' is not supported", "application/json")
    error(client.post("/answer/batch", content=b"{}", headers={"Content-Type": "application/x-www-form-urlencoded"}),
          415, "Content-Type 'application/x-www-form-urlencoded'")
    error(client.post("/answer", content=b"{}"), 415, "the Content-Type header is missing")
    ok = client.post("/answer", content=json.dumps({"question": "Q?", "context": CONTEXT}),
                     headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    error(client.post("/answer", content=b'{"question": "caf\xe9?", "context": "text"}',
                      headers={"Content-Type": "application/json"}), 400, "request body is not valid UTF-8")
    error(client.get("/no-such-page"), 404, "Not Found")
    error(client.get("/answer"), 405, "Method Not Allowed")
    for path in ("/", "/health", "/configs"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000, asset
    assert "/docs-assets/redoc.standalone.js" in client.get("/redoc").text


def test_server_reads_long_contexts_as_quala_load_does(data_dir):
    """With passages (quala serve's default) the engine reads the best BM25 passages of a long context, and its
    answers equal the library's at the same budget (the server's default is "accurate", the library's full length),
    offsets into the whole context."""
    import quala
    from quala.data import load_squad
    from quala.longdoc import PASSAGES
    qa = quala.load()
    examples = load_squad(data_dir / "dev.json")
    context = "\n\n".join(list(dict.fromkeys(e.context for e in examples)) * 3)
    engine = Engine(qa.predictor, qa.tokenizer, qa.config, qa.front, passages=PASSAGES)
    with TestClient(create_app(engine)) as c:
        for e in examples[:3]:
            got = c.post("/answer", json={"question": e.question, "context": context, "top_k": 2,
                                          "budget": "balanced"}).json()
            want = qa(e.question, context, top_k=2, budget="balanced")
            assert [(a["answer"], a["start"]) for a in got["answers"]] == [(a["answer"], a["start"]) for a in want]
            assert context[got["start"]:got["end"]] == got["answer"]
    reads = len(qa.features([quala.data.Example("0", e.question, context[s:t])
                             for s, t, _ in quala.longdoc.best_passages(e.question, context, qa.tokenizer, PASSAGES)]))
    assert engine.windows_run == 3 * reads < 3 * len(qa.features([quala.data.Example("0", e.question, context)]))


# ---- what serving must not lose: each test fails if its behaviour is broken (scripts/mutation.py --planted) ------

class Recording:
    """A predictor that records the rows of each call (and can fail), delegating everything else."""

    def __init__(self, predictor, fail: bool = False):
        self.predictor, self.fail, self.rows = predictor, fail, []

    def __call__(self, batch, lc, *args, **kwargs):
        self.rows.append(len(batch["input_ids"]))
        if self.fail:
            raise RuntimeError("boom")
        return self.predictor(batch, lc, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def test_a_long_context_is_read_in_every_window_and_answered_from_the_last():
    import quala
    qa = quala.load()
    context = " ".join(["The weather was mild and the town was quiet that year."] * 150) + \
        " The silver key is hidden under the doormat."
    windows = len(qa.features([quala.data.Example("0", "Where is the silver key hidden?", context)]))
    engine = Engine(qa.predictor, qa.tokenizer, qa.config, qa.front)
    with TestClient(create_app(engine)) as c:
        r = c.post("/answer", json={"question": "Where is the silver key hidden?", "context": context})
    assert r.status_code == 200, r.text
    assert windows > 5 and engine.windows_run == windows
    assert "doormat" in r.json()["answer"] and r.json()["start"] > len(context) - 60


def test_concurrent_requests_share_model_runs(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    predictor = Recording(TorchPredictor(model))
    engine = Engine(predictor, tokenizer, model.config, tiny_front(), max_batch=8, max_wait_ms=300)

    async def many():
        return await asyncio.gather(*(engine.answer(f"Question {i}?", CONTEXT, None, 1) for i in range(6)))

    asyncio.run(many())
    assert sum(predictor.rows) == 6 and max(predictor.rows) > 1 and len(predictor.rows) < 6


def test_an_inference_error_reaches_every_waiting_request_and_the_server_goes_on(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    predictor = Recording(TorchPredictor(model), fail=True)
    engine = Engine(predictor, tokenizer, model.config, tiny_front(), max_batch=8, max_wait_ms=100)

    async def many():
        return await asyncio.gather(*(engine.answer(f"Question {i}?", CONTEXT, None, 1) for i in range(3)),
                                    return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(many(), 10))
    assert len(results) == 3 and all("inference failed: RuntimeError: boom" in str(r) for r in results), results
    with TestClient(create_app(engine)) as c:
        error(c.post("/answer", json={"question": "Q?", "context": CONTEXT}), 500, "RuntimeError: boom")
        predictor.fail = False
        assert c.post("/answer", json={"question": "Q?", "context": CONTEXT}).status_code == 200


def test_a_budget_on_a_model_without_a_front_is_a_400_and_no_budget_answers(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    with TestClient(create_app(Engine(TorchPredictor(model), tokenizer, model.config, None))) as c:
        error(c.post("/answer", json={"question": "Q?", "context": CONTEXT, "budget": "fastest"}), 400,
              "budget 'fastest': this model has no length_configs.json")
        assert c.post("/answer", json={"question": "Q?", "context": CONTEXT}).status_code == 200
        assert c.get("/configs").status_code == 200


@pytest.mark.parametrize("body, status, message", [
    ({"items": []}, 422, "items: List should have at least 1 item"),
    ({"items": [{"question": "Q?", "context": "c"}] * 65}, 422, "items: List should have at most 64 items"),
    ({"items": "Q?"}, 422, "items: Input should be a valid list"),
    ({}, 422, "items: Field required"),
    ({"items": [{"question": "Q?", "context": CONTEXT}, {"context": CONTEXT}]}, 422, "items.1.question: Field required"),
    ({"items": [{"question": "Q?", "context": CONTEXT, "budget": "20 parsecs"}]}, 400, "unknown unit 'parsecs'"),
])
def test_bad_batch_bodies_get_a_4xx_naming_the_item(client, body, status, message):
    error(client.post("/answer/batch", json=body), status, message)
    assert client.get("/health").status_code == 200


# ---- connections: the guard on a live server ----------------------------------------------------------------------
@contextlib.contextmanager
def running_server(engine, limits: Limits):
    """A real uvicorn server (quala's) on a free loopback port, in a thread."""
    import socket
    import threading

    import uvicorn

    from quala.serve import server_config
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(create_app(engine), "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live(engine):
    """A live server with short deadlines and room for four connections."""
    with running_server(engine, Limits(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=4)) as (_, port):
        yield port


def test_the_server_runs_on_uvloop(engine):
    """uvloop (a dependency) accepts and sets up connections in C: under a flood of 20,000 connections /health
    answered within 27-54 ms on it and took up to 490 ms on asyncio's own loop (benchmarks/abuse.py)."""
    uvloop = pytest.importorskip("uvloop")  # not on Windows, where the dependency does not apply
    with running_server(engine, Limits()) as (server, _):
        (listener,) = server.servers
        assert isinstance(listener.get_loop(), uvloop.Loop)


def connect(port: int):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def closed_after(sock, trickle: bytes = b"", every: float = 0.1, limit: float = 4.0) -> float:
    """Seconds until the server closes `sock`, sending `trickle` every `every` s meanwhile; inf if it never does."""
    import socket
    start = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536, socket.MSG_PEEK) == b"":
                return time.monotonic() - start
            sock.recv(65536)  # a response (e.g. an error) before the close
        except BlockingIOError:
            pass
        except OSError:
            return time.monotonic() - start
        if trickle:
            try:
                sock.send(trickle)
            except OSError:
                return time.monotonic() - start
        time.sleep(every)
    return float("inf")


def get_health(sock) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += received(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += received(sock)
    return head.split(b"\r\n")[0]


def received(sock) -> bytes:
    data = sock.recv(4096)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def test_a_silent_connection_and_a_slowloris_are_closed_at_the_header_deadline(live):
    with connect(live) as silent:
        assert 0.3 < closed_after(silent) < 2.0
    with connect(live) as slow:
        slow.sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\n")
        assert 0.3 < closed_after(slow, trickle=b"X") < 2.0  # bytes keep coming, the deadline does not move


def test_a_body_that_stalls_is_closed_at_the_body_deadline(live):
    with connect(live) as s:
        s.sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        assert 0.3 < closed_after(s) < 2.0


def test_at_the_connection_cap_silent_connections_go_and_answered_ones_stay(live):
    with connect(live) as served:
        assert get_health(served) == b"HTTP/1.1 200 OK"
        silent = [connect(live) for _ in range(6)]
        time.sleep(0.1)  # well inside the 0.5 s header deadline the served connection now waits under
        assert get_health(served) == b"HTTP/1.1 200 OK"  # the client being served kept its connection
        assert sum(closed_after(s, limit=0.05) < 1 for s in silent) >= 3  # the oldest silent ones made room
        for s in silent:
            s.close()


def test_a_model_under_development_is_served_with_its_threads_and_without_the_checksum_check(onnx_dir, tmp_path):
    import hashlib
    import shutil

    from quala.config import QualaError
    from quala.serve import load_engine
    d = tmp_path / "model"
    shutil.copytree(onnx_dir, d)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}
    (d / "SHA256SUMS.json").write_text(json.dumps(sums))
    with (d / "config.json").open("a") as f:
        f.write("\n")  # edited after the checksums were written
    with pytest.raises(QualaError, match="config.json: checksum mismatch"):
        load_engine(d, "onnx")
    engine = load_engine(d, "onnx", threads=1, verify=False)
    assert engine.predictor.threads == 1
