"""examples/neurogym_decision.py runs end to end on a few updates (needs the examples extra: neurogym)."""
import csv
import importlib.util

import pytest

from conftest import REPO

pytest.importorskip("neurogym")
pytest.importorskip("matplotlib")


def test_neurogym_example_writes_its_plot_and_curves(tmp_path):
    spec = importlib.util.spec_from_file_location("neurogym_decision", REPO / "examples" / "neurogym_decision.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "curves.png"
    example.main(["--steps", "4", "--eval-every", "2", "--hidden", "8", "--seq-len", "20", "--out", str(out)])
    assert out.stat().st_size > 0
    with open(tmp_path / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["network"] for r in rows} == set(example.make_nets(3, 3, 8, 2.0))
    assert [r["update"] for r in rows if r["network"].startswith("torch")] == ["0", "2", "4"]
    assert all(0.0 <= float(r["decision_accuracy"]) <= 1.0 for r in rows)
