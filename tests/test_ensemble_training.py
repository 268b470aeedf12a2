"""The ensemble trainer: each network trains as it would alone (the same N's at the same epochs,
metrics within 1e-3), a network that stops leaves and the others go on, run directories a lone run
can resume, a SIGKILL mid-epoch then --resume ends bit for bit where the uninterrupted ensemble
ends, and `train --seed S1 S2 ...` with its bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from timescale_kernels.cli import main
from timescale_kernels.experiments import RunDir, Trainer, make_config
from timescale_kernels.experiments.ensemble import EnsembleTrainer
from timescale_kernels.experiments.sweep.groups import group_runs

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = 20
COMPARED = ("loss", "mean_acc", "newest_acc", "tau_mean", "tau_std")
EXACT = ("epoch", "N_low", "N_high", "N_reached", "passed")
# The quick shapes (64 neurons, batch 64) with fewer steps and test batches, so 20 epochs take seconds.
FAST = {"steps_per_epoch": 30, "test_batches": 2, "max_epochs": EPOCHS, "device": "cpu"}


def quick(seed, **overrides):
    return make_config("quick", seed=seed, **{**FAST, **overrides})


def _close(a: float, b: float) -> bool:
    if a != a or b != b:  # NaN (no tau: GRU, LSTM) on both sides or neither
        return a != a and b != b
    return abs(a - b) <= 1e-3 * max(abs(a), abs(b), 1e-12)


def assert_trains_as_alone(lone: Trainer, member: Trainer) -> None:
    assert len(lone.metrics) == len(member.metrics) == EPOCHS
    for a, b in zip(lone.metrics, member.metrics):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}, (a, b)
        assert a["acc"].keys() == b["acc"].keys()
        for key in COMPARED:
            assert _close(a[key], b[key]), (key, a, b)
        for n in a["acc"]:
            assert _close(a["acc"][n], b["acc"][n]), (n, a, b)
    assert lone.stop_reason == member.stop_reason


def train_alone_and_together(configs) -> tuple[list, list]:
    """(lone Trainers, ensemble members) of the same configs, each trained to its stop."""
    lone = [Trainer(c) for c in configs]
    for trainer in lone:
        trainer.run()
    members = [Trainer(c) for c in configs]
    EnsembleTrainer(members).run()
    return lone, members


@pytest.mark.parametrize("task,curriculum", [("parity", "multi"), ("parity", "single"), ("dms", "multi"),
                                             ("dms", "single")])
def test_each_network_trains_as_it_would_alone(task, curriculum):
    # One ensemble holds a trained-tau and a fixed-tau network (tau is then a parameter of one and a
    # buffer of the other), with different seeds, so different lengths each step and different N's.
    settings = [dict(seed=0), dict(seed=3, learn_tau=False, tau_init=[1.0, 1.0])]
    lone, members = train_alone_and_together([quick(task=task, curriculum=curriculum, **s) for s in settings])
    for a, b in zip(lone, members):
        assert_trains_as_alone(a, b)
    assert max(t.curriculum.promotions for t in lone) >= 2  # promotions (and heads) did happen


def test_gru_networks_train_network_by_network_as_alone():
    lone, members = train_alone_and_together([quick(s, model="gru", max_epochs=6) for s in (0, 1)])
    for a, b in zip(lone, members):
        assert [r["N_reached"] for r in a.metrics] == [r["N_reached"] for r in b.metrics]
        assert all(_close(ra["loss"], rb["loss"]) for ra, rb in zip(a.metrics, b.metrics))


def test_a_network_that_stops_leaves_and_the_others_go_on(tmp_path):
    short = Trainer(quick(0, max_epochs=2), RunDir(tmp_path / "short"))
    long = Trainer(quick(1, max_epochs=4), RunDir(tmp_path / "long"))
    left = []
    summaries = EnsembleTrainer([short, long], on_stop=lambda t: left.append((t.config.seed, t.epoch))).run()
    assert [s["epochs"] for s in summaries] == [2, 4] and left == [(0, 2), (1, 4)]
    assert [s["stop_reason"] for s in summaries] == ["max_epochs", "max_epochs"]
    # Each run directory is a lone run's: it goes on alone, from where the ensemble left it.
    state = RunDir(tmp_path / "short").load_state()
    assert state["epoch"] == 2 and state["stop_reason"] == "max_epochs"
    alone = Trainer.from_state(quick(0, max_epochs=3), state, RunDir(tmp_path / "short"))
    assert alone.run()["epochs"] == 3


def test_networks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="hidden_size"):
        EnsembleTrainer([Trainer(quick(0)), Trainer(quick(1, hidden_size=32))])


def _train_args(out, seeds, max_epochs):
    return ["train", "--preset", "quick", "--hidden-size", "32", "--steps-per-epoch", "40", "--test-batches", "2",
            "--threshold", "0.6", "--max-epochs", str(max_epochs), "--seed", *map(str, seeds), "--out", str(out),
            "--quiet"]


def _final_state(run_dir: RunDir) -> dict:
    state = run_dir.load_state()
    for row in state["metrics"]:
        for key in ("epoch_time", "wall_time", "steps_per_s"):
            row.pop(key)
    state.pop("elapsed")
    return state


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_sigkill_mid_epoch_then_resume_ends_bit_for_bit(tmp_path):
    seeds, epochs = (0, 1, 2), 6
    assert main(_train_args(tmp_path / "straight", seeds, epochs)) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "timescale_kernels.cli", *_train_args(killed, seeds, epochs)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [len(RunDir(killed / f"seed{s}").read_metrics()) for s in seeds]
        if min(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epochs_at_kill = [len(RunDir(killed / f"seed{s}").read_metrics()) for s in seeds]
    assert min(epochs_at_kill) < epochs
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    for s in seeds:
        _assert_same(_final_state(RunDir(tmp_path / "straight" / f"seed{s}")),
                     _final_state(RunDir(killed / f"seed{s}")), f"seed {s}")
        assert json.loads((killed / f"seed{s}" / "summary.json").read_text())["epochs"] == epochs


def test_a_kill_between_two_networks_saves_is_redone_in_step(tmp_path):
    """One network's epoch-3 save is lost (the kill came between the two saves): the resumed ensemble
    takes the other back to its state.prev.pt and ends bit for bit where the uninterrupted one ends."""
    args = [tmp_path / "straight", (0, 1), 5]
    assert main(_train_args(*args)) == 0
    cut = tmp_path / "cut"
    assert main(_train_args(cut, (0, 1), 3)) == 0
    lagging = RunDir(cut / "seed1")
    lagging.state_path.write_bytes(lagging.previous_state_path.read_bytes())
    assert lagging.load_state()["epoch"] == 2 and RunDir(cut / "seed0").load_state()["epoch"] == 3
    assert main(["train", "--resume", str(cut), "--max-epochs", "5", "--quiet"]) == 0
    for s in (0, 1):
        _assert_same(_final_state(RunDir(tmp_path / "straight" / f"seed{s}")), _final_state(RunDir(cut / f"seed{s}")),
                     f"seed {s}")


def test_train_with_several_seeds_writes_one_run_directory_each(tmp_path):
    assert main(_train_args(tmp_path / "ens", (4, 2), 1)) == 0
    for seed in (4, 2):
        run = tmp_path / "ens" / f"seed{seed}"
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        assert (run / "summary.json").is_file() and (run / "plots").is_dir()
    assert main(_train_args(tmp_path / "one", (3,), 1)) == 0
    assert json.loads((tmp_path / "one" / "config.json").read_text())["seed"] == 3  # today's layout


@pytest.mark.parametrize("args,message", [
    (["--seed", "1", "2", "1"], "seed: each seed once"),
])
def test_train_bad_seeds_fail_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "quick", "--out", str(out), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def _sweep_fails(tmp_path, capsys, extra, message):
    out = tmp_path / "sweep"
    code = main(["sweep", "--task", "parity", "--curriculum", "single", "multi", "--seeds", "0", "1",
                 "--train-preset", "quick", "--no-ray", "--quiet", "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_sweep_ensemble_zero_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    _sweep_fails(tmp_path, capsys, ["--ensemble", "0"], "ensemble: expected an integer >= 1")


def test_sweep_repeated_seeds_fail_with_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--seeds", "0", "0", "--no-ray", "--quiet", "--out", str(out)])
    assert code == 2 and "distinct seeds" in capsys.readouterr().err and not out.exists()


def test_sweep_group_of_different_shapes_forced_by_a_spec_fails(tmp_path, capsys):
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps({"seeds": [0], "train_preset": "quick",
                                "grid": [{"task": ["parity", "dms"], "curriculum": ["multi"]}],
                                "groups": [["parity-multi-leaky-tau_trained/seed0", "dms-multi-leaky-tau_trained/seed0"]]}))
    out = tmp_path / "sweep"
    code = main(["sweep", "--spec", str(spec), "--no-ray", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "groups[0]: ensemble: networks of one ensemble must share task" in err[0]
    assert not out.exists()


def test_runs_group_by_shape_in_chunks_of_the_ensemble_size():
    configs = {f"{task}/seed{s}": quick(s, task=task) for task in ("parity", "dms") for s in range(5)}
    groups = group_runs(list(configs), configs, 2, [])
    assert [g["runs"] for g in groups] == [["parity/seed0", "parity/seed1"], ["parity/seed2", "parity/seed3"],
                                           ["parity/seed4"], ["dms/seed0", "dms/seed1"], ["dms/seed2", "dms/seed3"],
                                           ["dms/seed4"]]
    forced = group_runs(list(configs), configs, 3, [["dms/seed4", "dms/seed0"]])
    runs = [g["runs"] for g in forced]
    assert ["dms/seed4", "dms/seed0"] in runs and ["dms/seed1", "dms/seed2", "dms/seed3"] in runs
    assert sorted(r for g in runs for r in g) == sorted(configs)  # every run once
    chosen = group_runs(list(configs), configs, None, [])  # the CPU's default: 4 leaky networks a group
    assert {g["chosen_by"] for g in chosen} == {"device and shape"} and {g["ensemble"] for g in chosen} == {4}
    assert [len(g["runs"]) for g in chosen] == [4, 1, 4, 1]
    grus = {f"gru/seed{s}": quick(s, model="gru") for s in range(3)}
    assert [g["ensemble"] for g in group_runs(list(grus), grus, None, [])] == [1, 1, 1]
