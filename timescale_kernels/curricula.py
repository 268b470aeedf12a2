"""Curricula, one table of them: which N's are trained at once, which readout head serves each, and
when to move on.

As in the study's training code:
    single:  one N at a time, always read by head 0; N -> N + 1 when it passes.
    multi:   all N's from n_start up to the current one (the study's "cumulative"); head N - n_start.
    sliding: the last `window` N's; when they pass, the oldest `forget` leave and `forget` new ones
             enter. Heads are positions in the window (head 0 reads the oldest active N), so a head
             is retrained for a new N after each slide, as in the study.
    none:    one fixed N (n_start), head 0; finished once it passes.
Promotion: the mean accuracy over active heads and the newest N's accuracy both above threshold.

The trainer, the config's validation, the command line's choices, the analyses and the report all read
REGISTRY, so a new curriculum is one more entry here (and its tests).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting out of range or unknown; the message names the setting."""


@dataclass(frozen=True)
class CurriculumKind:
    """One curriculum. Every field is required.

    Attributes:
        name: what the command line and config.json call it.
        description: one line for --help.
        label: how reports name it ("multi-head").
        aliases: other names for it, e.g. the study's ("cumulative"), recognised when reading runs.
        first: (n_start, window) -> the first active Ns, ascending.
        advance: (Ns, forget) -> the Ns after a pass, or None when nothing is left to learn.
        heads: (Ns, n_start) -> the head index of each active N, in the order of Ns.
    """
    name: str
    description: str
    label: str
    aliases: tuple
    first: Callable[[int, int], list]
    advance: Callable[[list, int], list | None]
    heads: Callable[[list, int], list]


def _positions(Ns, n_start):
    return list(range(len(Ns)))


REGISTRY: dict[str, CurriculumKind] = {kind.name: kind for kind in (
    CurriculumKind("single", "one N at a time, read by head 0", "single-head", ("single-head",),
                   first=lambda n, window: [n], advance=lambda Ns, forget: [Ns[-1] + 1], heads=_positions),
    CurriculumKind("multi", "all N's so far, one head each (the study's cumulative)", "multi-head",
                   ("multi-head", "cumulative"), first=lambda n, window: [n],
                   advance=lambda Ns, forget: Ns + [Ns[-1] + 1], heads=lambda Ns, n: [m - n for m in Ns]),
    CurriculumKind("sliding", "the last --window N's; --forget of them leave per pass", "sliding window",
                   ("sliding-window",), first=lambda n, window: list(range(n, n + window)),
                   advance=lambda Ns, forget: Ns[forget:] + list(range(Ns[-1] + 1, Ns[-1] + 1 + forget)),
                   heads=_positions),
    CurriculumKind("none", "--n-start only, head 0", "fixed N", ("fixed",),
                   first=lambda n, window: [n], advance=lambda Ns, forget: None, heads=_positions),
)}
CURRICULA = tuple(REGISTRY)  # the names, in the table's order


def get_curriculum(name) -> CurriculumKind:
    """The CurriculumKind named name or one of its aliases (any case), or a ConfigError naming the known."""
    if isinstance(name, CurriculumKind):
        return name
    key = str(name).lower()
    for kind in REGISTRY.values():
        if key == kind.name or key in kind.aliases:
            return kind
    raise ConfigError(f"curriculum: expected one of {', '.join(map(repr, CURRICULA))}; got {name!r}")


def curriculum_of(ranges) -> str | None:
    """The first curriculum (in REGISTRY's order) whose run passes through every (lowest N, highest N)
    of ranges (e.g. the checkpoints of a folder of the study's files), or None; sliding is tried with
    the widest range as its window and every forget."""
    ranges = {(int(lo), int(hi)) for lo, hi in ranges}
    if not ranges:
        return None
    start, top = min(lo for lo, _ in ranges), max(hi for _, hi in ranges)
    window = max(hi - lo + 1 for lo, hi in ranges)
    for name in CURRICULA:
        for forget in range(1, window + 1):
            cur = Curriculum(name, start, window, forget)
            seen = set()
            while not cur.finished and cur.Ns[-1] <= top:
                seen.add((cur.Ns[0], cur.Ns[-1]))
                cur.advance()
            if ranges <= seen:
                return name
    return None


class Curriculum:
    """State: the active Ns (ascending) and how many promotions happened.

    Attributes:
        kind: one of CURRICULA.
        Ns: active N's, ascending, e.g. [2, 3, 4].
        heads: head index per active N, same order as Ns.
        finished: True once a "none" curriculum has passed (nothing left to learn).
    """

    def __init__(self, kind: str, n_start: int = 2, window: int = 5, forget: int = 1, threshold: float = 0.98):
        if kind not in CURRICULA:
            raise ConfigError(f"curriculum: expected one of {', '.join(map(repr, CURRICULA))}; got {kind!r}")
        if n_start < 1:
            raise ConfigError(f"n_start: expected N >= 1; got {n_start}")
        if kind == "sliding" and not 1 <= forget <= window:
            raise ConfigError(f"forget: expected 1 <= forget <= window = {window}; got {forget}")
        self.kind, self.n_start, self.window, self.forget = kind, int(n_start), int(window), int(forget)
        self.threshold = float(threshold)
        self.Ns = list(REGISTRY[kind].first(self.n_start, self.window))
        self.promotions = 0
        self.finished = False

    @classmethod
    def from_config(cls, config) -> "Curriculum":
        return cls(config.curriculum, config.n_start, config.window, config.forget, config.threshold)

    @property
    def heads(self) -> list[int]:
        """Head index for each active N, in the order of Ns."""
        return list(REGISTRY[self.kind].heads(self.Ns, self.n_start))

    @property
    def head_for_N(self) -> dict[int, int]:
        return dict(zip(self.Ns, self.heads))

    @property
    def num_heads(self) -> int:
        """Heads the model needs for the current Ns."""
        return max(self.heads) + 1

    def passed(self, accuracies) -> bool:
        """accuracies: one fraction per active N (same order as Ns). True when both the mean and the
        newest N's accuracy exceed the threshold."""
        accuracies = [float(a) for a in accuracies]
        if len(accuracies) != len(self.Ns):
            raise ValueError(f"accuracies: expected {len(self.Ns)} values (one per active N); got {len(accuracies)}")
        mean = sum(accuracies) / len(accuracies)
        return mean > self.threshold and accuracies[-1] > self.threshold

    def advance(self) -> None:
        """Moves to the next set of Ns (call after a pass)."""
        self.promotions += 1
        following = REGISTRY[self.kind].advance(list(self.Ns), self.forget)
        if following is None:
            self.finished = True
        else:
            self.Ns = list(following)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "n_start": self.n_start, "window": self.window, "forget": self.forget,
                "threshold": self.threshold, "Ns": list(self.Ns), "promotions": self.promotions,
                "finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        for key in ("kind", "n_start", "window", "forget"):
            if state[key] != getattr(self, key):
                raise ConfigError(f"curriculum: saved {key} = {state[key]!r} differs from {getattr(self, key)!r}")
        self.threshold = float(state["threshold"])
        self.Ns = [int(n) for n in state["Ns"]]
        self.promotions = int(state["promotions"])
        self.finished = bool(state["finished"])

    def describe(self) -> str:
        """'N=2..6' or 'N=7'."""
        return f"N={self.Ns[0]}" if len(self.Ns) == 1 else f"N={self.Ns[0]}..{self.Ns[-1]}"

    def __repr__(self) -> str:
        return f"Curriculum({self.kind!r}, Ns={self.Ns}, heads={self.heads})"
