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
    rows = ["| point | length config | GMACs | speedup (GMACs) | latency (ms) | search F1 | dev F1 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    points: list[FrontPoint] = front.configs + ([front.full] if front.full else [])
    for p in points:
        label = p.name + (f" ({names[p.name]})" if p.name in names else "")
        rows.append(f"| {label} | {p.length_config or 'full'} | {p.gmacs:.3f} | {p.speedup_gmacs:.2f}x | "
                    f"{fmt(p.latency_ms, '.2f')} | {p.search_f1:.2f} | {fmt(p.dev_f1, '.2f')} |")
    runtime = front.full.runtime if front.full else None
    if runtime:
        rows.append(f"\nGMACs per dev feature (mean); latency per feature at batch 1 on {runtime}; search F1 on "
                    f"held-out training articles, dev F1 on the official dev set.")
    return "\n".join(rows)


def plot_front(front: Front, path: str | os.PathLike) -> None:
    """PNG: every scored configuration (grey) and the front (search and dev F1) against GMACs; the front's dev F1
    against latency when it was measured."""
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
    if all(p.dev_f1 is not None for p in front.configs):
        ax.plot([p.gmacs for p in front.configs], [p.dev_f1 for p in front.configs], "s--", color="tab:orange",
                label="front (dev F1)")
    if front.full and front.full.dev_f1 is not None:
        ax.plot([front.full.gmacs], [front.full.dev_f1], "*", color="tab:red", markersize=12, label="full (dev F1)")
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
