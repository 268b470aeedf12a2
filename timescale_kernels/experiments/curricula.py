"""Curricula: which N's are trained at once, which readout head serves each, and when to move on.

As in the study's training code:
    single:  one N at a time, always read by head 0; N -> N + 1 when it passes.
    multi:   all N's from n_start up to the current one (the study's "cumulative"); head N - n_start.
    sliding: the last `window` N's; when they pass, the oldest `forget` leave and `forget` new ones
             enter. Heads are positions in the window (head 0 reads the oldest active N), so a head
             is retrained for a new N after each slide, as in the study.
    none:    one fixed N (n_start), head 0; finished once it passes.
Promotion: the mean accuracy over active heads and the newest N's accuracy both above threshold.
"""
from __future__ import annotations

from .config import CURRICULA, ConfigError


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
        width = self.window if kind == "sliding" else 1
        self.Ns = list(range(self.n_start, self.n_start + width))
        self.promotions = 0
        self.finished = False

    @classmethod
    def from_config(cls, config) -> "Curriculum":
        return cls(config.curriculum, config.n_start, config.window, config.forget, config.threshold)

    @property
    def heads(self) -> list[int]:
        """Head index for each active N, in the order of Ns."""
        if self.kind == "multi":
            return [n - self.n_start for n in self.Ns]
        return list(range(len(self.Ns)))  # single/none: [0]; sliding: positions

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
        top = self.Ns[-1]
        if self.kind == "single":
            self.Ns = [top + 1]
        elif self.kind == "multi":
            self.Ns = self.Ns + [top + 1]
        elif self.kind == "sliding":
            self.Ns = self.Ns[self.forget:] + list(range(top + 1, top + 1 + self.forget))
        else:
            self.finished = True

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
