"""Abuse test of `quala serve` on loopback: each attack runs while 8 well-behaved clients ask normal questions.

    python benchmarks/abuse.py [--model DIR] [--server-dir CHECKOUT] [--seconds 12] [--attacks budget,chunked,...]

Starts the server in a subprocess on a free loopback port (from --server-dir, a checkout such as a `git worktree`
of an older commit, to measure the code before a change), asks each of --questions SQuAD dev questions alone for
the reference answers, then runs one row per attack: a quiet row, then each attack (in its own process) while the
normal clients ask questions back to back. Per row it prints the normal clients' requests, errors, answers that
differ from the reference, p50/p99 and p99 over the quiet row's p99; the slowest /health (a fresh connection every
100 ms) and its failures; the server's RSS at the start and 2 s after the row; the log's growth and its
tracebacks; how long the server stayed busy after the row (until a normal request is quick again); the CPU the
server and the attacker used (cores busy on average: on a 2-core machine the attacker's share is taken from the
server; --attacker-nice lowers its priority); and the attack's own outcome. Bounded: each row lasts --seconds (the
connection flood --flood-seconds), every attack is capped in count and size, leftover work is waited for at most
--settle-seconds. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from load import wait_until_up  # benchmarks/load.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("budget", "chunked", "huge-context", "long-context", "abandoned", "connections", "aborts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, server_dir: Path, log: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(server_dir))
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "quala.cli", "serve", "--model", model, "--port", str(port),
                             *extra], cwd=server_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url, log.read_text)
    return proc, url


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# ---- the well-behaved side ------------------------------------------------------------------------------------

async def normal_clients(url: str, items: list[dict], reference: list[str], stop: asyncio.Event, n: int = 8
                         ) -> dict:
    """n clients asking questions back to back until stop; each request's latency, errors, changed answers."""
    latencies, errors, wrong = [], 0, 0
    counter = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker():
            nonlocal counter, errors, wrong
            while not stop.is_set():
                i = counter % len(items)
                counter += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/answer", json=items[i])
                except httpx.HTTPError:
                    errors += 1
                    latencies.append(1000 * (time.perf_counter() - t0))
                    continue
                latencies.append(1000 * (time.perf_counter() - t0))
                if r.status_code != 200:
                    errors += 1
                elif r.json()["answer"] != reference[i]:
                    wrong += 1
        await asyncio.gather(*(worker() for _ in range(n)))
    return {"requests": len(latencies), "errors": errors, "wrong": wrong, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99)}


def health_probe(port: int, stop: threading.Event, out: dict) -> None:
    """GET /health on a fresh connection every 100 ms (a thread of its own, so the clients' event loop cannot
    delay it): the slowest answer and the failures (no answer within 5 s, or not 200)."""
    worst, failures, probes = 0.0, 0, 0
    while not stop.is_set():
        t0 = time.perf_counter()
        probes += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                failures += 1
        except OSError:
            failures += 1
        worst = max(worst, 1000 * (time.perf_counter() - t0))
        stop.wait(max(0.0, 0.1 - (time.perf_counter() - t0)))
    out.update(health_max_ms=worst, health_failures=failures, health_probes=probes)


# ---- the attacks (each runs in a process of its own and returns a line about its outcome) -------------------

async def post_raw(host: str, port: int, body: bytes, extra: str = "") -> tuple[asyncio.StreamReader,
                                                                                 asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"POST /answer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
    await writer.drain()
    return reader, writer


def statuses(codes: list) -> str:
    counts: dict = {}
    for c in codes:
        counts[c] = counts.get(c, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str))


async def attack_budget(url: str, seconds: float, ctx: dict) -> str:
    """Budgets of 12,000 digits and a '!' (a backtracking regular expression takes seconds on each), one after
    another, at most 200."""
    codes, times = [], []
    body = {"question": "What is it?", "context": "It is a river.", "budget": "1" * 12000 + "!"}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=seconds + 30) as client:
        while time.monotonic() < deadline and len(codes) < 200:
            t0 = time.perf_counter()
            try:
                codes.append((await client.post("/answer", json=body)).status_code)
            except httpx.HTTPError as e:
                codes.append(type(e).__name__)
            times.append(time.perf_counter() - t0)
    return f"{len(codes)} sent ({statuses(codes)}), slowest {max(times):.2f} s"


