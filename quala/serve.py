"""The HTTP API and web page: one model, every request at the accuracy its compute budget allows.

Every request is bounded before any work: its body (counted as it streams in), each field's length, its budget
(64 characters) and its windows (--max-windows, estimated from the word count before tokenizing, counted exactly
after). One worker thread runs the model; requests take turns, a few windows each, so a long request shares the
engine with short ones instead of blocking them; a request past its deadline (--request-timeout) gets a 504 and
its remaining work is dropped, as is the work of a request whose client has gone. Connections have deadlines for
their headers and body and a cap on their number (see GuardedH11Protocol); uvicorn's own settings do the rest.
"""
from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import resource
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h11
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from quala.budget import MAX_BUDGET_CHARS, Front, FrontPoint, select
from quala.config import LengthConfig, QualaError
from quala.data import Answer, collate, make_features, ranked_answers, unencodable
from quala.longdoc import PASSAGES
from quala.pipeline import answers_of_reads, context_reads, read_examples

WEB_DIR = Path(__file__).resolve().parent / "web"
DOCS_ASSETS = importlib.resources.files("fastapi_offline") / "static"  # Swagger UI and ReDoc, no CDN
MAX_QUESTION_CHARS = 2000
MAX_CONTEXT_CHARS = 100_000
MAX_BATCH_ITEMS = 64
WINDOWS_PER_TURN = 4  # = quala.runtime.MICRO_BATCH: one ONNX Runtime run per turn, and the same runs as quala.load()
RELEASE_ABOVE_TOKENS = 4 * 256  # a run of longer windows than normal questions send gives its memory back
TOKENIZE_CHARS_PER_TURN = 50_000  # about 20 ms of tokenizing between two turns of the model
OFFSETS = ("character offsets into the context in Unicode code points (Python str indexes); JavaScript strings "
           "index UTF-16 code units, so slice Array.from(context) instead")
log = logging.getLogger("quala.serve")


@dataclass(frozen=True)
class Limits:
    """What one request or connection may cost. /configs reports them."""
    max_body_bytes: int = 4 * 1024 * 1024
    max_windows: int = 64  # windows of max_seq_length tokens per request (all items of a batch together)
    request_timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # from a connection's start (or its last answer) to its request's headers
    body_timeout_s: float = 30.0  # from the headers to the end of the body
    keep_alive_s: int = 5
    max_connections: int = 1000  # beyond it the connection waiting longest for its request is closed


class TooLarge(QualaError):
    status = 413


class TimedOut(QualaError):
    status = 504


class InferenceFailed(QualaError):
    status = 500


# ---- request and response bodies --------------------------------------------------------------------------------

class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(max_length=MAX_QUESTION_CHARS, description="the question (its first 64 tokens are used)")
    context: str = Field(max_length=MAX_CONTEXT_CHARS,
                         description="the text to find the answer in; long texts are split into overlapping "
                                     "windows, never truncated, up to the server's max_windows (GET /configs)")
    budget: str | None = Field(None, max_length=MAX_BUDGET_CHARS,
                               description="'20ms', '2.5GMACs', '3x', 'fastest', 'balanced', 'accurate', 'full' "
                                           "or a point's name; absent or blank: the most accurate")
    top_k: int = Field(1, ge=1, le=20, description="how many answers to return, best first")

    @field_validator("question", "context")
    @classmethod
    def text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if problem := unencodable(v):
            raise ValueError(problem)
        return v

    @field_validator("budget")
    @classmethod
    def blank_budget(cls, v: str | None) -> str | None:
        return v if v is not None and v.strip() else None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    items: list[AnswerRequest] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class Span(BaseModel):
    answer: str
    score: float = Field(description="probability among the candidate spans")
    start: int = Field(description=f"first character of the answer: {OFFSETS}")
    end: int = Field(description="one past the answer's last character (context[start:end] is the answer)")


class AnswerResponse(Span):
    answers: list[Span] = Field(description="the top_k answers, best first")
    config: str = Field(description="the front point used ('full' without a front)")
    length_config: dict | None
    expected_latency_ms: float | None
    measured_ms: float


class BatchResponse(BaseModel):
    results: list[AnswerResponse]


