"""The report's comparison of recurrent cores: tiny leaky and GRU runs trained through the CLI, reported
without any analysis."""
import json
import re

import torch

from timescale_kernels.analysis import write_report
from timescale_kernels.cli import main

TINY = ["--preset", "quick", "--hidden-size", "16", "--batch-size", "16", "--steps-per-epoch", "8",
        "--test-batches", "2", "--threshold", "0.5", "--device", "cpu", "--quiet", "--max-epochs", "2"]


def _expected(run):
    """(N reached, first epoch at it) from the run's own files."""
    reached = json.loads((run / "summary.json").read_text())["N_reached"]
    if reached is None:
        return "-", "-"
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("N_reached")
    epoch = next(r[0] for r in rows[1:] if r[col] == str(reached))
    return str(reached), epoch


def test_report_compares_models_without_analysis(tmp_path):
    threads = torch.get_num_threads()
    try:
        for model, curriculum in (("leaky", "multi"), ("gru", "multi"), ("gru", "single")):
            assert main(["train", *TINY, "--model", model, "--curriculum", curriculum, "--backend", "reference",
                         "--out", str(tmp_path / f"{model}-{curriculum}")]) == 0
    finally:
        torch.set_num_threads(threads)
    runs = [tmp_path / name for name in ("leaky-multi", "gru-multi", "gru-single")]
    text = write_report(runs, tmp_path / "report.md").read_text()
    assert "## N reached by model and curriculum" in text
    rows = {tuple(cells[1:3]): cells for line in text.splitlines()
            if (cells := [c.strip() for c in line.split("|")])[1:2] in (["leaky"], ["gru"])}
    assert set(rows) == {("leaky", "multi"), ("gru", "multi"), ("gru", "single")}
    for run in runs:
        model, curriculum = run.name.split("-")
        n, epoch = _expected(run)
        cells = rows[(model, curriculum)]
        assert cells[3] == "1" and cells[4] == n and cells[5] == epoch, cells
        assert re.fullmatch(r"-|[0-9.]+ (s|min|h)", cells[6]), cells  # wall time to reach it
        assert f"{run.name}: {n}" in cells[7]
    assert (tmp_path / "report_files" / "n_reached_by_model.png").read_bytes()[:4] == b"\x89PNG"
    assert "none of these runs has been analysed" in text
