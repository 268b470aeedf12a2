"""The task and curriculum tables: every entry is complete and consistent, and everything that offers a
choice (make_batch, the probes, the config, the command line, the report) reads the tables."""
import pytest
import torch

from timescale_kernels import curricula, tasks
from timescale_kernels.cli import build_parser
from timescale_kernels.curricula import CURRICULA, ConfigError, Curriculum, curriculum_of, get_curriculum
from timescale_kernels.experiments import make_config
from timescale_kernels.tasks import (PER_SEQUENCE, TASKS, Task, get_task, labels_for, make_batch, make_generator,
                                     stream_labels)


@pytest.mark.parametrize("name", TASKS)
def test_batch_labels_are_the_last_row_of_the_stream_labels(name):
    task = get_task(name)
    bits = torch.rand(40, 64, generator=make_generator(11)) < torch.rand(1, 64, generator=make_generator(12))
    b = bits.to(torch.int64)
    for N in (1, 2, 5, 17, 40):
        stream = task.stream_labels(b, N)
        assert stream.shape == (40 - N + 1, 64) and stream.dtype == torch.int64
        assert torch.equal(task.labels(b, N), stream[-1])
        if N <= 37:                                          # any end point, not just the last
            assert torch.equal(task.labels(b[:-3], N), stream[-4])


def test_a_task_states_every_field():
    with pytest.raises(TypeError):
        Task("copy", "the last bit", 0.5, lambda bits, N: bits[-1])       # no stream labels
    with pytest.raises(ValueError, match="bit_rate"):
        Task("copy", "the last bit", 1.5, lambda b, N: b[-1], lambda b, N: b[N - 1:])
    with pytest.raises(TypeError, match="stream_labels"):
        Task("copy", "the last bit", 0.5, lambda b, N: b[-1], None)
    with pytest.raises(ValueError, match="task: expected one of 'parity', 'dms'; got 'sum'"):
        get_task("sum")


def test_make_batch_draws_the_task_s_own_bit_rate():
    sparse = Task("sparse-parity", "parity of rare ones", 0.1, get_task("parity").labels,
                  get_task("parity").stream_labels)
    x, labels = make_batch(sparse, [3], 256, generator=make_generator(0), length=200)
    assert abs(x.mean().item() - 0.1) < 0.01
    assert torch.equal(labels[0], stream_labels("parity", x[..., 0], 3)[-1])
    assert get_task("parity").bit_rate == PER_SEQUENCE and get_task("dms").bit_rate == 0.5


def test_a_new_task_is_offered_everywhere(monkeypatch):
    copy = Task("copy", "the bit N - 1 steps back", 0.5, lambda b, N: b[b.shape[0] - N],
                lambda b, N: b[:b.shape[0] - N + 1])
    monkeypatch.setitem(tasks.REGISTRY, "copy", copy)
    monkeypatch.setattr(tasks, "TASKS", tuple(tasks.REGISTRY))
    x, labels = make_batch("copy", [2, 4], 32, generator=make_generator(1))
    assert torch.equal(labels[1], x[-4, :, 0].long())
    for command in ("train", "score", "analyze", "retrain"):
        parser = build_parser()
        extra = {"train": [], "score": ["ck.pt"], "analyze": ["run"],
                 "retrain": ["ck.pt", "--N", "3", "--epochs", "1", "--out", "o"]}[command]
        assert parser.parse_args([command, *extra, "--task", "copy"]).task == "copy"


def test_curricula_table_and_aliases():
    assert CURRICULA == ("single", "multi", "sliding", "none")
    assert get_curriculum("cumulative").name == "multi" and get_curriculum("Single-Head").name == "single"
    with pytest.raises(ConfigError, match="curriculum: expected one of"):
        get_curriculum("random")
    for name in CURRICULA:                      # every entry drives the Curriculum
        cur = Curriculum(name, n_start=3, window=3, forget=2)
        assert len(cur.heads) == len(cur.Ns) and cur.num_heads >= 1
        cur.advance()
        assert cur.finished or cur.Ns[-1] > 3 + (2 if name == "sliding" else 0)


@pytest.mark.parametrize("ranges, kind", [
    ([(5, 5), (11, 11)], "single"), ([(2, 11)], "multi"), ([(2, 3), (2, 7)], "multi"),
    ([(2, 11), (7, 16)], "sliding"), ([(3, 7), (4, 6)], None), ([], None),
])
def test_curriculum_of_checkpoint_ranges(ranges, kind):
    assert curriculum_of(ranges) == kind


def test_a_new_curriculum_is_offered_everywhere(monkeypatch):
    pairs = curricula.CurriculumKind("pairs", "two new N's per pass", "pairs", (), first=lambda n, w: [n, n + 1],
                                     advance=lambda Ns, f: [Ns[-1] + 1, Ns[-1] + 2], heads=lambda Ns, n: [0, 1])
    monkeypatch.setitem(curricula.REGISTRY, "pairs", pairs)
    monkeypatch.setattr(curricula, "CURRICULA", tuple(curricula.REGISTRY))
    cur = Curriculum("pairs", n_start=2)
    cur.advance()
    assert cur.Ns == [4, 5] and cur.head_for_N == {4: 0, 5: 1}
    assert build_parser().parse_args(["train", "--curriculum", "pairs", "--out", "x"]).curriculum == "pairs"
    from timescale_kernels.experiments import config
    monkeypatch.setattr(config, "CURRICULA", curricula.CURRICULA)
    assert make_config("quick", curriculum="pairs", device="cpu").curriculum == "pairs"


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("lo,hi", [(2, 2), (2, 3), (2, 11), (5, 17), (1, 40)])
def test_labels_for_consecutive_Ns_equal_one_N_at_a_time(name, lo, hi):
    spec = get_task(name)
    g = torch.Generator().manual_seed(lo * 100 + hi)
    bits = (torch.rand(4 * hi + 1, 33, generator=g) < 0.5).to(torch.int64)
    Ns = list(range(lo, hi + 1))
    want = torch.stack([spec.labels(bits, n) for n in Ns])
    assert spec.labels_between is not None
    assert torch.equal(labels_for(name, bits, Ns), want)
    assert torch.equal(labels_for(name, bits, [lo, hi + 2]), torch.stack([spec.labels(bits, lo),
                                                                          spec.labels(bits, hi + 2)]))
