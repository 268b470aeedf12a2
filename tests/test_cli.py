"""The command line: training and resuming through main(), and one-line errors with exit status 2."""
import json
import socket
import subprocess
import sys

import pytest
import torch

import timescale_kernels as tk

from timescale_kernels.cli import main

from conftest import cli_fails as _fails
from timescale_kernels.experiments.demo import prepare_demo_dir
from timescale_kernels.checkpoints import save_checkpoint
from timescale_kernels.models import MemoryNet

TINY = ["--preset", "quick", "--hidden-size", "16", "--batch-size", "16", "--steps-per-epoch", "8",
        "--test-batches", "2", "--threshold", "0.5", "--device", "cpu", "--quiet"]




def test_train_then_resume_matches_a_straight_run(tmp_path, capsys):
    assert main(["train", *TINY, "--max-epochs", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *TINY, "--max-epochs", "2", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--max-epochs", "4", "--quiet"]) == 0
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["max_epochs"] == 4 and saved["task"] == "parity" and saved["versions"]["torch"] == torch.__version__
    assert saved["kernels"] == {"backend": tk.ops.resolve_backend("auto", torch.device("cpu"))}
    for name in ("metrics.csv", "summary.json", "plots/accuracy.png", "plots/n_reached.png"):
        assert (tmp_path / "b" / name).is_file(), name
    assert capsys.readouterr().err == ""  # --quiet


@pytest.mark.parametrize("flags, match", [
    (["--task", "sum"], "--task"), (["--curriculum", "random"], "--curriculum"), (["--model", "mlp"], "--model"),
    (["--n-start", "0"], "n_start"), (["--target-N", "0"], "target_N"), (["--batch-size", "0"], "batch_size"),
    (["--hidden-size", "many"], "--hidden-size"), (["--preset", "huge"], "--preset"),
])
def test_bad_settings(tmp_path, capsys, flags, match):
    _fails(["train", *TINY, *flags, "--out", str(tmp_path / "run")], capsys, match)
    assert not (tmp_path / "run").exists()


def test_out_is_required_and_must_be_writable(tmp_path, capsys):
    _fails(["train", *TINY], capsys, "--out")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(["train", *TINY, "--out", str(blocker / "run")], capsys, "cannot write")
    _fails(["train", *TINY, "--out", str(blocker)], capsys, "not a directory")


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--max-epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in (out / "config.json", out / "state.pt", out / "metrics.csv")}
    _fails(["train", *TINY, "--max-epochs", "1", "--out", str(out)], capsys, "already holds a run")
    _fails(["train", *TINY, "--seed", "5", "--resume", str(out)], capsys, "seed: saved 0, asked 5")
    assert {p.name: p.read_bytes() for p in (out / "config.json", out / "state.pt", out / "metrics.csv")} == before
    assert main(["train", *TINY, "--max-epochs", "1", "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 5


def test_resume_needs_a_sound_run(tmp_path, capsys):
    _fails(["train", "--resume", str(tmp_path / "absent")], capsys, "no config.json")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--max-epochs", "1", "--out", str(out)]) == 0
    (out / "state.pt").write_bytes(b"garbage")
    _fails(["train", "--resume", str(out), "--quiet"], capsys, "cannot read")
    torch.save({"weights": torch.ones(2)}, out / "state.pt")
    _fails(["train", "--resume", str(out), "--quiet"], capsys, "not a timescale_kernels run state")
    _fails(["train", "--resume", str(out), "--out", str(tmp_path / "other")], capsys, "different directories")
    (out / "state.pt").unlink()  # epochs done but the state gone: starting over would pass as resuming
    _fails(["train", "--resume", str(out), "--quiet"], capsys, "1 epochs in metrics.csv")
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # nothing overwritten


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    """A second train on a directory another live train holds (its run.lock) ends with one line and
    exit status 2 before writing anything; the lock of a process that is gone is taken over."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--max-epochs", "1", "--out", str(out)]) == 0
    assert not (out / "run.lock").exists()  # released at the end
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "x"}))
        before = (out / "metrics.csv").read_text()
        _fails(["train", "--resume", str(out), "--max-epochs", "2", "--quiet"], capsys, "in use by another train")
        _fails(["train", *TINY, "--out", str(out), "--overwrite"], capsys, "in use by another train")
        assert (out / "metrics.csv").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(out), "--max-epochs", "2", "--quiet"]) == 0  # a stale lock: taken over
    assert len((out / "metrics.csv").read_text().splitlines()) == 3 and not (out / "run.lock").exists()


def test_score_reads_ours_and_rejects_damaged_or_foreign_files(tmp_path, capsys):
    model = MemoryNet("leaky", 8, num_heads=2, backend="reference")
    save_checkpoint(tmp_path / "ours.pt", model, {"Ns": [2, 3], "head_for_N": {2: 0, 3: 1}, "task": "parity"})
    assert main(["score", str(tmp_path / "ours.pt"), "--batch-size", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["accuracy"]) == {"2", "3"} and result["untrained"] == []
    assert main(["score", str(tmp_path / "ours.pt"), "--batch-size", "8", "--N", "3", "5"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["untrained"] == [5] and result["head_for_N"] == {"3": 1, "5": 1}
    assert "N = 5 not trained (trained: 2, 3)" in captured.err
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    _fails(["score", str(tmp_path / "bad.pt")], capsys, "cannot read")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    _fails(["score", str(tmp_path / "foreign.pt")], capsys, "neither")
    _fails(["score", str(tmp_path / "ours.pt"), "--N", "0"], capsys, "--N")


def test_score_a_study_network(study_checkpoints, capsys):
    path = study_checkpoints / "single_head_parity" / "rnn_N5_N5.pt"
    assert main(["score", str(path), "--backend", "reference"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"]["5"] >= 0.98


def test_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--budget", "3", "--hidden-size", "16", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert "multi-head" in report and "single-head" in report and "study" in report
    assert (out / "plots" / "n_reached.png").read_bytes()[:4] == b"\x89PNG"
    prepare_demo_dir(out)  # what a second demo into the same directory does first
    assert not (out / "report.md").exists() and not any((out / "multi").iterdir())
    _fails(["demo", "--out", str(tmp_path), "--budget", "3"], capsys, "holds no earlier demo")


def test_analyze_and_report_need_a_run(tmp_path, capsys):
    _fails(["analyze", str(tmp_path / "absent")], capsys, "absent")
    _fails(["report", str(tmp_path), "--out", str(tmp_path / "r.md")], capsys, "analysis")


def test_analyze_settings_reach_the_analysis(tmp_path, study_checkpoints):
    import json
    out = tmp_path / "analysis"
    code = main(["analyze", str(study_checkpoints / "single_head_parity"), "--out", str(out), "--quiet",
                 "--trials", "2", "--steps", "600", "--burn-in", "50", "--max-lag", "12", "--ablate-k", "2",
                 "--perturb-trials", "1", "--eval-batches", "1", "--batch-size", "32", "--only", "N5-N5",
                 "--no-study-tau-net", "--study-trials", "2"])
    assert code == 0
    result = json.loads((out / "analysis.json").read_text())
    text = json.dumps(result)
    assert '"trials": 2' in text and '"steps": 600' in text and '"max_lag": 12' in text
    (ck,) = result["checkpoints"]
    assert "tau_net_study" not in ck and ck["tau_net"]["estimator"] == "ours"
    assert ck["ablation_study"]["trials"] == 2 and len(ck["perturbation_study"]["tau"]["accuracy"][0]) == 2


def test_analyze_study_flags_and_the_subcommand_table():
    from timescale_kernels.cli import _commands, build_parser
    args = build_parser().parse_args(["analyze", "run"])
    assert args.study_tau_net and args.study_measures and args.study_trials == 10
    args = build_parser().parse_args(["analyze", "run", "--no-study-tau-net", "--no-study-measures"])
    assert not args.study_tau_net and not args.study_measures
    names = [c.name for c in _commands()]
    assert names[:6] == ["train", "demo", "score", "analyze", "report", "retrain"] and len(set(names)) == len(names)


def test_analyze_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", str(tmp_path), "--trials", "0"])
    assert info.value.code == 2
    assert "trials" in capsys.readouterr().err


def test_analyze_only_must_name_a_checkpoint(tmp_path, capsys, study_checkpoints):
    """A label that names no checkpoint fails with the run's labels, before anything is written."""
    out = tmp_path / "an"
    for only in ("N2-N99", "99"):
        _fails(["analyze", str(study_checkpoints / "single_head_parity"), "--only", only, "--out", str(out)], capsys,
               "N5-N5, N11-N11")
    assert not out.exists()


def test_analysis_settings_are_checked_before_any_work():
    from timescale_kernels.analysis.analyze import check_settings
    check_settings(trials=1, steps=31, max_lag=30, eps=[0.0, 0.1], metric="stream", backend=None)
    for bad, words in ((dict(steps=0), "steps"), (dict(steps=30, max_lag=30), "max_lag"), (dict(eps=[]), "eps"),
                       (dict(eps="0.1"), "eps"), (dict(length_factors=[1, 0]), "length_factors"),
                       (dict(backend="gpu"), "backend"), (dict(seed=-1), "seed"), (dict(trials=1.5), "trials")):
        with pytest.raises(ValueError, match=words):
            check_settings(**bad)
