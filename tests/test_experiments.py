"""Runs: config validation, curricula, the trainer (a real short run), checkpoints, resume, plots."""
import dataclasses

import pytest
import torch

from timescale_kernels.experiments import ConfigError, Curriculum, RunDir, Trainer, make_config
from timescale_kernels.experiments.plots import write_plots
from timescale_kernels.experiments.rundir import check_resume_config
from timescale_kernels.checkpoints import load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def tiny(**overrides):
    """Settings small enough for a test: 16 neurons, a few steps per epoch, one thread."""
    values = {"hidden_size": 16, "batch_size": 16, "steps_per_epoch": 8, "test_batches": 2, "lr": 0.1,
              "momentum": 0.5, "max_epochs": 4, "backend": "auto", "device": "cpu", "threads": 1}
    return make_config("quick", **{**values, **overrides})


# config -------------------------------------------------------------------------------------------------
def test_presets_and_overrides():
    paper = make_config("paper", device="cpu")
    assert (paper.hidden_size, paper.batch_size, paper.steps_per_epoch, paper.test_batches) == (500, 256, 600, 50)
    assert (paper.lr, paper.momentum, paper.nesterov, paper.clip, paper.max_epochs) == (0.05, 0.1, True, 2.0, 1000)
    assert paper.threshold == 0.98 and paper.tau_init == [1.0, 2.0]
    quick = make_config("quick", hidden_size=96)
    assert quick.hidden_size == 96 and quick.batch_size < 256


@pytest.mark.parametrize("bad, match", [
    ({"task": "sum"}, "task"), ({"curriculum": "random"}, "curriculum"), ({"model": "transformer"}, "model"),
    ({"n_start": 0}, "n_start"), ({"batch_size": 0}, "batch_size"), ({"target_N": 0}, "target_N"),
    ({"lr": 0.0}, "lr"), ({"threshold": 1.5}, "threshold"), ({"tau_init": [3.0, 1.0]}, "tau_init"),
    ({"curriculum": "sliding", "window": 2, "forget": 3}, "forget"), ({"device": "tpu"}, "device"),
    ({"model": "gru", "placement": "inside"}, "model"), ({"hidden_size": 2.5}, "hidden_size"),
])
def test_bad_settings_name_the_setting(bad, match):
    with pytest.raises(ConfigError, match=match):
        make_config("quick", **bad)


def test_resume_allows_only_stop_and_kernel_changes():
    saved = tiny()
    check_resume_config(saved, dataclasses.replace(saved, max_epochs=99, time_budget=5.0, backend="reference"))
    with pytest.raises(ConfigError, match="hidden_size: saved 16, asked 32"):
        check_resume_config(saved, dataclasses.replace(saved, hidden_size=32))


# curricula ----------------------------------------------------------------------------------------------
def test_multi_curriculum_adds_a_head_per_N():
    cur = Curriculum("multi", n_start=2)
    assert cur.Ns == [2] and cur.heads == [0]
    assert not cur.passed([0.98])  # strictly above the threshold
    assert cur.passed([0.99])
    cur.advance()
    cur.advance()
    assert cur.Ns == [2, 3, 4] and cur.heads == [0, 1, 2] and cur.head_for_N == {2: 0, 3: 1, 4: 2}
    assert not cur.passed([1.0, 1.0, 0.9])     # the newest N is not there yet
    assert not cur.passed([0.95, 0.96, 0.99])  # the mean is not there yet
    assert cur.passed([0.97, 1.0, 0.99])


def test_single_curriculum_reuses_head_zero():
    cur = Curriculum("single", n_start=3)
    for _ in range(4):
        cur.advance()
    assert cur.Ns == [7] and cur.heads == [0] and cur.num_heads == 1


def test_sliding_curriculum_keeps_a_window():
    cur = Curriculum("sliding", n_start=2, window=3, forget=2)
    assert cur.Ns == [2, 3, 4] and cur.heads == [0, 1, 2]
    cur.advance()
    assert cur.Ns == [4, 5, 6] and cur.heads == [0, 1, 2]


