"""The front as a markdown table and a plot (F1 against GMACs and against latency, the front highlighted)."""
from __future__ import annotations

import os

from quala.budget import Front, FrontPoint

PLOT_FILE = "length_configs.png"  # beside length_configs.json in the model directory


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(front: Front) -> str:
    names: dict[str, str] = {}
    for label, name in front.named.items():
        names[name] = f"{names[name]}, {label}" if name in names else label
    rows = ["| point | length config | GMACs | speedup (GMACs) | latency (ms) | search F1 | confirmed F1 | dev F1 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    points: list[FrontPoint] = front.configs + ([front.full] if front.full else [])
    for p in points:
        label = p.name + (f" ({names[p.name]})" if p.name in names else "")
        rows.append(f"| {label} | {p.length_config or 'full'} | {p.gmacs:.3f} | {p.speedup_gmacs:.2f}x | "
                    f"{fmt(p.latency_ms, '.2f')} | {p.search_f1:.2f} | {fmt(p.confirm_f1, '.2f')} | "
                    f"{fmt(p.dev_f1, '.2f')} |")
    runtime = front.full.runtime if front.full else None
    if runtime:
        rows.append(f"\nGMACs per dev feature (mean); latency per feature at batch 1 on {runtime}; search and "
                    f"confirmed F1 on held-out training articles (disjoint samples; names and budgets go by the "
                    f"confirmed F1 where there is one), dev F1 on the official dev set.")
    return "\n".join(rows)


COMPARE_FACTORS = (1.25, 1.5, 2.0, 3.0, 4.0)  # fewer MACs than full length


def best_beyond(front: Front, factor: float, score: str) -> FrontPoint | None:
    """The point with the best `score` ("dev_f1" or "confirm_f1") among those with at least `factor` fewer MACs."""
    points = [p for p in front.configs if p.speedup_gmacs >= factor * (1 - 1e-9) and getattr(p, score) is not None]
    return max(points, key=lambda p: getattr(p, score), default=None)


def compare_markdown(fronts: dict[str, Front]) -> str:
    """For each saving in MACs, each front's best point at or beyond it: confirmed F1 (held-out training
    questions: what decides between models) and dev F1 (reporting), with its length configuration."""
    names = list(fronts)
    rows = ["| fewer MACs | " + " | ".join(f"{n}: confirmed F1 | {n}: dev F1 | {n}: config" for n in names) + " |",
            "| ---: | " + " | ".join("---: | ---: | ---" for _ in names) + " |"]
    for factor in COMPARE_FACTORS:
        cells = []
        for front in fronts.values():
            c, d = best_beyond(front, factor, "confirm_f1"), best_beyond(front, factor, "dev_f1")
            cells.append(f"{fmt(c and c.confirm_f1, '.2f')} | {fmt(d and d.dev_f1, '.2f')} | "
                         f"{(d or c).length_config if (d or c) else '-'}")
        rows.append(f"| {factor:g}x | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_front(front: Front, path: str | os.PathLike, compare: dict[str, Front] | None = None) -> None:
    """PNG: every scored configuration (grey) and the front (search, confirmed and dev F1) against GMACs; the
    front's dev F1 against latency when it was measured; other models' fronts (`compare`, by label) in the same
    axes, by dev F1 where they have it, else confirmed F1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = sorted((p for p in front.configs if p.latency_ms is not None), key=lambda p: p.latency_ms)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    if front.evaluated:
        ax.scatter([e["search_gmacs"] for e in front.evaluated], [e["search_f1"] for e in front.evaluated],
                   s=8, color="0.75", label="searched (search F1)")
    ax.plot([p.search_gmacs or p.gmacs for p in front.configs], [p.search_f1 for p in front.configs], "o-",
            color="tab:blue", label="front (search F1)")
    if all(p.confirm_f1 is not None for p in front.configs):
        ax.plot([p.search_gmacs or p.gmacs for p in front.configs], [p.confirm_f1 for p in front.configs], "^:",
                color="tab:green", label="front (confirmed F1)")
    if all(p.dev_f1 is not None for p in front.configs):
        ax.plot([p.gmacs for p in front.configs], [p.dev_f1 for p in front.configs], "s--", color="tab:orange",
                label="front (dev F1)")
    if front.full and front.full.dev_f1 is not None:
        ax.plot([front.full.gmacs], [front.full.dev_f1], "*", color="tab:red", markersize=12, label="full (dev F1)")
    for (label, other), style in zip((compare or {}).items(), ("x-.", "d:", "v-.")):
        score = "dev_f1" if all(p.dev_f1 is not None for p in other.configs) else "confirm_f1"
        ax.plot([p.gmacs for p in other.configs], [getattr(p, score) for p in other.configs], style,
                color="tab:purple", markersize=4, label=f"{label} ({score.replace('_f1', '').replace('confirm', 'confirmed')} F1)")
    ax.set(xlabel="GMACs per feature", ylabel="F1", title="F1 against compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if timed:
        ax = axes[0][1]
        ax.plot([p.latency_ms for p in timed], [p.search_f1 for p in timed], "o-", color="tab:blue",
                label="front (search F1)")
        if all(p.dev_f1 is not None for p in timed):
            ax.plot([p.latency_ms for p in timed], [p.dev_f1 for p in timed], "s--", color="tab:orange",
                    label="front (dev F1)")
        if front.full and front.full.latency_ms is not None and front.full.dev_f1 is not None:
            ax.plot([front.full.latency_ms], [front.full.dev_f1], "*", color="tab:red", markersize=12,
                    label="full (dev F1)")
        ax.set(xlabel=f"latency per feature, batch 1 (ms, {timed[0].runtime})", ylabel="F1",
               title="F1 against latency")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from quala.files import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


# ---- the trade-off benchmark (benchmarks/tradeoff.py writes the JSON; `quala report --tradeoff FILE` redraws) ----
METHODS = {"front": "searched front", "uniform": "uniform ratio r at every layer",
           "window": "shorter windows (no dropping)", "position": "first k tokens (position pruning)",
           "stage1": "stage-1 model at the front's configs"}
STYLES = {"front": "o-", "uniform": "s--", "window": "^-.", "position": "v:", "stage1": "D--"}


def read_tradeoff(path: str | os.PathLike) -> dict:
    """A trade-off results file (benchmarks/tradeoff.py --json), checked enough to draw."""
    from quala.config import QualaError
    from quala.files import read_json
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("rows"), list) or not obj["rows"]:
        raise QualaError(f"{path}: not a trade-off file (expected an object with a non-empty 'rows' list)")
    for i, row in enumerate(obj["rows"]):
        missing = [k for k in ("method", "config", "gmacs", "f1", "em") if not isinstance(row, dict) or k not in row]
        if missing:
            raise QualaError(f"{path}: rows[{i}] lacks {', '.join(missing)}")
    return obj


def best_under(rows: list[dict], gmacs: float) -> dict[str, dict | None]:
    """For each method, its row with the best F1 among those costing at most `gmacs` (ties: the cheaper);
    None when none fits."""
    best: dict[str, dict | None] = {}
    for row in rows:
        best.setdefault(row["method"], None)
        if row["gmacs"] <= gmacs * (1 + 1e-9):
            b = best[row["method"]]
            if b is None or (row["f1"], -row["gmacs"]) > (b["f1"], -b["gmacs"]):
                best[row["method"]] = row
    return best


def tradeoff_markdown(obj: dict) -> str:
    """The table of every row and, for each budget of the front, the best F1 of each method at that cost."""
    rows = ["| method | configuration | GMACs | speedup | latency (ms) | EM | F1 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in obj["rows"]:
        rows.append(f"| {r['method']} | {r['config']} | {r['gmacs']:.3f} | {fmt(r.get('speedup'), '.2f')}x | "
                    f"{fmt(r.get('latency_ms'), '.2f')} | {r['em']:.2f} | {r['f1']:.2f} |")
    for label, gmacs in (obj.get("budgets") or {}).items():
        best = best_under(obj["rows"], gmacs)
        parts = [f"{m} {b['f1']:.2f} ({b['config']})" if b else f"{m} -" for m, b in best.items()]
        rows.append(f"\nbudget {label} ({gmacs:.3f} GMACs): best F1 at equal or lower cost: " + "; ".join(parts))
    info = obj.get("info") or {}
    if info:
        rows.append(f"\n{info.get('questions', '?')} dev questions ({info.get('features', '?')} features), runtime "
                    f"{info.get('runtime', '?')}; GMACs per dev feature of the model's own windows; latency per such "
                    f"feature at batch 1, median over {info.get('repeats', '?')} repeats.")
    rows += [f"skipped: {s}" for s in obj.get("skipped") or []]
    return "\n".join(rows)


def plot_tradeoff(obj: dict, path: str | os.PathLike) -> None:
    """PNG: F1 against GMACs and, when timed, against latency, one curve per method (points joined in order of
    GMACs), the front's budgets as vertical lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(r["method"] for r in obj["rows"]))
    timed = all(r.get("latency_ms") is not None for r in obj["rows"])
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(13 if timed else 6.5, 4.8), squeeze=False)
    for ax, x, label in zip(axes[0], ("gmacs", "latency_ms"), ("GMACs per feature", "latency per feature, "
                                                                 "batch 1 (ms)")):
        for m in methods:
            pts = [(r[x], r["f1"]) for r in sorted(obj["rows"], key=lambda r: r["gmacs"]) if r["method"] == m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLES.get(m, "o-"), label=METHODS.get(m, m),
                    markersize=4)
        if x == "gmacs":
            at: dict[float, list[str]] = {}
            for name, g in (obj.get("budgets") or {}).items():
                at.setdefault(g, []).append(name)
            for g, names in at.items():
                ax.axvline(g, color="0.6", linewidth=0.8, linestyle=":")
                ax.annotate(", ".join(names), (g, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom", ha="right")
        ax.set(xlabel=label, ylabel="dev F1", title=f"F1 against {'compute' if x == 'gmacs' else 'latency'}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from quala.files import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
