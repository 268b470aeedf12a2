"""Checkpoints: atomic writes, our round trip, damaged and foreign files, the study's networks."""
import os

import pytest
import torch

from timescale_kernels.experiments.scoring import score
from timescale_kernels.checkpoints import CheckpointError, load_checkpoint, load_study_checkpoint, save_checkpoint
from timescale_kernels.files import atomic_torch_save, atomic_write_json, atomic_write_text
from timescale_kernels.models import MemoryNet


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_writes_replace_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert '"x"' in (tmp_path / "b.json").read_text()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save(path, {"a": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save(path, {"a": lambda: None})  # cannot be pickled
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def _model(**kwargs):
    torch.manual_seed(0)
    return MemoryNet("leaky", 12, num_heads=3, backend="reference", **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"learn_tau": False, "placement": "inside", "tau_init": [2.0, 3.0]},
                                    {"nonlinearity": "tanh"}])
def test_checkpoint_round_trip(tmp_path, kwargs):
    model = _model(**kwargs)
    meta = {"Ns": [2, 3, 4], "head_for_N": {2: 0, 3: 1, 4: 2}, "epoch": 7, "task": "parity"}
    save_checkpoint(tmp_path / "c.pt", model, meta)
    loaded, meta2 = load_checkpoint(tmp_path / "c.pt", backend="reference")
    assert meta2 == meta and loaded.num_heads == 3
    assert loaded.rnn.learn_tau == model.rnn.learn_tau and loaded.rnn.placement == model.rnn.placement
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(9, 4, 1)
    h0 = model.initial_state(4, torch.Generator().manual_seed(1))
    assert torch.equal(model(x, h0=h0), loaded(x, h0=h0))


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_checkpoint_round_trip_other_cores(tmp_path, core):
    model = MemoryNet(core, 8, num_heads=2)
    save_checkpoint(tmp_path / "c.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "c.pt")
    x = torch.rand(5, 3, 1)
    assert loaded.core == core and torch.equal(model(x), loaded(x))


def test_damaged_foreign_and_missing_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _model())
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(damaged)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a timescale_kernels checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="study's state_dict"):
        load_study_checkpoint(good)
    blob = torch.load(good, weights_only=True)
    blob["version"] = 99
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "future.pt")
    blob["version"] = 1
    blob["state_dict"]["rnn.weight_hh"] = torch.zeros(3, 3)
    torch.save(blob, tmp_path / "inconsistent.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "inconsistent.pt")


@pytest.fixture
def one_thread():
    # Forward passes of a 500-neuron network: on a busy 2-core machine one thread is the fastest.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_study_multi_head_network_solves_every_N(study_checkpoints, one_thread):
    model = load_study_checkpoint(study_checkpoints / "multi_head_parity" / "rnn_N2_N11.pt", backend="reference")
    assert model.trained_Ns == list(range(2, 12)) and model.head_for_N[11] == 9
    # 256 sequences labelled for every N at once, as the study tests its multi-head networks.
    acc = score(model, "parity", {n: n - 2 for n in range(2, 12)}, batch_size=256, seed=0, together=True)
    assert all(a >= 0.98 for a in acc.values()), acc


def test_study_single_head_network_solves_its_N_and_forgot_the_smaller(study_checkpoints, one_thread):
    model = load_study_checkpoint(study_checkpoints / "single_head_parity" / "rnn_N11_N11.pt", backend="reference")
    assert model.head_for_N == {11: 0}
    acc = score(model, "parity", {11: 0, 5: 0}, batch_size=256, seed=0)
    assert acc[11] >= 0.98, acc
    assert acc[5] < 0.75, acc


def test_study_file_is_not_ours(study_checkpoints):
    with pytest.raises(CheckpointError, match="load_study_checkpoint"):
        load_checkpoint(study_checkpoints / "single_head_parity" / "rnn_N5_N5.pt")


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp makes files 0600; a run directory on a shared disk must be readable as open() makes it."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "y")
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(plain)


def test_first_line_cuts_long_messages_at_a_word():
    from timescale_kernels.files import first_line
    assert first_line(ValueError("short\nsecond line")) == "short"
    assert first_line(ValueError("")) == ""
    long = ValueError("word " * 100)
    cut = first_line(long, 50)
    assert len(cut) <= 54 and cut.endswith(" ...") and cut[:-4].split(" ")[-1] == "word"