def test_none_curriculum_finishes_on_a_pass():
    cur = Curriculum("none", n_start=9)
    assert cur.Ns == [9] and not cur.finished
    cur.advance()
    assert cur.finished and cur.Ns == [9]


def test_curriculum_state_round_trip():
    cur = Curriculum("multi", n_start=2, threshold=0.9)
    cur.advance()
    again = Curriculum("multi", n_start=2)
    again.load_state_dict(cur.state_dict())
    assert again.state_dict() == cur.state_dict()
    with pytest.raises(ConfigError, match="kind"):
        Curriculum("single").load_state_dict(cur.state_dict())
    with pytest.raises(ValueError, match="accuracies"):
        cur.passed([1.0])


# the trainer --------------------------------------------------------------------------------------------
def test_a_short_real_run_learns_parity_up_to_N4(tmp_path):
    config = make_config("quick", hidden_size=32, batch_size=32, steps_per_epoch=50, test_batches=4,
                         target_N=4, max_epochs=40, device="cpu", seed=0)
    run_dir = RunDir(tmp_path)
    summary = Trainer(config, run_dir).run()
    assert summary["stop_reason"] == "target_N" and summary["N_reached"] >= 4, summary
    names = [p.name for p in run_dir.checkpoints()]
    assert names[:3] == ["N2-N2.pt", "N2-N3.pt", "N2-N4.pt"]
    model, meta = load_checkpoint(run_dir.checkpoint_path([2, 3, 4]))
    assert meta["Ns"] == [2, 3, 4] and meta["head_for_N"] == {2: 0, 3: 1, 4: 2} and meta["task"] == "parity"
    assert min(meta["accuracy"].values()) > 0.98 and meta["curriculum"]["kind"] == "multi"
    rows = run_dir.read_metrics()
    assert [r["epoch"] for r in rows] == list(range(1, summary["epochs"] + 1))
    assert rows[-1]["N_reached"] == 4 and set(rows[-1]["acc"]) == {2, 3, 4}


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "wall_time", "steps_per_s")} for r in rows]


def _assert_same_state(a: Trainer, b: Trainer):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for key in sa["state"]:
        assert torch.equal(sa["state"][key]["momentum_buffer"], sb["state"][key]["momentum_buffer"])
    assert _strip_times(a.metrics) == _strip_times(b.metrics)
    assert a.curriculum.state_dict() == b.curriculum.state_dict()


@pytest.mark.parametrize("curriculum", ["multi", "sliding", "single"])
def test_resume_gives_the_uninterrupted_result_bit_for_bit(tmp_path, curriculum):
    # A low threshold makes promotions (and new heads) happen within these few epochs.
    config = tiny(curriculum=curriculum, threshold=0.5, window=2)
    straight = Trainer(config, RunDir(tmp_path / "a"))
    straight.run()
    assert straight.curriculum.promotions >= 1
    half = RunDir(tmp_path / "b")
    Trainer(dataclasses.replace(config, max_epochs=2), half).run()
    resumed = Trainer.from_state(config, half.load_state(), half)
    assert resumed.epoch == 2
    resumed.run()
    _assert_same_state(straight, resumed)


class _Killed(Trainer):
    """Raises Ctrl-C in the middle of epoch 3, after some steps changed the model in memory."""

    def train_epoch(self, bar=None):
        if self.epoch == 2:
            self.optimizer.param_groups[0]["params"][0].data.add_(1.0)
            raise KeyboardInterrupt
        return super().train_epoch(bar)


def test_a_killed_run_resumes_from_its_last_completed_epoch(tmp_path):
    config = tiny(threshold=0.5)
    straight = Trainer(config, RunDir(tmp_path / "a"))
    straight.run()
    killed_dir = RunDir(tmp_path / "b")
    summary = _Killed(config, killed_dir).run()
    assert summary["stop_reason"] == "interrupted"
    state = killed_dir.load_state()
    assert state["epoch"] == 2 and len(killed_dir.read_metrics()) == 2
    resumed = Trainer.from_state(config, state, killed_dir)
    resumed.run()
    _assert_same_state(straight, resumed)


