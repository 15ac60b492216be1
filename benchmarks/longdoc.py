"""Long documents: SQuAD dev asked against whole articles instead of single paragraphs.

    python benchmarks/longdoc.py [--model DIR] [--limit 300] [--budgets accurate,balanced] [--passages 1,3,5]
                                 [--json runs/longdoc.json]

Each sampled dev question (every k-th of the official dev set, so all 48 articles are covered) is asked three
ways, at each budget: against its own paragraph (SQuAD's setting), against all paragraphs of its article joined by
blank lines read whole (every 384-token window), and against the article read only in the n passages BM25 ranks
best for the question (quala.longdoc; n from --passages). Per row: EM/F1 (official v1.1 rules), windows read per
question, ms per question (tokenizing, retrieval and the model, all questions of a row in one batched call), and
time and F1 against the paragraph row of the same budget. Prints the CPU like every quala benchmark.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import quala
from quala.config import QualaError, squad_path
from quala.data import Example, load_squad, squad_dataset
from quala.files import write_json_atomic
from quala.metrics import squad_scores
from quala.pipeline import context_reads, read_examples
from quala.runtime import cpu_description


def articles(examples: list[Example]) -> dict[str, str]:
    """Title -> the article's paragraphs in order, joined by blank lines."""
    paragraphs: dict[str, list[str]] = {}
    for e in examples:
        ps = paragraphs.setdefault(e.title, [])
        if not ps or ps[-1] != e.context:
            ps.append(e.context)
    return {t: "\n\n".join(ps) for t, ps in paragraphs.items()}


def run_row(qa, sample: list[Example], contexts: list[str], budget: str, passages: int | None) -> dict:
    lc, _ = qa.resolve(budget)
    pairs = [(e.question, c) for e, c in zip(sample, contexts)]
    windows = count_windows(qa, pairs, passages)
    t0 = time.perf_counter()
    answers = qa.answer_pairs(pairs, lc, top_k=1, passages=passages)
    seconds = time.perf_counter() - t0
    scores = squad_scores(squad_dataset(sample), {e.id: a[0].text for e, a in zip(sample, answers)})
    return {"em": scores["exact_match"], "f1": scores["f1"], "windows": windows / len(sample),
            "ms": 1000 * seconds / len(sample)}


def count_windows(qa, pairs: list[tuple[str, str]], passages: int | None) -> int:
    """Windows the model reads for these pairs (the same reads answer_pairs makes)."""
    return len(qa.features([e for q, c in pairs
                            for e in read_examples(q, c, context_reads(q, c, qa.tokenizer, passages))]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the released model)")
    p.add_argument("--limit", type=int, default=300, help="dev questions sampled evenly (default 300)")
    p.add_argument("--budgets", default="accurate,balanced", help="budgets, comma-separated")
    p.add_argument("--passages", default="1,3,5", help="passages read per question, comma-separated")
    p.add_argument("--json", type=Path, default=Path("runs/longdoc.json"), help="where to write the rows")
    args = p.parse_args(argv)
    try:
        if args.limit < 1:
            raise QualaError(f"--limit must be >= 1, got {args.limit}")
        passages = [int(x) for x in args.passages.split(",") if x.strip()]
        qa = quala.load(args.model)
        dev = load_squad(squad_path("dev"))
        step = max(1, len(dev) // args.limit)
        sample = dev[::step][: args.limit]
        whole = articles(dev)
        rows = []
        for budget in [b.strip() for b in args.budgets.split(",") if b.strip()]:
            qa.resolve(budget)  # a bad budget fails before any work
            settings = [("paragraph", None, [e.context for e in sample]),
                        ("article, every window", None, [whole[e.title] for e in sample])]
            settings += [(f"article, best {n} BM25 passage{'s' if n > 1 else ''}", n, [whole[e.title] for e in sample])
                         for n in passages]
            for name, n, contexts in settings:
                row = dict(budget=budget, contexts=name, **run_row(qa, sample, contexts, budget, n))
                rows.append(row)
                print(f"{budget:9s} {name:34s} F1 {row['f1']:6.2f}  {row['windows']:5.1f} windows  "
                      f"{row['ms']:7.1f} ms/question", file=sys.stderr, flush=True)
    except QualaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokens = np.mean([len(qa.tokenizer.base.encode(t, add_special_tokens=False)) for t in whole.values()])
    print(f"CPU: {cpu_description()}")
    print(f"{len(sample)} dev questions (every {step}th), {len(whole)} articles of {tokens:,.0f} tokens on average; "
          f"model {qa.model_dir}, {type(qa.predictor).__name__}\n")
    print("| budget | contexts | EM | F1 | F1 vs paragraph | windows/question | ms/question | time vs paragraph |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {r["budget"]: r for r in rows if r["contexts"] == "paragraph"}
    for r in rows:
        b = base[r["budget"]]
        print(f"| {r['budget']} | {r['contexts']} | {r['em']:.2f} | {r['f1']:.2f} | {r['f1'] - b['f1']:+.2f} | "
              f"{r['windows']:.1f} | {r['ms']:.1f} | {r['ms'] / b['ms']:.2f}x |")
    write_json_atomic(args.json, {"cpu": cpu_description(), "questions": len(sample), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
