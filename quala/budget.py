"""The front file (length_configs.json in a model directory) and compute budgets.

`quala search` writes the front; evaluation, the runtime and the server only read it and pick a configuration for a
budget, so inference never imports the search. A budget is a latency ('20ms', '0.02s'), a cost ('2.5GMACs'),
a speedup in MACs over the model's full length ('3x'), a named point ('fastest', 'balanced', 'accurate') or a
point's name ('p3'). The most accurate point that fits is chosen (F1 on held-out training articles: the
confirmation sample's where the search scored one, else the search's; the dev set is only reported), ties going to
the cheaper one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from quala.config import LengthConfig, ModelConfig, QualaError
from quala.files import read_json, write_json_atomic

FRONT_FILE = "length_configs.json"
NAMED = ("fastest", "balanced", "accurate")
FULL = "full"  # a budget that names full length (what answers report as their configuration when nothing drops)
BALANCED_F1_LOSS = 1.0  # 'balanced': the cheapest point within this many F1 points of the most accurate one
EPS = 1e-9


@dataclass
class FrontPoint:
    name: str
    length_config: LengthConfig | None  # None: the full length
    gmacs: float  # per dev feature, mean over the features scored
    speedup_gmacs: float  # full-length GMACs / gmacs
    search_f1: float  # F1 on the search split (held-out training articles)
    search_gmacs: float | None = None  # per search-split feature
    dev_em: float | None = None
    dev_f1: float | None = None
    latency_ms: float | None = None  # per feature, batch 1
    runtime: str | None = None  # the predictor that scored and timed it
    confirm_f1: float | None = None  # F1 on a larger held-out sample, disjoint from the search's

    @property
    def selection_f1(self) -> float:
        """What budgets and names choose by: a few hundred search questions rank close points noisily, so the
        confirmation sample's F1 wins where there is one."""
        return self.search_f1 if self.confirm_f1 is None else self.confirm_f1

    def to_json(self) -> dict:
        return {"name": self.name, "length_config": self.length_config.to_json() if self.length_config else None,
                "gmacs": self.gmacs, "speedup_gmacs": self.speedup_gmacs, "search_f1": self.search_f1,
                "search_gmacs": self.search_gmacs, "dev_em": self.dev_em, "dev_f1": self.dev_f1,
                "latency_ms": self.latency_ms, "runtime": self.runtime, "confirm_f1": self.confirm_f1}

    @classmethod
    def from_json(cls, obj: object, where: str) -> FrontPoint:
        if not isinstance(obj, dict):
            raise QualaError(f"{where}: expected an object, got {obj!r}")
        try:
            lc = LengthConfig.from_json(obj["length_config"]) if obj.get("length_config") else None
            return cls(str(obj["name"]), lc, float(obj["gmacs"]), float(obj["speedup_gmacs"]),
                       float(obj["search_f1"]), *(optional_float(obj.get(k)) for k in
                                                  ("search_gmacs", "dev_em", "dev_f1", "latency_ms")),
                       obj.get("runtime"), optional_float(obj.get("confirm_f1")))
        except KeyError as e:
            raise QualaError(f"{where}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise QualaError(f"{where}: bad value ({e})") from None

    def describe(self) -> str:
        latency = f", {self.latency_ms:.1f} ms ({self.runtime})" if self.latency_ms is not None else ""
        return (f"{self.name} [{self.length_config or 'full'}]: {self.gmacs:.3f} GMACs, {self.speedup_gmacs:.2f}x"
                f"{latency}, search F1 {self.search_f1:.2f}"
                + (f", confirmed F1 {self.confirm_f1:.2f}" if self.confirm_f1 is not None else ""))


def optional_float(v: object) -> float | None:
    return None if v is None else float(v)


@dataclass
class Front:
    configs: list[FrontPoint]  # by increasing cost
    full: FrontPoint | None = None
    named: dict[str, str] = field(default_factory=dict)  # 'fastest'/'balanced'/'accurate' -> a point's name
    evaluated: list[dict] = field(default_factory=list)  # every configuration the search scored, for the plot
    info: dict = field(default_factory=dict)  # how the front was made (model, data, search settings)

    def point(self, name: str) -> FrontPoint | None:
        return next((p for p in self.configs if p.name == name), None)

    def to_json(self) -> dict:
        return {"configs": [p.to_json() for p in self.configs], "full": self.full.to_json() if self.full else None,
                "named": self.named, "info": self.info, "evaluated": self.evaluated}


def front_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / FRONT_FILE


def write_front(path: str | os.PathLike, front: Front) -> None:
    write_json_atomic(path, front.to_json())


def read_front(path: str | os.PathLike) -> Front:
    """A front file, or a model directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / FRONT_FILE
        if not path.is_file():
            raise QualaError(f"{path}: no such file: run `quala search --model {path.parent}` first")
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("configs"), list) or not obj["configs"]:
        raise QualaError(f"{path}: not a front file (expected an object with a non-empty 'configs' list)")
    configs = [FrontPoint.from_json(c, f"{path}: configs[{i}]") for i, c in enumerate(obj["configs"])]
    full = FrontPoint.from_json(obj["full"], f"{path}: full") if obj.get("full") else None
    named = obj.get("named") or name_points(configs)
    for label, name in named.items():
        if not any(p.name == name for p in configs):
            raise QualaError(f"{path}: named[{label!r}] = {name!r} is not a point of 'configs'")
    return Front(sorted(configs, key=lambda p: p.gmacs), full, named, obj.get("evaluated") or [],
                 obj.get("info") or {})


def name_points(configs: list[FrontPoint]) -> dict[str, str]:
    """fastest: the cheapest; accurate: the best F1; balanced: the cheapest within 1 F1 of the best (F1: each
    point's selection_f1)."""
    best = max(configs, key=lambda p: (p.selection_f1, -p.gmacs))
    balanced = min((p for p in configs if p.selection_f1 >= best.selection_f1 - BALANCED_F1_LOSS),
                   key=lambda p: p.gmacs)
    return {"fastest": min(configs, key=lambda p: p.gmacs).name, "balanced": balanced.name, "accurate": best.name}


@dataclass(frozen=True)
class Budget:
    kind: str  # 'latency_ms', 'gmacs', 'speedup' or 'name'
    value: float | str
    text: str


BUDGET_FORMS = ("a latency ('20ms', '0.05s'), a cost ('2.5GMACs'), a speedup over the full length ('3x') "
                "or a named point (fastest, balanced, accurate, full)")
UNITS = {"ms": ("latency_ms", 1.0), "s": ("latency_ms", 1000.0), "gmacs": ("gmacs", 1.0), "gmac": ("gmacs", 1.0),
         "x": ("speedup", 1.0)}
MAX_BUDGET_CHARS = 64  # budgets come from HTTP requests too: refuse long ones before reading them


def parse_budget(text: str) -> Budget:
    """A budget string -> Budget. One left-to-right pass over at most MAX_BUDGET_CHARS characters (no regular
    expression, so no input can make it slow)."""
    if not isinstance(text, str):
        raise QualaError(f"budget must be a string, got {type(text).__name__}")
    if len(text) > MAX_BUDGET_CHARS:
        raise QualaError(f"budget is {len(text)} characters long; the limit is {MAX_BUDGET_CHARS}: give {BUDGET_FORMS}")
    t = text.strip()
    if not t:
        raise QualaError(f"budget is empty: give {BUDGET_FORMS}")
    if t.lower() in NAMED + (FULL,) or is_point_name(t):
        return Budget("name", t.lower(), text)
    number, rest = split_number(t)
    unit = rest.lstrip()
    if not number or not (unit.isascii() and (unit.isalpha() or not unit)):
        raise QualaError(f"cannot read budget {text!r}: give {BUDGET_FORMS}")
    if unit.lower() not in UNITS:
        what = f"unknown unit {unit!r}" if unit else "no unit"
        raise QualaError(f"budget {text!r}: {what}; give {BUDGET_FORMS}")
    value = float(number)
    if not value > 0:
        raise QualaError(f"budget {text!r}: must be positive")
    if value == float("inf"):
        raise QualaError(f"budget {text!r}: too large")
    kind, scale = UNITS[unit.lower()]
    return Budget(kind, value * scale, text)


def is_point_name(t: str) -> bool:
    """'p0', 'p12': the names the search gives front points."""
    return len(t) > 1 and t[0] == "p" and t[1:].isascii() and t[1:].isdigit()


def split_number(t: str) -> tuple[str, str]:
    """'-2.5e3 ms' -> ('-2.5e3', ' ms'): a signed decimal with an optional exponent, then the rest; ('', t) when t
    does not start with one."""
    i = 1 if t[:1] in "+-" else 0
    digits = 0
    while i < len(t) and t[i].isascii() and t[i].isdigit():
        i, digits = i + 1, digits + 1
    if i < len(t) and t[i] == ".":
        i += 1
        while i < len(t) and t[i].isascii() and t[i].isdigit():
            i, digits = i + 1, digits + 1
    if not digits:
        return "", t
    if i < len(t) and t[i] in "eE":  # an exponent only when digits follow; otherwise 'e' starts the unit
        j = i + 2 if t[i + 1:i + 2] in ("+", "-") else i + 1
        k = j
        while k < len(t) and t[k].isascii() and t[k].isdigit():
            k += 1
        if k > j:
            i = k
    return t[:i], t[i:]


def fits(p: FrontPoint, budget: Budget) -> bool:
    if budget.kind == "latency_ms":
        return p.latency_ms is not None and p.latency_ms <= budget.value * (1 + EPS)
    if budget.kind == "gmacs":
        return p.gmacs <= budget.value * (1 + EPS)
    return p.speedup_gmacs >= budget.value * (1 - EPS)


def select(front: Front, budget: str | Budget, source: str = FRONT_FILE) -> FrontPoint:
    """The most accurate point of the front that fits the budget (ties: the cheaper)."""
    b = budget if isinstance(budget, Budget) else parse_budget(budget)
    if b.kind == "name" and b.value == FULL:
        if front.full is None:
            raise QualaError(f"budget 'full': {source} has no full-length point; give no budget to run at full length")
        return front.full
    if b.kind == "name":
        name = front.named.get(b.value, b.value)
        p = front.point(name)
        if p is None:
            raise QualaError(f"budget {b.text!r}: {source} has no point named {name!r} "
                             f"(points: {', '.join(q.name for q in front.configs)})")
        return p
    if b.kind == "latency_ms" and all(p.latency_ms is None for p in front.configs):
        raise QualaError(f"budget {b.text!r}: {source} has no latency measurements; run `quala search --latency` "
                         f"or give a cost ('2.5GMACs') or a speedup ('3x')")
    candidates = [p for p in front.configs if fits(p, b)]
    if not candidates:
        timed = [p for p in front.configs if p.latency_ms is not None] if b.kind == "latency_ms" else front.configs
        cheapest = min(timed, key=lambda p: p.latency_ms if b.kind == "latency_ms" else p.gmacs)
        raise QualaError(f"budget {b.text!r}: no configuration in {source} fits; the cheapest is "
                         f"{cheapest.describe()}")
    return max(candidates, key=lambda p: (p.selection_f1, -p.gmacs))


def choose_length_config(model_dir: str | os.PathLike, budget: str) -> tuple[LengthConfig | None, FrontPoint]:
    """The length configuration for a budget from MODEL_DIR/length_configs.json, and the point chosen."""
    path = front_path(model_dir)
    p = select(read_front(model_dir), budget, str(path))
    return p.length_config, p


def configs_to_score(model_dir: str | os.PathLike, text: str | None, model_config: ModelConfig
                     ) -> list[LengthConfig | None]:
    """`text`'s ';'-separated length configurations ('full': None), or without text full length and the front's
    `balanced` and `fastest` points; each checked against the model (what the benchmarks score)."""
    if text:
        configs = [LengthConfig.parse(c.strip()) for c in text.split(";") if c.strip()]
    else:
        configs = [None] + [choose_length_config(model_dir, name)[0] for name in ("balanced", "fastest")]
    for lc in configs:
        if lc is not None:
            lc.check(model_config.num_hidden_layers, model_config.max_seq_length)
    return configs
