"""Load test of `quala serve` on loopback: N concurrent clients for a fixed time, per budget.

    python benchmarks/load.py --model DIR [--concurrency 1,8,32] [--budgets fastest,accurate] [--seconds 10]

Starts the server in a subprocess on a free loopback port (or uses --url of a running one), sends real SQuAD dev
questions, checks every answer against the one the same request got alone (batching must not change answers),
and prints throughput, p50/p95/p99 latency and errors per (budget, concurrency), plus p99 as a multiple of the
single-request latency. Bounded: at most --max-requests per row and --seconds per row.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx

from quala.config import squad_path
from quala.data import load_squad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, runtime: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "quala.cli", "serve", "--model", model, "--runtime", runtime,
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url, lambda: proc.stderr.read().decode())
    return proc, url


def wait_until_up(proc: subprocess.Popen, url: str, output) -> None:
    """Until the server at url answers /health (60 s at most); output() gives its log if it exits first."""
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {output()[-2000:]}")
    raise SystemExit("server did not start in 60 s")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def run_row(url: str, items: list[dict], budget: str, concurrency: int, seconds: float, max_requests: int,
                  reference: dict[int, str]) -> dict:
    latencies, errors, wrong = [], 0, 0
    sent = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker():
            nonlocal sent, errors, wrong
            while time.monotonic() < deadline and sent < max_requests:
                i = sent % len(items)
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/answer", json=dict(items[i], budget=budget))
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(1000 * (time.perf_counter() - t0))
                if r.status_code != 200:
                    errors += 1
                elif i in reference and r.json()["answer"] != reference[i]:
                    wrong += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"budget": budget, "concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "wrong": wrong, "throughput": len(latencies) / elapsed, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)}


async def references(url: str, items: list[dict], budget: str) -> tuple[dict[int, str], float]:
    """Each question asked alone, one at a time: the answers to expect and the single-request median latency."""
    answers, times = {}, []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            r = await client.post("/answer", json=dict(item, budget=budget))
            times.append(1000 * (time.perf_counter() - t0))
            r.raise_for_status()
            answers[i] = r.json()["answer"]
    return answers, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory to serve (default: the released model)")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--url", default=None, help="use this running server instead of starting one (loopback only)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--budgets", default="fastest,accurate")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each row")
    p.add_argument("--max-requests", type=int, default=2000, help="most requests of each row")
    p.add_argument("--questions", type=int, default=64, help="distinct dev questions sent")
    p.add_argument("--p99-multiple", type=float, default=None,
                   help="fail (exit 1) when a row's p99 exceeds this multiple of concurrency x single latency")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SystemExit("--url must be a loopback address")
    proc = None
    if args.url is None:
        from quala.config import default_model_dir
        proc, url = start_server(args.model or str(default_model_dir()), args.runtime)
    else:
        url = args.url
    try:
        examples = load_squad(squad_path("dev"), limit=args.questions)
        items = [{"question": e.question, "context": e.context} for e in examples]
        rows = []
        for budget in args.budgets.split(","):
            reference, single = asyncio.run(references(url, items, budget))
            for c in (int(x) for x in args.concurrency.split(",")):
                row = asyncio.run(run_row(url, items, budget, c, args.seconds, args.max_requests, reference))
                row["single_ms"] = single
                row["p99_over_single"] = row["p99"] / single
                rows.append(row)
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
    print(f"server {url}, {args.questions} dev questions, {args.seconds:.0f} s per row\n")
    print("| budget | clients | requests | errors | wrong answers | req/s | p50 ms | p95 ms | p99 ms | single ms | "
          "p99 / single |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['wrong']} | "
              f"{r['throughput']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['single_ms']:.1f} | "
              f"{r['p99_over_single']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r for r in rows if r["errors"] or r["wrong"] or (args.p99_multiple and r["p99_over_single"]
                                                            > args.p99_multiple * r["concurrency"])]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
