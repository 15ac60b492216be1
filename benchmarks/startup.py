"""Start-up cost of answering: a fresh Python process, each phase timed, medians over repeats.

    python benchmarks/startup.py [--model DIR] [--repeats 5]

Phases: interpreter start -> `import quala` and the CLI module -> model loaded (checksums, ONNX Runtime session,
tokenizer, front) -> the first answer. The target is under 1 s to the first model call, the model load excluded.
Also says whether torch / transformers were imported (the core install has neither).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from quala.runtime import cpu_description

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import quala, quala.cli
from quala.pipeline import load
t1 = time.perf_counter()
qa = load(sys.argv[1] if len(sys.argv) > 1 else None)
t2 = time.perf_counter()
qa("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600.", budget=None)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_call": t3 - t2, "since_start": time.perf_counter(),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def run_once(model: str | None) -> dict:
    import time
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *([model] if model else [])], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process"] = time.perf_counter() - start
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes timed (default 5)")
    args = p.parse_args(argv)
    runs = [run_once(str(args.model) if args.model else None) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in ("import", "load", "first_call", "process")}
    before_call = med["process"] - med["load"] - med["first_call"]
    print(f"CPU: {cpu_description()}")
    print(f"python {sys.version.split()[0]}, {sys.executable}; median of {args.repeats} fresh processes\n")
    print("| phase | ms |\n| --- | ---: |")
    print(f"| import quala + CLI module | {1000 * med['import']:.0f} |")
    print(f"| load the model (checksums, ONNX Runtime session, tokenizer, front) | {1000 * med['load']:.0f} |")
    print(f"| first answer | {1000 * med['first_call']:.0f} |")
    print(f"| whole process, start to exit | {1000 * med['process']:.0f} |")
    print(f"| **to the first model call, model load excluded** | **{1000 * (before_call + med['first_call']):.0f}** |")
    print(f"\ntorch imported: {runs[0]['torch']}; transformers imported: {runs[0]['transformers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