async def attack_chunked(url: str, seconds: float, ctx: dict) -> str:
    """A chunked body (no Content-Length) of up to 256 MB sent as fast as loopback allows; up to 3 in a row."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(results) < 3:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST /answer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n".encode() + b"1\r\n{\r\n")
        reply = asyncio.ensure_future(reader.read(200))
        sent = 0
        try:
            while sent < 256 << 20 and not reply.done() and time.monotonic() < deadline + 30:
                writer.write(chunk)
                await writer.drain()
                sent += 0x10000
            status = (await asyncio.wait_for(reply, 60)).split(b"\r\n")[0].decode(errors="replace")[9:12] or "closed"
        except (OSError, asyncio.TimeoutError) as e:
            status = type(e).__name__
        reply.cancel()
        writer.close()
        results.append(f"{status} after {sent >> 20} MB")
    return f"{len(results)} uploads: " + "; ".join(results)


async def attack_huge_context(url: str, seconds: float, ctx: dict) -> str:
    """One context of --huge-words short words (the issue's was 200,000 words, 765 KB)."""
    rng = random.Random(0)
    words = " ".join(rng.choice(["ab", "cd", "ef", "river", "the", "of"]) for _ in range(ctx["huge_words"]))
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=ctx["settle_seconds"]) as client:
        try:
            r = await client.post("/answer", json={"question": "Which river?", "context": words})
            code = str(r.status_code) + (f" ({r.json().get('error', '')[:70]})" if r.status_code != 200 else "")
        except httpx.HTTPError as e:
            code = type(e).__name__
    return f"{len(words) // 1000} KB: {code} in {time.perf_counter() - t0:.1f} s"


async def attack_long_context(url: str, seconds: float, ctx: dict) -> str:
    """The largest context the server accepts by default, asked again and again by one client."""
    times, codes = [], []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < deadline and len(codes) < 100:
            t0 = time.perf_counter()
            try:
                r = await client.post("/answer", json={"question": "Where is the key?", "context": ctx["long"]})
                codes.append(r.status_code)
            except httpx.HTTPError as e:
                codes.append(type(e).__name__)
            times.append(time.perf_counter() - t0)
    return (f"{ctx['long_windows']} windows: {len(codes)} sent ({statuses(codes)}), "
            f"median {statistics.median(times):.2f} s")


async def attack_abandoned(url: str, seconds: float, ctx: dict) -> str:
    """The largest accepted context, the client gone 0.3 s later; 10 of them, one a second."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    body = json.dumps({"question": "Where is the key?", "context": ctx["long"]}).encode()
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < 10:
        _, writer = await post_raw(host, port, body)
        await asyncio.sleep(0.3)
        writer.transport.abort()
        sent += 1
        await asyncio.sleep(0.7)
    return f"{sent} requests of {ctx['long_windows']} windows, abandoned after 0.3 s"


async def attack_connections(url: str, seconds: float, ctx: dict) -> str:
    """--flood-connections connections: half say nothing, half send a request line and then one header byte every
    2 s (slowloris); held for the whole row."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ctx["flood_connections"] + 512
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        pass
    writers, refused = [], 0
    deadline = time.monotonic() + seconds
    for i in range(ctx["flood_connections"]):
        if time.monotonic() > deadline:
            break
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError):
            refused += 1
            continue
        if i % 2:
            w.write(b"POST /answer HTTP/1.1\r\nHost: x\r\n")
        writers.append(w)
        if i % 200 == 0:
            await asyncio.sleep(0)
    opened = len(writers)
    while time.monotonic() < deadline:
        await asyncio.sleep(2)
        for i, w in enumerate(writers):
            if i % 2 and not w.is_closing():
                w.write(b"X")
    closed = sum(1 for w in writers if is_closed_by_peer(w))
    for w in writers:
        w.transport.abort()
    return f"{opened} opened, {refused} refused or timed out, {closed} closed by the server before the end"