class ErrorResponse(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorResponse, "description": what} for code, what in [
    (400, "a bad value (budget, JSON encoding)"), (413, "the body or a context is over a limit of GET /configs"),
    (415, "the body is not application/json"), (422, "a field is missing, of the wrong type or too long"),
    (500, "inference failed"), (504, "no answer within the request timeout")]}


# ---- the engine: one worker thread, requests taking turns ---------------------------------------------------------

@dataclass
class Part:
    """One (question, context) of a request: its windows, run a few per turn, and their logits."""
    question: str
    context: str
    lc: LengthConfig | None
    top_k: int
    reads: list = field(default_factory=list)  # (start, end, prior) of the context's parts read (quala.pipeline)
    features: list | None = None  # None until tokenized
    order: list[int] = field(default_factory=list)  # window indices, longest first (the order quala.load() runs)
    starts: list = field(default_factory=list)
    ends: list = field(default_factory=list)
    done: int = 0

    @property
    def left(self) -> int:
        return len(self.order) - self.done

    def take(self, n: int) -> list[int]:
        rows = self.order[self.done:self.done + n]
        self.done += len(rows)
        return rows

    def answers(self) -> list[Answer]:
        examples = read_examples(self.question, self.context, self.reads)
        return answers_of_reads(self.reads, ranked_answers(examples, self.features, self.starts, self.ends),
                                self.top_k)


class Job:
    """One HTTP request's work. The event loop creates and cancels it; the worker thread runs and resolves it."""

    def __init__(self, parts: list[Part], timeout_s: float, loop: asyncio.AbstractEventLoop):
        self.parts, self.timeout_s, self.loop = parts, timeout_s, loop
        self.future: asyncio.Future = loop.create_future()
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.cancelled = False
        self.windows = 0

    def cancel(self) -> None:
        self.cancelled = True

    def untokenized(self) -> Part | None:
        return next((p for p in self.parts if p.features is None), None)

    def runnable(self) -> list[Part]:
        """Parts with windows left, once every part is tokenized (the window cap is checked before any run)."""
        return [] if self.untokenized() else [p for p in self.parts if p.left]


