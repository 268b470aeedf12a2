"""A sweep's runs grouped into ensembles: networks of one shape (ensemble.SHAPE_KEYS) train together
in one Ray task, at most `ensemble` of them (the spec's, or one chosen from the device and shape).

A spec may also name groups itself (`groups`: lists of run ids, "CONDITION/seedS"); each must hold
networks of one shape and no more than the ensemble size where one is asked for. Runs it does not name
are grouped in spec order: a shape's runs in chunks of the ensemble size.
"""
from __future__ import annotations

from ...curricula import ConfigError
from ..ensemble import check_one_shape, shape_of


def default_ensemble(config) -> int:
    """Networks per ensemble for a shape, from its device, model and size (recorded in sweep.json).

    GPU: one small network leaves the device idle between its per-step launches; 32 below 256
    neurons, 8 above (predicted, benchmarks/NOTES.md). CPU: 4 leaky networks, which at 64 neurons
    and one thread train as one ensemble in 0.72-0.93x the time of the four one after another (NOTES.md:
    the readout, loss and optimizer once for all; the recurrences' arithmetic stays per network); GRU and LSTM 1,
    since an ensemble runs their recurrences one after another and its few shared parts do not pay
    for the longer task (a group of four is four runs' time on one worker). Ask with --ensemble K.
    """
    if str(config.device).startswith("cuda"):
        return 32 if config.hidden_size < 256 else 8
    return 4 if config.model == "leaky" else 1


def group_runs(runs: list, configs: dict, size: int | None, forced: list) -> list[dict]:
    """[{"id", "runs": [run ids], "ensemble": K, "chosen_by"}] covering every run once.

    Args:
        runs: run ids in spec order. configs: {run id: RunConfig}.
        size: the ensemble size asked for (>= 1), or None to choose one per shape (default_ensemble).
        forced: lists of run ids that must train together (the spec's `groups`).
    Raises ConfigError for a forced group naming an unknown or repeated run, more runs than the
    ensemble size, or networks of different shapes.
    """
    groups, taken = [], set()
    for i, members in enumerate(forced):
        unknown = [r for r in members if r not in configs]
        if unknown:
            raise ConfigError(f"groups[{i}]: unknown runs {unknown}; run ids are CONDITION/seedS, e.g. {runs[0]!r}")
        again = [r for r in members if r in taken or members.count(r) > 1]
        if again:
            raise ConfigError(f"groups[{i}]: runs {sorted(set(again))} are named more than once")
        limit = size or len(members)  # a group named without an ensemble size is its own
        if len(members) > limit:
            raise ConfigError(f"groups[{i}]: {len(members)} runs; expected at most the ensemble size {limit}")
        try:
            check_one_shape([configs[r] for r in members])
        except ConfigError as err:
            raise ConfigError(f"groups[{i}]: {err}") from None
        taken.update(members)
        groups.append({"runs": list(members), "ensemble": limit, "chosen_by": _chosen_by(size)})
    by_shape: dict = {}
    for rid in runs:
        if rid not in taken:
            by_shape.setdefault(shape_of(configs[rid]), []).append(rid)
    for members in by_shape.values():
        limit = size or default_ensemble(configs[members[0]])
        for start in range(0, len(members), limit):
            groups.append({"runs": members[start:start + limit], "ensemble": limit, "chosen_by": _chosen_by(size)})
    order = {rid: i for i, rid in enumerate(runs)}
    groups.sort(key=lambda g: order[g["runs"][0]])
    return [{"id": f"group{i}", **g} for i, g in enumerate(groups)]


def _chosen_by(size) -> str:
    return "device and shape" if size is None else "ensemble"