def is_closed_by_peer(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    with socket.socket(fileno=os.dup(sock.fileno())) as s:
        try:
            return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


async def attack_aborts(url: str, seconds: float, ctx: dict) -> str:
    """300 normal requests, each client gone 20 ms after sending it: every other one half-way through its body."""
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    body = json.dumps({"question": "Which river?", "context": ctx["short"]}).encode()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and n < 300:
        reader, writer = await asyncio.open_connection(host, port)
        sent = body if n % 2 else body[: len(body) // 2]
        writer.write(f"POST /answer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + sent)
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.transport.abort()
        n += 1
    return f"{n} requests abandoned 20 ms after sending (half of them in the middle of the body)"


def run_attack(name: str, url: str, seconds: float, ctx: dict, out) -> None:
    """One attack in this process, at the niceness --attacker-nice adds; sends (outcome line, cores it kept busy
    while it ran)."""
    fn = globals()["attack_" + name.replace("-", "_")]
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        os.nice(ctx["attacker_nice"])
        line = asyncio.run(fn(url, seconds, ctx))
    except Exception as e:  # the outcome line says what went wrong; the row still prints
        line = f"attack failed: {type(e).__name__}: {e}"
    out.send((line, (time.process_time() - cpu0) / max(1e-9, time.monotonic() - t0)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- rows ------------------------------------------------------------------------------------------------------

async def settle(url: str, item: dict, quick_ms: float, limit_s: float) -> float:
    """Seconds until a single normal request answers within 3x its quiet latency again (work the attack left)."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=limit_s) as client:
        while time.perf_counter() - t0 < limit_s:
            t1 = time.perf_counter()
            try:
                await client.post("/answer", json=item)
            except httpx.HTTPError:
                pass
            if 1000 * (time.perf_counter() - t1) < 3 * quick_ms:
                return time.perf_counter() - t0
            await asyncio.sleep(0.2)
    return time.perf_counter() - t0


def tracebacks(log: Path, start: int) -> tuple[int, int]:
    with open(log, "rb") as f:
        f.seek(start)
        data = f.read()
    return len(data), data.count(b"Traceback")


def row(name: str, proc: subprocess.Popen, url: str, log: Path, items: list[dict], reference: list[str],
        seconds: float, ctx: dict, quick_ms: float) -> dict:
    rss0, log0, cpu0, t0 = rss_mb(proc.pid), log.stat().st_size, cpu_seconds(proc.pid), time.monotonic()
    stop_health, health = threading.Event(), {}
    prober = threading.Thread(target=health_probe, args=(int(url.rsplit(":", 1)[1]), stop_health, health))
    prober.start()
    attacker, outcome = None, ""
    if name != "quiet":
        here, there = multiprocessing.Pipe(duplex=False)
        attacker = multiprocessing.get_context("spawn").Process(target=run_attack,
                                                                args=(name, url, seconds, ctx, there))
        attacker.start()

    async def clients():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await normal_clients(url, items, reference, stop)

    result = asyncio.run(clients())
    server_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
    stop_health.set()
    prober.join()
    attacker_cpu = 0.0
    if attacker is not None:
        attacker.join(ctx["settle_seconds"])
        outcome, attacker_cpu = here.recv() if here.poll(1) else ("still running at the end of the row (stopped)",
                                                                   float("nan"))
        if attacker.is_alive():
            attacker.kill()
            attacker.join()
    busy = asyncio.run(settle(url, items[0], quick_ms, ctx["settle_seconds"]))
    time.sleep(2)
    grown, traces = tracebacks(log, log0)
    return dict(result, attack=name, outcome=outcome, rss0=rss0, rss1=rss_mb(proc.pid), log_kb=grown / 1024,
                tracebacks=traces, busy_s=busy, alive=proc.poll() is None, server_cpu=server_cpu,
                attacker_cpu=attacker_cpu, **health)


def long_context(tokenizer_dir: str, windows: int) -> tuple[str, int]:
    """Dev contexts joined until the text makes `windows` windows for a short question, then a sentence with the
    answer at its end."""
    import quala
    from quala.config import squad_path
    from quala.data import Example, load_squad, make_features
    qa = quala.load(tokenizer_dir)
    contexts = list(dict.fromkeys(e.context for e in load_squad(squad_path("dev"), limit=2000)))
    text, n = "", 0
    for c in contexts:
        candidate = (text + "\n\n" + c).strip() + "\n\nThe key is under the mat."
        n_new = len(make_features([Example("0", "Where is the key?", candidate)], qa.tokenizer,
                                  qa.config.max_seq_length, qa.config.doc_stride, qa.config.max_query_length))
        if n_new > windows:
            break
        text, n = candidate[: -len("\n\nThe key is under the mat.")], n_new
    return text + "\n\nThe key is under the mat.", n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory to serve (default: the released model)")
    p.add_argument("--server-dir", type=Path, default=ROOT,
                   help="checkout whose quala package runs the server (default: this one)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of: {', '.join(ATTACKS)}")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each row (default 12)")
    p.add_argument("--flood-seconds", type=float, default=25.0, help="length of the connection flood's row")
    p.add_argument("--flood-connections", type=int, default=20_000)
    p.add_argument("--huge-words", type=int, default=20_000, help="words of the huge context (default 20,000)")
    p.add_argument("--long-windows", type=int, default=56, help="windows of the largest accepted context")
    p.add_argument("--settle-seconds", type=float, default=90.0, help="longest wait for leftover work after a row")
    p.add_argument("--questions", type=int, default=64, help="distinct dev questions the normal clients ask")
    p.add_argument("--server-args", default="", help="more `quala serve` options, e.g. '--read-all'")
    p.add_argument("--attacker-nice", type=int, default=0, choices=range(20), metavar="0..19",
                   help="run each attack at this much lower CPU priority (default 0: the attacker shares the "
                        "server's cores as an equal; 19 comes closest, on one machine, to an attacker on its own)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"--attacks: unknown attack {a!r} (choose from {', '.join(ATTACKS)})")
    from quala.config import default_model_dir, squad_path
    from quala.data import load_squad
    from quala.runtime import cpu_description
    model = str(Path(args.model or default_model_dir()).resolve())
    examples = load_squad(squad_path("dev"), limit=args.questions)
    items = [{"question": e.question, "context": e.context} for e in examples]
    long_text, long_windows = long_context(model, args.long_windows)
    ctx = {"huge_words": args.huge_words, "long": long_text, "long_windows": long_windows,
           "short": examples[0].context, "flood_connections": args.flood_connections,
           "settle_seconds": args.settle_seconds, "attacker_nice": args.attacker_nice}
    log = Path(tempfile.mkdtemp(prefix="quala-abuse-")) / "server.log"
    proc, url = start_server(model, args.server_dir.resolve(), log, shlex.split(args.server_args))
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            times, reference = [], []
            for item in items:
                t0 = time.perf_counter()
                r = client.post("/answer", json=item)
                times.append(1000 * (time.perf_counter() - t0))
                r.raise_for_status()
                reference.append(r.json()["answer"])
        quick_ms = statistics.median(times)
        for name in ["quiet"] + attacks:
            seconds = args.flood_seconds if name == "connections" else args.seconds
            rows.append(row(name, proc, url, log, items, reference, seconds, ctx, quick_ms))
            print(f"  {name}: done", file=sys.stderr, flush=True)
            if not rows[-1]["alive"]:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    quiet = rows[0]["p99"]
    print(f"server {args.server_dir.resolve()} ({model}) {args.server_args}, {url}; CPU: {cpu_description()}")
    print(f"8 normal clients, {args.questions} dev questions (default budget), {args.seconds:.0f} s per row "
          f"({args.flood_seconds:.0f} s for the connection flood); single request {quick_ms:.1f} ms; attacker "
          f"niceness +{args.attacker_nice}; CPU columns: cores busy on average during the row\n")
    print("| attack | normal requests | errors | wrong answers | p50 ms | p99 ms | p99 / quiet | /health max ms | "
          "/health failures | RSS MB start -> after | log KB (tracebacks) | busy after s | server CPU | "
          "attacker CPU | attack outcome |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['requests']} | {r['errors']} | {r['wrong']} | {r['p50']:.0f} | {r['p99']:.0f} | "
              f"{r['p99'] / quiet:.1f} | {r['health_max_ms']:.0f} | {r['health_failures']}/{r['health_probes']} | "
              f"{r['rss0']:.0f} -> {r['rss1']:.0f} | {r['log_kb']:.0f} ({r['tracebacks']}) | {r['busy_s']:.1f} | "
              f"{r['server_cpu']:.2f} | {r['attacker_cpu']:.2f} | "
              f"{r['outcome'] or '-'}{'' if r['alive'] else ' (SERVER DIED)'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
