"""Retraining trained networks on a new N: the API on tiny networks and on the study's multi-head
network, the files it writes, and the CLI's one-line errors."""
import json

import pytest
import torch

from timescale_kernels.cli import main

from conftest import cli_fails as _fails
from timescale_kernels.experiments.config import ConfigError
from timescale_kernels.experiments.retrain import compare_retraining, retrain
from timescale_kernels.checkpoints import load_checkpoint, save_checkpoint
from timescale_kernels.models import MemoryNet

# Tiny settings: a couple of SGD steps per epoch, one small test batch, the reference op.
FAST = {"steps_per_epoch": 2, "batch_size": 8, "test_batches": 1, "backend": "reference", "device": "cpu",
        "threads": 1}
FAST_FLAGS = ["--steps-per-epoch", "2", "--batch-size", "8", "--test-batches", "1", "--backend", "reference",
              "--device", "cpu", "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_checkpoint(path, core="leaky"):
    torch.manual_seed(0)
    model = MemoryNet(core, 16, num_heads=2, **({"backend": "reference"} if core == "leaky" else {}))
    save_checkpoint(path, model, {"Ns": [2, 3], "head_for_N": {"2": 0, "3": 1}, "task": "parity"})
    return model




def test_retrain_returns_per_epoch_accuracy_and_leaves_the_model_alone():
    model = MemoryNet("leaky", 16, num_heads=2, backend="reference")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = retrain(model, 4, 2, seed=1, **FAST)
    assert len(result["accuracy"]) == 3 and len(result["loss"]) == 2  # epoch 0 is before training
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"])
    above = [i for i, a in enumerate(result["accuracy"]) if a > result["threshold"]]
    assert result["epochs_to_threshold"] == (above[0] if above else None)
    assert result["final_accuracy"] == result["accuracy"][-1] and result["head"] == "fresh"
    new = result["model"]
    assert new.num_heads == 1 and not torch.equal(new.rnn.weight_hh, model.rnn.weight_hh)  # the core trained
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Same seed, same run: the fresh head and every batch come from the seed.
    again = retrain(model, 4, 2, seed=1, **FAST)
    assert again["accuracy"] == result["accuracy"] and again["loss"] == result["loss"]


def test_retrain_can_start_from_a_trained_head():
    model = MemoryNet("gru", 16, num_heads=2)
    result = retrain(model, 3, 1, reuse_head=1, lr=1e-30, momentum=0.0, **FAST)
    assert result["head"] == "copy of head 1"
    assert torch.allclose(result["model"].readout.heads[0].weight, model.readout.heads[1].weight)
    with pytest.raises(ConfigError, match="reuse_head"):
        retrain(model, 3, 1, reuse_head=2, **FAST)
    with pytest.raises(ConfigError, match="N: expected"):
        retrain(model, 0, 1, **FAST)


def test_compare_writes_plot_and_summary_and_keeps_the_sources(tmp_path):
    paths = [tmp_path / "runs" / "multi" / "checkpoints" / "N2-N3.pt", tmp_path / "gru.pt"]
    _tiny_checkpoint(paths[0])
    _tiny_checkpoint(paths[1], core="gru")
    sources = [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]
    out = tmp_path / "out"
    summary = compare_retraining(paths, 4, 2, out, seed=0, **FAST)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths] == sources
    labels = [r["label"] for r in summary["networks"]]
    assert labels == ["multi_N2-N3", "gru"]
    assert [r["pretraining"] for r in summary["networks"]] == ["leaky multi N=2..3", "gru multi N=2..3"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "retrain.json").read_text())
    assert saved["N"] == 4 and [len(r["accuracy"]) for r in saved["networks"]] == [3, 3]
    md = (out / "retrain.md").read_text()
    assert all(f"| {label} |" in md for label in labels) and "epochs to threshold" in md
    for label in labels:
        assert len((out / label / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
        model, meta = load_checkpoint(out / label / "retrained.pt")
        assert model.num_heads == 1 and meta["Ns"] == [4]


def test_retrain_the_study_multi_head_network_on_N12(study_checkpoints, tmp_path):
    multi = study_checkpoints / "multi_head_parity" / "rnn_N2_N11.pt"
    single = study_checkpoints / "single_head_parity" / "rnn_N11_N11.pt"
    sources = [p.read_bytes() for p in (multi, single)]
    summary = compare_retraining([multi, single], 12, 2, tmp_path / "out", **FAST)
    assert [p.read_bytes() for p in (multi, single)] == sources
    by = {r["label"]: r for r in summary["networks"]}
    assert by["rnn_N2_N11"]["pretraining"] == "leaky multi N=2..11"
    assert by["rnn_N11_N11"]["pretraining"] == "leaky single N=11"
    assert all(len(r["accuracy"]) == 3 for r in by.values()) and summary["task"] == "parity"
    # With --reuse-head the multi-head network starts from its N = 11 head (index 9).
    assert main(["retrain", str(multi), "--N", "12", "--epochs", "1", "--reuse-head", "--out",
                 str(tmp_path / "cli"), *FAST_FLAGS]) == 0
    saved = json.loads((tmp_path / "cli" / "retrain.json").read_text())
    assert saved["networks"][0]["head"] == "copy of head 9"


def test_cli_retrain_and_its_bad_input(tmp_path, capsys):
    ckpt = tmp_path / "net.pt"
    _tiny_checkpoint(ckpt)
    out = tmp_path / "out"
    assert main(["retrain", str(ckpt), "--N", "5", "--epochs", "1", "--out", str(out), *FAST_FLAGS]) == 0
    assert (out / "accuracy.png").is_file() and json.loads((out / "retrain.json").read_text())["N"] == 5
    assert capsys.readouterr().err == ""  # --quiet
    args = ["--epochs", "1", *FAST_FLAGS]
    _fails(["retrain", str(tmp_path / "absent.pt"), "--N", "5", "--out", str(tmp_path / "o"), *args], capsys,
           "no such file")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    _fails(["retrain", str(tmp_path / "bad.pt"), "--N", "5", "--out", str(tmp_path / "o"), *args], capsys,
           "cannot read")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    _fails(["retrain", str(tmp_path / "foreign.pt"), "--N", "5", "--out", str(tmp_path / "o"), *args], capsys,
           "neither")
    for n in ("0", "-3"):
        _fails(["retrain", str(ckpt), "--N", n, "--out", str(tmp_path / "o"), *args], capsys, "N: expected")
    _fails(["retrain", str(ckpt), "--N", "5", "--out", str(tmp_path / "o"), "--epochs", "0", *FAST_FLAGS],
           capsys, "epochs: expected")
    _fails(["retrain", str(ckpt), "--N", "5", "--out", str(ckpt / "o"), *args], capsys, "cannot write")
    _fails(["retrain", str(ckpt), "--N", "5", "--out", str(ckpt), *args], capsys, "not a directory")
    _fails(["retrain", str(ckpt), "--N", "5", "--out", str(tmp_path / "o"), "--batch-size", "0", "--epochs", "1"],
           capsys, "batch_size")
    _fails(["retrain", str(ckpt), "--epochs", "1", "--out", str(tmp_path / "o")], capsys, "--N")
    assert not (tmp_path / "o").exists()  # nothing written on bad input
