"""The HTTP API and web page: one model, every request at the accuracy its compute budget allows.

Requests that arrive together are batched per length configuration (a short, bounded wait) and answered in the
order asked; inference runs on one worker thread off the event loop, so the server keeps answering /health.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from quala.budget import Front, FrontPoint, read_front, select
from quala.config import LengthConfig, QualaError
from quala.data import Answer
from quala.evaluate import Predictor, answer_questions

WEB_DIR = Path(__file__).resolve().parent / "web"


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=2000, description="the question")
    context: str = Field(max_length=1_000_000, description="the text to find the answer in; long texts are "
                                                            "split into overlapping windows, never truncated")
    budget: str | None = Field(None, description="'20ms', '2.5GMACs', '3x', 'fastest', 'balanced', 'accurate' "
                                                 "or a point's name; default: the most accurate")
    top_k: int = Field(1, ge=1, le=20, description="how many answers to return, best first")

    @field_validator("question", "context")
    @classmethod
    def not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    items: list[AnswerRequest] = Field(min_length=1, max_length=256)


@dataclass
class Engine:
    """The model loaded once, its front, and a batcher per length configuration."""
    predictor: Predictor
    tokenizer: object
    model_config: object
    front: Front | None
    max_batch: int = 16
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quala-infer")
        self.pending: dict[str, list] = {}

    def point(self, budget: str | None) -> FrontPoint | None:
        """The front point for a budget; None (full length) when the model has no front and no budget is given."""
        if self.front is None:
            if budget is None:
                return None
            raise QualaError("this model has no length_configs.json: run `quala search`; budgets are unavailable")
        return select(self.front, budget or "accurate")

    def configs(self) -> list[dict]:
        if self.front is None:
            return [{"name": "full", "length_config": None, "label": "full"}]
        named = {v: k for k, v in self.front.named.items()}
        return [dict(p.to_json(), label=named.get(p.name, p.name)) for p in self.front.configs]

    async def answer(self, question: str, context: str, lc: LengthConfig | None, top_k: int) -> list[Answer]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        key = str(lc)
        queue = self.pending.setdefault(key, [])
        queue.append(((question, context), top_k, future))
        if len(queue) >= self.max_batch:
            self.flush(key, lc)
        elif len(queue) == 1:
            loop.call_later(self.max_wait_ms / 1000, self.flush, key, lc)
        return await future

    def flush(self, key: str, lc: LengthConfig | None) -> None:
        items = self.pending.pop(key, [])
        if not items:
            return
        pairs = [pair for pair, _, _ in items]
        top_k = max(k for _, k, _ in items)
        job = self.executor.submit(self.run_batch, pairs, lc, top_k)
        asyncio.wrap_future(job).add_done_callback(lambda done: deliver(done, items))

    def run_batch(self, pairs: list[tuple[str, str]], lc: LengthConfig | None, top_k: int) -> list[list[Answer]]:
        """One forward pass for requests batched together; one pass per request where the runtime's outputs
        depend on batch-mates (dynamic INT8), so that an answer never depends on who else asked at the time."""
        c = self.model_config
        run = lambda group: answer_questions(self.predictor, self.tokenizer, group, lc, top_k,  # noqa: E731
                                             self.max_batch, c.max_seq_length, c.doc_stride, c.max_query_length)
        if getattr(self.predictor, "batch_invariant", True):
            return run(pairs)
        return [answers for pair in pairs for answers in run([pair])]


def deliver(done: asyncio.Future, items: list) -> None:
    """Hand each request its own answers, in the order they were asked; a failure reaches every request."""
    for i, (_, top_k, future) in enumerate(items):
        if future.done():
            continue
        if done.exception() is not None:
            future.set_exception(done.exception())
        else:
            future.set_result(done.result()[i][:top_k])


def answer_json(answers: list[Answer], point: FrontPoint | None, started: float) -> dict:
    best = answers[0]
    return {"answer": best.text, "score": best.score, "start": best.start, "end": best.end,
            "answers": [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in answers],
            "config": point.name if point else "full",
            "length_config": point.length_config.to_json() if point and point.length_config else None,
            "expected_latency_ms": point.latency_ms if point else None,
            "measured_ms": round(1000 * (time.perf_counter() - started), 2)}


def create_app(engine: Engine, max_body_bytes: int = 4 * 1024 * 1024) -> FastAPI:
    app = FastAPI(title="quala", description="Extractive question answering with a per-request compute budget.")
    app.state.engine = engine

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_bytes:
            return JSONResponse({"error": f"request body is {size} bytes; the limit is {max_body_bytes}"}, 413)
        if request.method == "POST" and len(await request.body()) > max_body_bytes:
            return JSONResponse({"error": f"request body is over the limit of {max_body_bytes} bytes"}, 413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            if err.get("type") == "json_invalid":
                problems.append(f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
            else:
                problems.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "; ".join(problems)}, 422)

    @app.exception_handler(QualaError)
    async def bad_value(request: Request, exc: QualaError):
        return JSONResponse({"error": str(exc)}, 400)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/configs")
    async def configs() -> dict:
        return {"configs": engine.configs(), "named": engine.front.named if engine.front else {}}

    @app.post("/answer")
    async def answer(req: AnswerRequest) -> dict:
        started = time.perf_counter()
        point = engine.point(req.budget)
        lc = point.length_config if point else None
        return answer_json(await engine.answer(req.question, req.context, lc, req.top_k), point, started)

    @app.post("/answer/batch")
    async def answer_batch(req: BatchRequest) -> dict:
        started = time.perf_counter()
        points = [engine.point(item.budget) for item in req.items]  # every budget checked before any work
        results = await asyncio.gather(*(engine.answer(item.question, item.context,
                                                       p.length_config if p else None, item.top_k)
                                         for item, p in zip(req.items, points)))
        return {"results": [answer_json(a, p, started) for a, p in zip(results, points)]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (WEB_DIR / "index.html").read_text(encoding="utf-8")

    return app


def load_engine(model_dir: str | Path, runtime: str = "auto", max_batch: int = 16, max_wait_ms: float = 5.0
                ) -> Engine:
    from quala.budget import front_path
    from quala.runtime import load_predictor
    predictor, tokenizer, config = load_predictor(model_dir, runtime)
    front = read_front(model_dir) if front_path(model_dir).is_file() else None
    return Engine(predictor, tokenizer, config, front, max_batch, max_wait_ms)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto",
          max_batch: int = 16, max_wait_ms: float = 5.0, max_body_bytes: int = 4 * 1024 * 1024) -> None:
    import uvicorn
    app = create_app(load_engine(model_dir, runtime, max_batch, max_wait_ms), max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level="info")
