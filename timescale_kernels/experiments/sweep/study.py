"""The study's results T1-T11 (Khajehabdollahi, Zeraati et al., ICLR 2024; 500 neurons, 4 networks per
condition, N-parity unless stated) beside a sweep's, as Markdown table rows.

Each of our figures says which estimator or definition it uses: tau_net by our fit (grid-started) or
the study's (curve_fit from the middle of the bounds) where analysis.json holds it; relative accuracy
ours (acc / baseline) or the study's (chance-corrected, (acc - 0.5) / (baseline - 0.5)) where present.
A condition the sweep did not run reads "not in this sweep".
"""
from __future__ import annotations

from collections import defaultdict

from .results import fmt

STUDY = {
    "T1": ("max N, multi-head, trained tau", "100, 101, 100, 101 (the 100-head cap)"),
    "T2": ("max N, single-head, trained tau", "37, 33, 35, 35; DMS: single >= 93, multi >= 99"),
    "T3": ("fixed tau", "single tau=1: 24-26, tau=2: 25-26, tau=3: 24-25; multi tau=1: 101, tau=2: 87-88, "
                        "tau=3: 66-72"),
    "T4": ("trained tau vs N", "single: mean 1.44 -> 1.69 and std 0.3 -> 1.1 from N = 15 to 32; multi: mean "
                               "1.5 -> 1.2 by N = 100, std about 0.3"),
    "T5": ("tau_net vs N (mean over neurons with tau_net > 1)", "single 2.5 (N = 5) -> 7.1 (N = 30); multi 2.5 -> "
                                                                 "about 6.6 at N = 30"),
    "T6": ("forgetting", "single-head at N is at chance on smaller N; multi-head keeps every head >= 98%"),
    "T7": ("training speed", "multi about one N per epoch at small N (N = 11 at epoch 11); single N = 20 at epoch "
                             "99, N = 28 at epoch 242"),
    "T8": ("ablation at N = 30 (20 shortest vs 20 longest tau, one at a time)",
           "single: short 0.93, long 0.71; multi: short 0.89, long 0.99"),
    "T9": ("perturbation at N = 30, relative accuracy multi vs single",
           "W at eps 0.215: 0.96 vs 0.74; tau at eps 0.046: 0.99 vs 0.71"),
    "T10": ("retraining single-head on new N for 20 epochs", "multi-head-pretrained networks reach higher accuracy"),
    "T11": ("GRU and LSTM", "multi-head reaches substantially larger N than single-head"),
}
NOT_RUN = "not in this sweep"


class _View:
    """The sweep's runs and rows, indexed by condition name."""

    def __init__(self, runs: dict, rows: list[dict]):
        self.done = defaultdict(list)
        for r in runs.values():
            if r["status"] == "done":
                self.done[r["condition"]].append(r)
        self.rows = defaultdict(list)
        for row in rows:
            self.rows[row["condition"]].append(row)

    def reached(self, cond):
        return [r.get("N_reached") or 0 for r in self.done.get(cond, [])] or None

    def at(self, cond, N, key):
        return [r[key] for r in self.rows.get(cond, []) if r["N"] == N and r.get(key) is not None]

    def common_Ns(self, cond, key):
        """N's at which every finished seed of cond has a value of key."""
        seeds = [r["seed"] for r in self.done.get(cond, [])]
        sets = [{row["N"] for row in self.rows.get(cond, []) if row["seed"] == s and row.get(key) is not None}
                for s in seeds]
        return sorted(set.intersection(*sets)) if sets else []

    def has(self, key) -> bool:
        return any(row.get(key) is not None for rows in self.rows.values() for row in rows)

    def variants(self, key, ours, study):
        """[(column, label)]: ours, and the study's where any run's analysis holds it."""
        return [(key, ours)] + ([(key + "_study", study)] if self.has(key + "_study") else [])

    def missing(self, key, what) -> str:
        return "" if self.has(key + "_study") else f" (the study's {what}: not in these runs' analysis.json)"

    def capped(self, cond) -> bool:
        return any(r.get("stop_reason") == "max_epochs" for r in self.done.get(cond, []))


def _leaky(task, cur, tau="trained"):
    return f"{task}-{cur}-leaky-" + ("tau_trained" if tau == "trained" else f"tau{tau}")


def _reach(v, cond, label):
    vals = v.reached(cond)
    if vals is None:
        return f"{label}: {NOT_RUN}"
    cap = " (epoch budget reached)" if v.capped(cond) else ""
    none = " (0: no N passed)" if 0 in vals else ""
    return f"{label}: {', '.join(map(str, vals))}; {fmt(vals, 1)}{cap}{none}"


def _span(v, cond, key, lo, hi, label, what):
    """'label: what at N = a: x -> N = b: y' at the study's N's lo, hi, or the nearest common N's we have."""
    Ns = v.common_Ns(cond, key)
    if not Ns:
        return f"{label} {what}: {NOT_RUN if cond not in v.done else 'no N with a value for every seed'}"
    b = hi if hi in Ns else max(Ns)
    below = [n for n in Ns if n < b] or [b]  # a span where two common N's exist
    a = lo if lo in below else min(below, key=lambda n: abs(n - lo))
    note = "" if (a, b) == (lo, hi) else f" (the study's N = {lo}, {hi} not both reached by every seed)"
    if a == b:  # one common N: no span to show
        return f"{label} {what}: only N = {a} in every seed: {fmt(v.at(cond, a, key))}{note}"
    return f"{label} {what}: N = {a}: {fmt(v.at(cond, a, key))} -> N = {b}: {fmt(v.at(cond, b, key))}{note}"


