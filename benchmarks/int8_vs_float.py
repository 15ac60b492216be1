"""INT8 against its float self at every point of the front: the issue's "no configuration may lose more than 1 F1".

    python benchmarks/int8_vs_float.py --model DIR [--int8 FILE] [--float FILE] [--configs "A;B"] [--limit 500]
                                       [--loss-limit 1] [--json F]

Two stages, like the search: every configuration of DIR/length_configs.json (and the full length) is scored on the
first --limit dev questions with PyTorch fp32 and with the INT8 ONNX model; each one whose INT8 F1 falls more than
--confirm-over (default --loss-limit, 1) below its float F1 there is scored again, both ways, on the whole dev set
(--confirm-limit), where a paired difference of a point is no longer noise: on 500 questions the INT8-float
difference of one configuration swings by about +-2 F1 from a handful of re-ranked tokens. The verdict of a row
uses its largest sample (also one cached by an earlier run with a lower --confirm-over). Scores are cached per
configuration in --work-dir, so an interrupted run resumes.

The float side is PyTorch fp32 by default; --float DIR/model.onnx scores the float ONNX export of the same weights
instead (the graph quantization starts from), several times faster on a CPU, which makes a whole-dev comparison of a
few points (--configs) a matter of minutes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from quala.budget import read_front
from quala.config import LengthConfig, QualaError, squad_path
from quala.data import load_squad
from quala.files import read_json, write_json_atomic
from quala.evaluate import TorchPredictor
from quala.modeling import ModelConfig, QualaForQuestionAnswering, load_tokenizer
from quala.runtime import OnnxPredictor
from quala.search import ScoreCache, Scorer, runtime_name, weights_digest


def front_configs(model_dir: Path, only: str | None = None) -> list[str]:
    """'full' and every configuration of the front, or only those named in `only` (';'-separated)."""
    if only:
        return [str(LengthConfig.parse(k.strip()) or "full") for k in only.split(";")]
    front = read_front(model_dir)
    return ["full"] + [str(p.length_config) for p in front.configs]


class Pair:
    """The float model (PyTorch fp32, or a float ONNX file) and the INT8 file, loaded (and their weights hashed)
    once for every sample scored."""

    def __init__(self, model_dir: Path, int8: Path, float_onnx: Path | None = None):
        self.config = ModelConfig.from_dict(read_json(model_dir / "config.json"))
        self.tokenizer = load_tokenizer(model_dir)
        floating = (OnnxPredictor(float_onnx, self.config) if float_onnx else
                    TorchPredictor(QualaForQuestionAnswering.from_pretrained(model_dir)))
        self.predictors = (floating, OnnxPredictor(int8, self.config))
        self.runtimes = [runtime_name(p) for p in self.predictors]
        self.digests = [weights_digest(model_dir, p) for p in self.predictors]

    def scorers(self, limit: int | None, work: Path, batch_size: int) -> tuple[Scorer, Scorer]:
        """(float, INT8) scorers of the first `limit` dev questions (all: None), each with its own cache."""
        dev = load_squad(squad_path("dev"), limit=limit)
        pair = []
        for predictor, runtime, digest in zip(self.predictors, self.runtimes, self.digests):
            fingerprint = {"model": digest, "runtime": runtime, "dev_file": str(squad_path("dev")), "dev_limit": limit}
            cache = ScoreCache(work / f"{runtime.replace(':', '-')}.dev{limit or 'all'}.json", fingerprint)
            pair.append(Scorer(predictor, self.tokenizer, self.config, dev, cache, batch_size))
        return pair[0], pair[1]


def compare(keys: list[str], screen: tuple[Scorer, Scorer], confirm: tuple[Scorer, Scorer] | None,
            confirm_over: float) -> list[dict]:
    """One row per configuration, cheapest first: screen F1s, and confirm F1s where the screen flagged a loss."""
    rows = []
    for k in tqdm(keys, desc="configs", unit="config", leave=False):
        f, q = screen[0].score(k), screen[1].score(k)
        row = {"length_config": k, "gmacs": f["gmacs"], "f1_float": f["f1"], "f1_int8": q["f1"],
               "delta": q["f1"] - f["f1"], "questions": len(screen[0].examples)}
        if confirm and (row["delta"] < -confirm_over or all(k in c.cache for c in confirm)):
            cf, cq = confirm[0].score(k), confirm[1].score(k)
            row |= {"confirm_f1_float": cf["f1"], "confirm_f1_int8": cq["f1"], "confirm_delta": cq["f1"] - cf["f1"],
                    "confirm_questions": len(confirm[0].examples)}
        rows.append(row)
    return sorted(rows, key=lambda r: r["gmacs"])


def verdict(row: dict) -> float:
    return row.get("confirm_delta", row["delta"])


def table(rows: list[dict], limit: float) -> str:
    confirm_n = next((r["confirm_questions"] for r in rows if "confirm_questions" in r), None)
    head = f"| length config | GMACs | F1 float | F1 INT8 | INT8 - float ({rows[0]['questions']} q) |"
    if confirm_n:
        head += f" F1 float ({confirm_n} q) | F1 INT8 ({confirm_n} q) | INT8 - float ({confirm_n} q) |"
    lines = [head, "| --- |" + " ---: |" * (head.count("|") - 2)]
    mark = lambda d, final: f"**{d:+.2f}**" if final and d < -limit else f"{d:+.2f}"  # noqa: E731
    for r in rows:
        cells = [r["length_config"], f"{r['gmacs']:.3f}", f"{r['f1_float']:.2f}", f"{r['f1_int8']:.2f}",
                 mark(r["delta"], "confirm_delta" not in r)]
        if confirm_n:
            cells += [f"{r['confirm_f1_float']:.2f}", f"{r['confirm_f1_int8']:.2f}", mark(r["confirm_delta"], True)] \
                if "confirm_delta" in r else ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    final = [verdict(r) for r in rows]
    worse = sum(d < -limit for d in final)
    confirmed = sum("confirm_delta" in r for r in rows)
    lines.append(f"\n{len(rows)} configurations, {confirmed} scored again on {confirm_n or 0} questions: INT8 - float "
                 f"(largest sample) from {min(final):+.2f} to {max(final):+.2f} (mean {sum(final) / len(final):+.2f}); "
                 f"{worse} lose more than {limit:g} F1.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model directory: model.safetensors, length_configs.json")
    p.add_argument("--int8", type=Path, default=None, help="quantized ONNX file (default MODEL/model.int8.onnx); "
                   "e.g. a mixed-precision one from `quala quantize --keep-float`")
    p.add_argument("--float", dest="float_onnx", type=Path, default=None,
                   help="a float ONNX file of the same weights (e.g. MODEL/model.onnx) as the float side instead of "
                   "PyTorch fp32")
    p.add_argument("--configs", default=None,
                   help="';'-separated length configurations to compare ('full' for full length) instead of the "
                   "whole front")
    p.add_argument("--limit", type=int, default=500, help="screening sample: the first N dev questions (default 500)")
    p.add_argument("--confirm-over", type=float, default=None,
                   help="score again every configuration losing more than this on the screen (default: --loss-limit)")
    p.add_argument("--confirm-limit", type=int, default=0, help="questions of the second score (default 0: all dev)")
    p.add_argument("--no-confirm", action="store_true", help="screen only")
    p.add_argument("--loss-limit", type=float, default=1.0, help="F1 loss to flag (default 1)")
    p.add_argument("--work-dir", type=Path, default=None, help="score caches (default MODEL/int8_vs_float)")
    p.add_argument("--batch-size", type=int, default=32, help="features per forward pass")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    int8 = args.int8 or args.model / "model.int8.onnx"
    work = args.work_dir or args.model / "int8_vs_float"
    try:
        keys = front_configs(args.model, args.configs)
        work.mkdir(parents=True, exist_ok=True)
        pair = Pair(args.model, int8, args.float_onnx)
        screen = pair.scorers(args.limit, work, args.batch_size)
        confirm = None if args.no_confirm else pair.scorers(args.confirm_limit or None, work, args.batch_size)
        over = args.loss_limit if args.confirm_over is None else args.confirm_over
        rows = compare(keys, screen, confirm, over)
    except QualaError as e:
        raise SystemExit(f"error: {e}")
    print(f"{pair.runtimes[0]} vs {pair.runtimes[1]} ({int8}), model {args.model}\n")
    print(table(rows, args.loss_limit))
    if args.json:
        write_json_atomic(args.json, {"model": str(args.model), "int8": str(int8), "rows": rows})


if __name__ == "__main__":
    main()