def resolve(future: asyncio.Future, outcome: object) -> None:
    if future.done():
        return
    if outcome is None:
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Engine:
    """The model loaded once, its front, and the worker that runs requests' windows in turns.

    Each turn tokenizes what arrived (at most TOKENIZE_CHARS_PER_TURN characters, at least one context), then runs
    up to WINDOWS_PER_TURN windows of the request at the head of the ring and moves it to the tail: a short request
    waits for at most one turn of each request ahead of it, however long those are. With a batch-invariant runtime
    one run also takes the windows of other requests with the same length configuration (up to max_batch), and a
    worker that was idle waits max_wait_ms for them; with dynamic INT8 (activation scales from the whole run) a run
    holds one context's windows only, so an answer never depends on who else asked.
    """

    def __init__(self, predictor, tokenizer, model_config, front: Front | None, max_batch: int = 16,
                 max_wait_ms: float = 5.0, limits: Limits = Limits(), passages: int | None = None):
        """passages: read a longer context only in its best passages for the question, as quala.load() does
        (None: every window)."""
        self.predictor, self.tokenizer, self.model_config, self.front = predictor, tokenizer, model_config, front
        self.passages = passages
        self.max_batch, self.max_wait_ms, self.limits = max_batch, max_wait_ms, limits
        self.batch_invariant = getattr(predictor, "batch_invariant", True)
        if hasattr(predictor, "release_above_tokens"):  # a burst of long windows must not keep its memory
            predictor.release_above_tokens = RELEASE_ABOVE_TOKENS
        self.lock = threading.Condition()
        self.incoming: list[Job] = []
        self.ring: list[Job] = []  # the worker thread's own
        self.thread: threading.Thread | None = None
        self.windows_run = 0
        self.dropped = 0

    # -- called on the event loop --

    def point(self, budget: str | None) -> FrontPoint | None:
        """The front point for a budget; None when the model has no front and no budget is given."""
        if self.front is None:
            if budget is None:
                return None
            raise QualaError(f"budget {budget!r}: this model has no length_configs.json (run `quala search`), so it "
                             f"takes no budget; leave 'budget' out")
        return select(self.front, budget or "accurate")

    def length_config(self, point: FrontPoint | None) -> LengthConfig | None:
        if point is not None:
            return point.length_config
        default = getattr(self.model_config, "length_config", None)
        return LengthConfig.from_json(default) if isinstance(default, dict) else default

    def configs(self) -> list[dict]:
        if self.front is None:
            return [{"name": "full", "length_config": None, "label": "full"}]
        named = {v: k for k, v in self.front.named.items()}
        return [dict(p.to_json(), label=named.get(p.name, p.name)) for p in self.front.configs]

    def describe_limits(self) -> dict:
        c = self.model_config
        per_window = c.max_seq_length - 3 - c.max_query_length  # context tokens of a window, longest question
        return dict(asdict(self.limits), max_question_chars=MAX_QUESTION_CHARS, max_context_chars=MAX_CONTEXT_CHARS,
                    max_batch_items=MAX_BATCH_ITEMS, max_budget_chars=MAX_BUDGET_CHARS,
                    window_tokens=c.max_seq_length, window_stride=c.doc_stride,
                    context_tokens_always_accepted=per_window + (self.limits.max_windows - 1) * (per_window -
                                                                                                  c.doc_stride))

    def min_windows(self, context: str) -> int:
        """A lower bound on a context's windows from its whitespace-separated words (each is at least one token),
        so that a context far over the limit is refused before it is tokenized."""
        c = self.model_config
        per_window = c.max_seq_length - 4  # [CLS] q [SEP] ... [SEP] with a one-token question
        words = len(context.split())
        return 1 + math.ceil(max(0, words - per_window) / max(1, per_window - c.doc_stride))

    def check_size(self, parts: list[Part]) -> None:
        n = sum(self.min_windows(p.context) if self.passages is None else 1 for p in parts)
        if n > self.limits.max_windows:
            raise self.too_large(n, at_least=True)

    def too_large(self, windows: int, at_least: bool = False) -> TooLarge:
        limits = self.describe_limits()
        return TooLarge(f"the request needs {'at least ' if at_least else ''}{windows} windows of "
                        f"{limits['window_tokens']} tokens; the limit is {self.limits.max_windows} windows per request "
                        f"(max_windows; a context of {limits['context_tokens_always_accepted']:,} tokens always fits)")

    def submit(self, parts: list[Part], timeout_s: float | None = None) -> Job:
        job = Job(parts, timeout_s or self.limits.request_timeout_s, asyncio.get_running_loop())
        with self.lock:
            self.incoming.append(job)
            self.lock.notify()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.work, name="quala-infer", daemon=True)
                self.thread.start()
        return job

    async def answer(self, question: str, context: str, lc: LengthConfig | None, top_k: int) -> list[Answer]:
        """One question's top_k answers (the Python way in; the HTTP handlers add disconnects and 504s)."""
        job = self.submit([Part(question, context, lc, top_k)])
        try:
            return (await job.future)[0]
        finally:
            job.cancel()

    def pending(self) -> int:
        return len(self.incoming) + len(self.ring)

    # -- the worker thread --

    def work(self) -> None:
        while True:
            with self.lock:
                while not self.incoming and not self.ring:
                    self.lock.wait()
                if not self.ring and self.batch_invariant:
                    self.wait_for_batch_mates()
                self.ring += self.incoming
                self.incoming.clear()
            try:
                self.turn()
            except Exception as e:  # a bug here must not leave requests waiting forever
                log.exception("the inference worker failed; failing the requests it held")
                for job in list(self.ring):
                    self.finish(job, InferenceFailed(f"internal error: {type(e).__name__}: {e}"))

    def wait_for_batch_mates(self) -> None:
        """Called with the lock held by an idle worker: wait up to max_wait_ms for more requests to run with."""
        deadline = self.incoming[0].arrived + self.max_wait_ms / 1000
        while sum(len(j.parts) for j in self.incoming) < self.max_batch and time.monotonic() < deadline:
            self.lock.wait(deadline - time.monotonic())

    def turn(self) -> None:
        now = time.monotonic()
        for job in list(self.ring):
            if job.cancelled:
                self.dropped += 1
                self.finish(job, None)
            elif now > job.deadline:
                self.dropped += 1
                self.finish(job, TimedOut(f"no answer within the request timeout of {job.timeout_s:g} s "
                                          f"(quala serve --request-timeout)"))
        self.tokenize_some()
        run = self.pick()
        if run:
            self.run(run)

    def tokenize_some(self) -> None:
        budget = TOKENIZE_CHARS_PER_TURN
        for job in sorted(self.ring, key=lambda j: j.arrived):
            while (part := job.untokenized()) is not None and (budget == TOKENIZE_CHARS_PER_TURN or
                                                                 len(part.context) <= budget):
                budget -= len(part.context)
                if not self.tokenize(job, part):
                    break
            if budget <= 0:
                return

    def tokenize(self, job: Job, part: Part) -> bool:
        c = self.model_config
        try:
            part.reads = context_reads(part.question, part.context, self.tokenizer, self.passages)
            part.features = make_features(read_examples(part.question, part.context, part.reads), self.tokenizer,
                                          c.max_seq_length, c.doc_stride, c.max_query_length)
        except QualaError as e:
            self.finish(job, e)
            return False
        n = len(part.features)
        part.order = sorted(range(n), key=lambda i: -len(part.features[i]))
        part.starts, part.ends = [None] * n, [None] * n
        job.windows += n
        if job.windows > self.limits.max_windows:
            self.finish(job, self.too_large(job.windows, at_least=job.untokenized() is not None))
            return False
        return True

    def pick(self) -> list[tuple[Job, Part, list[int]]]:
        """The windows of the next run: the first runnable request in the ring, then (batch-invariant runtimes)
        others with the same length configuration; the requests served move to the ring's tail."""
        head = next((j for j in self.ring if j.runnable()), None)
        if head is None:
            return []
        first = head.runnable()[0]
        run = [(head, first, first.take(WINDOWS_PER_TURN))]
        if self.batch_invariant:
            room = self.max_batch - len(run[0][2])
            for job in self.ring[self.ring.index(head):]:
                allowance = WINDOWS_PER_TURN - (len(run[0][2]) if job is head else 0)
                for part in job.runnable():
                    if part.lc != first.lc or room <= 0 or allowance <= 0:
                        continue
                    rows = part.take(min(room, allowance))
                    run.append((job, part, rows))
                    room, allowance = room - len(rows), allowance - len(rows)
        served = {id(j) for j, _, _ in run}
        self.ring = [j for j in self.ring if id(j) not in served] + [j for j in self.ring if id(j) in served]
        return run

    def run(self, run: list[tuple[Job, Part, list[int]]]) -> None:
        rows = [(part, i) for _, part, idx in run for i in idx]
        jobs = list({id(j): j for j, _, _ in run}.values())
        try:
            starts, ends, _ = self.predictor(collate([part.features[i] for part, i in rows]), run[0][1].lc)
        except Exception as e:
            if not isinstance(e, QualaError):
                log.exception("inference failed")
                e = InferenceFailed(f"inference failed: {type(e).__name__}: {e}")
            for job in jobs:
                self.finish(job, e)
            return
        self.windows_run += len(rows)
        for r, (part, i) in enumerate(rows):
            n = len(part.features[i])
            part.starts[i], part.ends[i] = starts[r, :n], ends[r, :n]
        for job in jobs:
            if job in self.ring and not job.untokenized() and not any(p.left for p in job.parts):
                self.finish(job, [p.answers() for p in job.parts])

    def finish(self, job: Job, outcome: object) -> None:
        if job in self.ring:
            self.ring.remove(job)
        try:
            job.loop.call_soon_threadsafe(resolve, job.future, outcome)
        except RuntimeError:  # the event loop has closed: nobody is waiting
            pass


