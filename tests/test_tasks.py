"""The memory tasks: labels against their definitions, T range, bit rates, seeds, shapes, bad input."""
import pytest
import torch

from timescale_kernels.tasks import TASKS, check_Ns, make_batch, make_generator, sequence_length_range


def _bits(x):
    return x[..., 0].to(torch.int64)  # (T, B)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_is_brute_force_parity_of_last_N_bits(seed):
    Ns = [1, 2, 3, 5, 8]
    x, labels = make_batch("parity", Ns, 64, generator=make_generator(seed))
    bits = _bits(x)
    for row, n in enumerate(Ns):
        for b in range(bits.shape[1]):
            ones = sum(int(bits[t, b]) for t in range(bits.shape[0] - n, bits.shape[0]))
            assert int(labels[row, b]) == ones % 2


def test_dms_matches_its_definition():
    Ns = [1, 2, 4, 7]
    x, labels = make_batch("dms", Ns, 128, generator=make_generator(3))
    bits = _bits(x)
    steps = bits.shape[0]
    for row, n in enumerate(Ns):
        for b in range(bits.shape[1]):
            assert int(labels[row, b]) == int(bits[steps - n, b] == bits[steps - 1, b])
    assert labels[0].all()  # N = 1 compares the last bit with itself


@pytest.mark.parametrize("task", TASKS)
def test_T_covers_the_study_range(task):
    Ns = [2, 3]
    low, high = sequence_length_range(Ns)
    assert (low, high) == (5, 13)  # max(Ns) + 2 .. 4 max(Ns) + 1
    gen = make_generator(0)
    lengths = {make_batch(task, Ns, 2, generator=gen)[0].shape[0] for _ in range(400)}
    assert lengths == set(range(low, high + 1))


def test_parity_bit_rate_varies_per_sequence_and_dms_is_balanced():
    x, _ = make_batch("parity", [2], 512, generator=make_generator(0), length=400)
    rates = x[..., 0].mean(0)  # per sequence
    assert rates.std() > 0.2 and rates.min() < 0.1 and rates.max() > 0.9
    x, _ = make_batch("dms", [2], 512, generator=make_generator(0), length=400)
    rates = x[..., 0].mean(0)
    assert (rates - 0.5).abs().max() < 0.12


@pytest.mark.parametrize("task", TASKS)
def test_reproducible_from_a_seed(task):
    a = make_batch(task, [2, 3, 4], 32, generator=make_generator(7))
    b = make_batch(task, [2, 3, 4], 32, generator=make_generator(7))
    c = make_batch(task, [2, 3, 4], 32, generator=make_generator(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape != c[0].shape or not torch.equal(a[0], c[0])


@pytest.mark.parametrize("task", TASKS)
def test_shapes_and_dtypes(task):
    x, labels = make_batch(task, [2, 5], 16, generator=make_generator(0), length=21)
    assert x.shape == (21, 16, 1) and x.dtype == torch.float32
    assert labels.shape == (2, 16) and labels.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0} and set(labels.unique().tolist()) <= {0, 1}
    assert x.device.type == "cpu"


def test_check_Ns():
    assert check_Ns(3) == [3]
    assert check_Ns([2, 3]) == [2, 3]
    for bad in ([], [0], [2, -1], [True], [2.0], "2", None):
        with pytest.raises(ValueError, match="Ns"):
            check_Ns(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "sum"}, "task"),
    ({"Ns": []}, "Ns"),
    ({"Ns": [0]}, "Ns"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"length": 3}, "length"),  # shorter than max(Ns) = 4
])
def test_bad_input(kwargs, match):
    args = {"task": "parity", "Ns": [2, 4], "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_batch(args.pop("task"), args.pop("Ns"), args.pop("batch_size"), **args)