def test_stop_conditions(tmp_path):
    assert Trainer(tiny(max_epochs=2)).run()["stop_reason"] == "max_epochs"
    budget = Trainer(tiny(max_epochs=1000, time_budget=1e-6)).run()
    assert budget["stop_reason"] == "time_budget" and budget["epochs"] == 1
    done = Trainer(tiny(curriculum="none", n_start=2, threshold=0.0, max_epochs=50)).run()
    assert done["stop_reason"] == "finished" and done["epochs"] == 1 and done["N_reached"] == 2


def test_fixed_tau_stays_fixed_and_learned_tau_moves():
    fixed = Trainer(tiny(learn_tau=False, tau_init=[1.5, 3.0], max_epochs=1))
    before = fixed.model.rnn.tau.clone()
    fixed.run()
    assert torch.equal(before, fixed.model.rnn.tau) and "rnn.tau" not in dict(fixed.model.named_parameters())
    learned = Trainer(tiny(tau_init=[1.5, 3.0], max_epochs=1))
    before = learned.model.rnn.tau.detach().clone()
    learned.run()
    assert not torch.equal(before, learned.model.rnn.tau.detach())


def test_dms_trains_and_checkpoints_say_so(tmp_path):
    run_dir = RunDir(tmp_path)
    summary = Trainer(tiny(task="dms", threshold=0.0, max_epochs=2), run_dir).run()
    assert summary["N_reached"] == 3
    _, meta = load_checkpoint(run_dir.checkpoint_path([2, 3]))
    assert meta["task"] == "dms" and meta["Ns"] == [2, 3]


@pytest.mark.parametrize("model", ["gru", "lstm"])
def test_torch_cores_train(model):
    trainer = Trainer(tiny(model=model, max_epochs=1))
    summary = trainer.run()
    assert summary["epochs"] == 1 and summary["backend"] == "torch.nn"
    assert trainer.metrics[0]["tau_mean"] != trainer.metrics[0]["tau_mean"]  # NaN: no tau


def test_no_host_reads_inside_the_training_steps(monkeypatch):
    trainer = Trainer(tiny())
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    trainer.train_epoch()
    assert calls == []


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = Trainer(tiny(seed=3)), Trainer(tiny(seed=3)), Trainer(tiny(seed=4))
    for t in (a, b, c):
        t.run()
    assert torch.equal(a.model.rnn.weight_hh, b.model.rnn.weight_hh)
    assert not torch.equal(a.model.rnn.weight_hh, c.model.rnn.weight_hh)


def test_plots_are_png_files(tmp_path):
    run_dir = RunDir(tmp_path)
    trainer = Trainer(tiny(threshold=0.5), run_dir)
    trainer.run()
    written = write_plots(run_dir)
    assert {p.name for p in written} == {"accuracy.png", "n_reached.png", "tau_hist.png", "tau_vs_N.png"}
    for path in written:
        assert path.read_bytes()[:8] == PNG


def test_kernel_choice_names_backend_and_triton_family(monkeypatch):
    from timescale_kernels.experiments.config import make_config
    from timescale_kernels.experiments.rundir import kernel_choice
    from timescale_kernels.ops import triton_recurrence
    assert kernel_choice(make_config("quick", model="gru")) == {"backend": "torch"}
    assert kernel_choice(make_config("quick", backend="reference")) == {"backend": "reference"}
    seen = []

    def fake_resolve(u_like, precision):
        seen.append((tuple(u_like.shape), precision))
        return "persistent"

    monkeypatch.setattr(triton_recurrence, "resolve_family", fake_resolve)
    monkeypatch.setattr("timescale_kernels.experiments.rundir.resolve_backend", lambda backend, device: "triton")
    config = make_config("quick", hidden_size=48, batch_size=12)
    assert kernel_choice(config) == {"backend": "triton", "triton_family": "persistent"}
    assert seen == [((1, 12, 48), "fp32")]