# ---- the app ----------------------------------------------------------------------------------------------------

def answer_json(answers: list[Answer], point: FrontPoint | None, started: float) -> dict:
    best = answers[0]
    return {"answer": best.text, "score": best.score, "start": best.start, "end": best.end,
            "answers": [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in answers],
            "config": point.name if point else "full",
            "length_config": point.length_config.to_json() if point and point.length_config else None,
            "expected_latency_ms": point.latency_ms if point else None,
            "measured_ms": round(1000 * (time.perf_counter() - started), 2)}


def json_only(request: Request) -> None:
    """415 for a body that is not JSON (FastAPI would answer with a 422 about the body's type)."""
    given = request.headers.get("content-type")
    mime = (given or "").split(";")[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise HTTPException(415, f"Content-Type {given!r} is not supported: send the body as application/json"
                            if given else "the Content-Type header is missing: send the body as application/json")


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def outcome(job: Job, request: Request) -> list[list[Answer]] | None:
    """The job's answers; None when the client left first (its work is dropped); TimedOut past the deadline."""
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({job.future, gone}, timeout=max(0.0, job.deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
        if job.future.done() and not job.future.cancelled():
            return job.future.result()
        if gone.done():
            return None
        raise TimedOut(f"no answer within the request timeout of {job.timeout_s:g} s "
                       f"(quala serve --request-timeout)")
    finally:
        gone.cancel()
        job.cancel()


class _BodyTooLarge(HTTPException):
    """Raised by BodyLimit's receive(). An HTTPException, because FastAPI turns any other exception raised while it
    reads a body into a 400 ("There was an error parsing the body"); this one it passes on, and the app's handler
    answers it as a 413 in the error shape (BodyLimit answers it where it escapes the app)."""


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 in the API's error shape, as soon as the bytes
    counted so far (chunked or not) pass the limit or its Content-Length says they will; the rest is never read.
    (Starlette's own limit answers in plain text, and replaces an error response that is already on its way.)"""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.message = f"request body is over the limit of {limit} bytes"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self.refuse(scope, receive, send)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge(413, self.message, headers={"connection": "close"})
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await self.refuse(scope, receive, send)

    async def refuse(self, scope, receive, send) -> None:
        response = JSONResponse({"error": self.message}, 413, headers={"connection": "close"})
        await response(scope, receive, send)


def create_app(engine: Engine, max_body_bytes: int | None = None) -> FastAPI:
    limits = engine.limits
    max_body = max_body_bytes or limits.max_body_bytes
    app = FastAPI(title="quala", description="Extractive question answering with a per-request compute budget. "
                  f"Answers carry {OFFSETS}.", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_body)
    app.state.engine = engine
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    app.mount("/docs-assets", StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

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

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message, headers = exc.detail, dict(exc.headers or {})
        if isinstance(exc.__cause__, UnicodeDecodeError):
            message = f"request body is not valid UTF-8 (byte {exc.__cause__.start}: {exc.__cause__.reason})"
        return JSONResponse({"error": str(message)}, exc.status_code, headers=headers)

    @app.exception_handler(QualaError)
    async def bad_value(request: Request, exc: QualaError):
        return JSONResponse({"error": str(exc)}, getattr(exc, "status", 400))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        return {"status": "ok", "pending": engine.pending()}

    @app.api_route("/configs", methods=["GET", "HEAD"])
    async def configs() -> dict:
        """The front's points, the named ones, and the limits every request must keep to."""
        return {"configs": engine.configs(), "named": engine.front.named if engine.front else {},
                "limits": dict(engine.describe_limits(), max_body_bytes=max_body),
                "runtime": {"int8_kernel": getattr(engine.predictor, "int8_kernel", None),
                            "batch_invariant": engine.batch_invariant}}

    def part(item: AnswerRequest, where: str = "") -> tuple[Part, FrontPoint | None]:
        try:
            point = engine.point(item.budget)
        except QualaError as e:
            raise QualaError(f"{where}{e}") from None
        return Part(item.question, item.context, engine.length_config(point), item.top_k), point

    @app.post("/answer", response_model=AnswerResponse, responses=ERRORS, dependencies=[Depends(json_only)])
    async def answer(req: AnswerRequest, request: Request):
        started = time.perf_counter()
        p, point = part(req)
        engine.check_size([p])
        results = await outcome(engine.submit([p]), request)
        return Response(status_code=499) if results is None else answer_json(results[0], point, started)

    @app.post("/answer/batch", response_model=BatchResponse, responses=ERRORS, dependencies=[Depends(json_only)])
    async def answer_batch(req: BatchRequest, request: Request):
        started = time.perf_counter()
        parts, points = zip(*(part(item, f"items[{i}]: ") for i, item in enumerate(req.items)))
        engine.check_size(list(parts))
        results = await outcome(engine.submit(list(parts)), request)
        if results is None:
            return Response(status_code=499)
        return {"results": [answer_json(a, p, started) for a, p in zip(results, points)]}

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="quala API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")

    @app.api_route("/redoc", methods=["GET", "HEAD"], include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title="quala API",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)

    return app


# ---- connections ------------------------------------------------------------------------------------------------

class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol plus what its settings lack (uvicorn times out only idle keep-alive connections,
    and limit_concurrency answers 503 to requests but keeps every silent connection open): a deadline for each
    request's headers and one for its body, and a cap on open connections at which the connection that has waited
    longest for its first request is closed to make room (a keep-alive connection that has been answered goes only
    when no silent one is left: under a flood, the clients being served keep their connections). Subclasses made by
    guarded_protocol() hold the settings."""
    limits: Limits = Limits()
    waiting: OrderedDict = OrderedDict()  # connections between requests or still receiving one, oldest first

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.stage, self.timer, self.served = None, None, False
        self.expect("headers")
        if len(self.connections) > self.limits.max_connections:
            victim = next((c for c in self.waiting if c is not self and not c.served), None)
            victim = victim or next((c for c in self.waiting if c is not self), self)
            victim.settle()  # out of `waiting` now: the next connection of a burst picks another
            victim.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.served = True
        self.track()

    def connection_lost(self, exc: Exception | None) -> None:
        self.settle()
        super().connection_lost(exc)

    def track(self) -> None:
        state = self.conn.their_state
        if state is h11.IDLE and self.stage != "headers" and not self.transport.is_closing():
            self.expect("headers")
        elif state is h11.SEND_BODY and self.stage != "body":
            self.expect("body")
        elif state not in (h11.IDLE, h11.SEND_BODY):
            self.settle()

    def expect(self, stage: str) -> None:
        self.settle()
        self.stage = stage
        timeout = self.limits.header_timeout_s if stage == "headers" else self.limits.body_timeout_s
        self.timer = self.loop.call_later(timeout, self.transport.close)
        self.waiting[self] = None

    def settle(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.stage, self.timer = None, None
        self.waiting.pop(self, None)


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "waiting": OrderedDict()})


def open_files_limit(wanted: int) -> int:
    """Raise this process's open-file limit to its hard limit; the connections that limit leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return min(wanted, max(16, soft - 128))  # model files, logs and the listening socket need a few


def server_config(app: FastAPI, host: str, port: int, limits: Limits, log_level: str = "info"):
    import uvicorn
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits), log_level=log_level,
                          timeout_keep_alive=limits.keep_alive_s, backlog=2048,
                          h11_max_incomplete_event_size=16 * 1024,  # request line and headers
                          timeout_graceful_shutdown=5)


def load_engine(model_dir: str | Path | None = None, runtime: str = "auto", max_batch: int = 16,
                max_wait_ms: float = 5.0, limits: Limits = Limits(), passages: int | None = PASSAGES,
                threads: int | None = None, verify: bool = True) -> Engine:
    import quala
    qa = quala.load(model_dir, runtime, threads=threads, verify=verify)
    return Engine(qa.predictor, qa.tokenizer, qa.config, qa.front, max_batch, max_wait_ms, limits, passages)


def serve(model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto",
          max_batch: int = 16, max_wait_ms: float = 5.0, limits: Limits = Limits(),
          passages: int | None = PASSAGES, threads: int | None = None, verify: bool = True) -> None:
    import uvicorn
    connections = open_files_limit(limits.max_connections)
    if connections < limits.max_connections:
        log.warning("at most %d connections: the open-file limit allows no more", connections)
        limits = Limits(**dict(asdict(limits), max_connections=connections))
    app = create_app(load_engine(model_dir, runtime, max_batch, max_wait_ms, limits, passages, threads, verify))
    uvicorn.Server(server_config(app, host, port, limits)).run()
