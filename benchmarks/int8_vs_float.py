"""INT8 against its float self at every point of the front: the issue's "no configuration may lose more than 1 F1".

Reads two `benchmarks/tradeoff.py` results on the same dev questions, one per runtime, and prints a table:

  python benchmarks/tradeoff.py --model M --limit 500 --json float.json --png float.png
  python benchmarks/tradeoff.py --model M --limit 500 --runtime onnx-int8 --repeats 0 --json int8.json --png int8.png
  python benchmarks/int8_vs_float.py float.json int8.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_front(path: Path) -> tuple[dict, dict[str, dict]]:
    try:
        result = json.loads(path.read_text())
        rows = {r["length_config"]: r for r in result["rows"] if r["method"] == "front"}
        return result["info"], rows
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a benchmarks/tradeoff.py result ({e})")


def compare(float_rows: dict[str, dict], int8_rows: dict[str, dict]) -> list[dict]:
    """One row per configuration present in both, cheapest first, with the F1 that INT8 changes."""
    rows = [{"length_config": c, "gmacs": float_rows[c]["gmacs"], "f1_float": float_rows[c]["f1"],
             "f1_int8": int8_rows[c]["f1"], "delta": int8_rows[c]["f1"] - float_rows[c]["f1"]}
            for c in float_rows if c in int8_rows]
    return sorted(rows, key=lambda r: r["gmacs"])


def table(rows: list[dict], limit: float) -> str:
    lines = ["| length config | GMACs | F1 float | F1 INT8 | INT8 - float |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mark = " **" if r["delta"] < -limit else ""
        lines.append(f"| {r['length_config']} | {r['gmacs']:.3f} | {r['f1_float']:.2f} | {r['f1_int8']:.2f} | "
                     f"{mark.strip()}{r['delta']:+.2f}{mark[::-1].strip()} |")
    deltas = [r["delta"] for r in rows]
    worse = sum(d < -limit for d in deltas)
    lines.append(f"\n{len(rows)} configurations: INT8 - float from {min(deltas):+.2f} to {max(deltas):+.2f} "
                 f"(mean {sum(deltas) / len(deltas):+.2f}); {worse} lose more than {limit:g} F1.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("float_json", type=Path, help="tradeoff.py result of the float model (--runtime torch or onnx)")
    p.add_argument("int8_json", type=Path, help="tradeoff.py result of the INT8 model (--runtime onnx-int8)")
    p.add_argument("--limit", type=float, default=1.0, help="F1 loss to flag (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    info_float, front_float = load_front(args.float_json)
    info_int8, front_int8 = load_front(args.int8_json)
    if info_float.get("questions") != info_int8.get("questions"):
        raise SystemExit(f"{args.float_json} scored {info_float.get('questions')} questions, {args.int8_json} "
                         f"{info_int8.get('questions')}: run both with the same --limit")
    rows = compare(front_float, front_int8)
    if not rows:
        raise SystemExit(f"{args.float_json} and {args.int8_json} share no front configuration")
    print(f"{info_float.get('runtime')} vs {info_int8.get('runtime')}, first {info_float.get('questions')} dev "
          f"questions, model {info_int8.get('model')}\n")
    print(table(rows, args.limit))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