def _near(v, cond, key, N, label):
    Ns = v.common_Ns(cond, key)
    if not Ns:
        return f"{label}: {NOT_RUN if cond not in v.done else 'not analysed'}"
    n = min(Ns, key=lambda m: (abs(m - N), -m))
    return f"{label} at N = {n}: {fmt(v.at(cond, n, key))}"


def _forgetting(v, cond, label):
    if cond not in v.done:
        return f"{label}: {NOT_RUN}"
    per_seed = []
    for r in v.done[cond]:
        accs = [row["acc_final"] for row in v.rows[cond]
                if row["seed"] == r["seed"] and row["N"] < (r.get("N_reached") or 0) and row.get("acc_final") is not None]
        if accs:
            per_seed.append(min(accs) if "multi" in cond else sum(accs) / len(accs))
    what = "lowest accuracy over earlier N's" if "multi" in cond else "mean accuracy on earlier N's"
    return f"{label}: {what}, last checkpoint: {fmt(per_seed)}"


def _ours(v: _View, target: str) -> str:
    T = {
        "T1": lambda: _reach(v, _leaky("parity", "multi"), "multi"),
        "T2": lambda: "; ".join([_reach(v, _leaky("parity", "single"), "single"),
                                 _reach(v, _leaky("dms", "single"), "DMS single"),
                                 _reach(v, _leaky("dms", "multi"), "DMS multi")]),
        "T3": lambda: "; ".join(_reach(v, c, c.split("-", 1)[1]) for c in sorted(v.done)
                                if c.startswith("parity-") and "-leaky-tau" in c and "tau_trained" not in c) or NOT_RUN,
        "T4": lambda: "; ".join(_span(v, _leaky("parity", c), "tau_mean", lo, hi, c, "trained tau mean")
                                + "; " + _span(v, _leaky("parity", c), "tau_std", lo, hi, c, "std")
                                for c, lo, hi in (("single", 15, 32), ("multi", 15, 100))),
        "T5": lambda: "; ".join(_span(v, _leaky("parity", c), k, 5, 30, f"{c}", name)
                                for c in ("single", "multi") for k, name in v.variants(
                                    "tau_net", "tau_net (our estimator, grid-started fit)",
                                    "tau_net (the study's estimator, curve_fit)")) + v.missing("tau_net", "estimator"),
        "T6": lambda: "; ".join(_forgetting(v, _leaky("parity", c), c) for c in ("single", "multi")),
        "T7": lambda: "; ".join([f"multi: epoch of N = 11: {fmt(v.at(_leaky('parity', 'multi'), 11, 'epoch_passed'), 0)}",
                                 f"single: epoch of N = 20: {fmt(v.at(_leaky('parity', 'single'), 20, 'epoch_passed'), 0)}",
                                 f"N = 28: {fmt(v.at(_leaky('parity', 'single'), 28, 'epoch_passed'), 0)}"]),
        "T8": lambda: "; ".join(_near(v, _leaky("parity", c), k, 30, f"{c} {end} ({d})") for c in ("single", "multi")
                                for end in ("short", "long") for k, d in v.variants(
                                    f"ablation_{end}", "ours: acc / baseline",
                                    "the study's: (acc - 0.5) / (baseline - 0.5)")) + v.missing("ablation_short", "definition"),
        "T9": lambda: "; ".join(_near(v, _leaky("parity", c), k, 30, f"{c} {name} ({d})") for c in ("multi", "single")
                                for name, base in (("W at eps 0.215", "perturb_W"), ("tau at eps 0.0464", "perturb_tau"))
                                for k, d in v.variants(base, "ours: acc / baseline", "the study's: chance-corrected"))
                      + v.missing("perturb_W", "definition"),
        "T10": lambda: "not part of a sweep: `timescale-kernels retrain` compares retraining",
        "T11": lambda: "; ".join(_reach(v, f"parity-{c}-{m}", f"{m.upper()} {c}") for m in ("gru", "lstm")
                                 for c in ("multi", "single")),
    }
    return T[target]()


def study_table(runs: dict, rows: list[dict], scale: dict) -> list[str]:
    """Markdown lines: the study's T1-T11 beside ours. scale: {setting: (the study's, ours)}."""
    v = _View(runs, rows)
    differs = [f"{k} {o} (the study: {s})" for k, (s, o) in scale.items() if s != o]
    lines = ["Our scale: " + ("; ".join(differs) if differs else "the study's") + ". Our accuracies in T6, T8 and "
             "T9 are on the metric named in runs.csv (analysis_metric: 'task' is the training task's accuracy, "
             "'stream' the study's in-time probe).", "",
             "| target | the study (500 neurons, 4 networks each, N-parity unless stated) | ours (mean ± std over seeds) |",
             "| --- | --- | --- |"]
    for target, (name, study) in STUDY.items():
        lines.append(f"| {target} {name} | {study} | {_ours(v, target)} |")
    return lines
