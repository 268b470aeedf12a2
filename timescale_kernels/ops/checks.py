"""Argument checks at the public boundary: each error names the argument, what was expected
and what came."""
from __future__ import annotations

import torch

from .choices import NONLINEARITIES, PLACEMENTS, PRECISIONS

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")


def check_tensor(name: str, value, ndims, shape=None) -> None:
    """value must be a floating tensor with a rank in ndims and, where shape gives a size, that size."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype (float32, float64, float16, bfloat16); got {value.dtype}")
    if value.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a {want} tensor; got shape {tuple(value.shape)}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, value.shape)):
            if want is not None and want != got:
                raise ValueError(
                    f"{name}: expected shape {_fmt(shape)}; got {tuple(value.shape)} (dimension {axis} differs)"
                )


def _fmt(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_op_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity, placement, precision):
    """Validates leaky_rnn's arguments; returns (T, B, I, H)."""
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    check_choice("placement", placement, PLACEMENTS)
    check_choice("precision", precision, PRECISIONS)
    check_tensor("weight_hh", weight_hh, (2,))
    hidden = weight_hh.shape[0]
    check_tensor("weight_hh", weight_hh, (2,), (hidden, hidden))
    check_tensor("input", input, (3,))
    steps, batch, in_size = input.shape
    if steps == 0:
        raise ValueError(f"input: expected at least one time step (T >= 1); got shape {tuple(input.shape)}")
    if hidden == 0:
        raise ValueError("weight_hh: expected hidden size H >= 1; got shape (0, 0)")
    check_tensor("hx", hx, (2,), (batch, hidden))
    check_tensor("weight_ih", weight_ih, (2,), (hidden, in_size))
    for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is not None:
            check_tensor(name, bias, (1,), (hidden,))
    check_tensor("tau", tau, (0, 1))
    if tau.dim() == 1 and tau.shape[0] != hidden:
        raise ValueError(f"tau: expected shape ({hidden},) or a 0-dim tensor; got {tuple(tau.shape)}")
    named = [("input", input), ("hx", hx), ("weight_ih", weight_ih), ("weight_hh", weight_hh),
             ("bias_ih", bias_ih), ("bias_hh", bias_hh), ("tau", tau)]
    for name, t in named[1:]:
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise TypeError(f"{name}: expected dtype {input.dtype} (the input's); got {t.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name}: expected device {input.device} (the input's); got {t.device}")
    _check_finite_tau(tau)
    return steps, batch, in_size, hidden


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may read t's values: not while torch.compile traces (they are not known then),
    nor when t carries a torch.func.vmap batch dimension (one Python bool cannot answer for all of its
    networks; the kernels check lengths themselves)."""
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return False
        t = functorch.get_unwrapped(t)
    return True


# One C++ pass over a float or double CPU tensor saying whether all its values are finite, set by
# ops.cpu once the compiled kernels load (torch.isfinite(t).all() is several ATen calls: about 50 us
# of a 64-neuron call's 700).
_cpu_all_finite = None


def use_cpu_all_finite(op) -> None:
    """Called by ops.cpu with torch.ops.timescale_kernels_cpu.all_finite once it is registered."""
    global _cpu_all_finite
    _cpu_all_finite = op


def _check_finite_tau(tau: torch.Tensor) -> None:
    """On the CPU a plain check; on an accelerator an asynchronous assert, so that no call waits
    for the device; skipped while torch.compile traces (the value is not known then)."""
    if not values_readable(tau):
        return
    plain = tau.detach()
    if (_cpu_all_finite is not None and type(plain) is torch.Tensor and plain.device.type == "cpu"
            and plain.dtype in (torch.float32, torch.float64)
            and not torch._C._functorch.is_functorch_wrapped_tensor(plain) and _cpu_all_finite(plain)):
        return  # (a plain CPU tensor with storage: not a subclass, not inside torch.func.grad)
    finite = torch.isfinite(plain)
    if tau.device.type == "cpu":
        if not finite.all():
            bad = plain.flatten()[~finite.flatten()][:3].tolist()
            raise ValueError(f"tau: expected finite values; got {bad}")
    else:
        torch._assert_async(finite.all(), "tau: expected finite values; got a NaN or an infinity")


def check_lengths(lengths, steps: int, batch: int, device: torch.device) -> torch.Tensor:
    """lengths (B,) of integers in 1..T, on the input's device or the CPU; returns it as int64 on device."""
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths: expected a torch.Tensor of shape ({batch},); got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer dtype; got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths: expected shape ({batch},) (one length per batch row); got {tuple(lengths.shape)}")
    if lengths.device != device and lengths.device.type != "cpu":
        raise ValueError(f"lengths: expected device {device} (the input's) or cpu; got {lengths.device}")
    lengths = lengths.to(device=device, dtype=torch.int64)
    if not values_readable(lengths) or batch == 0:
        return lengths
    if device.type == "cpu":
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > steps:
            raise ValueError(f"lengths: expected values in 1..{steps} (T); got values from {low} to {high}")
    else:  # as for tau: an asynchronous assert, so that no call waits for the device
        torch._assert_async(((lengths >= 1) & (lengths <= steps)).all(),
                            f"lengths: expected values in 1..{steps} (T)")
    return lengths


def check_drive_noise(drive_noise, input: torch.Tensor, hidden: int) -> None:
    """drive_noise (T, B, H), the input's dtype and device."""
    steps, batch, _ = input.shape
    check_tensor("drive_noise", drive_noise, (3,), (steps, batch, hidden))
    if drive_noise.dtype != input.dtype:
        raise TypeError(f"drive_noise: expected dtype {input.dtype} (the input's); got {drive_noise.dtype}")
    if drive_noise.device != input.device:
        raise ValueError(f"drive_noise: expected device {input.device} (the input's); got {drive_noise.device}")


# Each tensor argument's rank for one network; with one more leading dimension it holds K networks.
# tau is (H,) or 0-dim for one network (or all), (K, H) or (K, 1) per network.
NETWORK_RANKS = {"input": 3, "hx": 2, "weight_ih": 2, "weight_hh": 2, "bias_ih": 1, "bias_hh": 1, "tau": 1,
                 "lengths": 1, "drive_noise": 3}
_PER_NETWORK_SHAPES = {"input": "(K, T, B, I)", "hx": "(K, B, H)", "weight_ih": "(K, H, I)",
                       "weight_hh": "(K, H, H)", "bias_ih": "(K, H)", "bias_hh": "(K, H)", "tau": "(K, H)",
                       "lengths": "(K, B)", "drive_noise": "(K, T, B, H)"}


def network_count(tensors: dict) -> int | None:
    """K, the number of networks, when any argument carries a leading network dimension (one more
    than NETWORK_RANKS gives), else None (one network). Raises a ValueError naming the argument when
    a tensor has two dimensions too many, or when the per-network tensors disagree on K."""
    count, first = None, None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        rank = NETWORK_RANKS[name]
        if t.dim() > rank + 1:
            raise ValueError(f"{name}: expected {rank}-D (shared by all networks) or {rank + 1}-D "
                             f"{_PER_NETWORK_SHAPES[name]} (one per network); got shape {tuple(t.shape)}")
        if t.dim() == rank + 1:
            if count is not None and t.shape[0] != count:
                raise ValueError(f"{name}: expected {count} networks (K) in its first dimension, as {first} has "
                                 f"({first} {tuple(tensors[first].shape)}); got shape {tuple(t.shape)}")
            count, first = t.shape[0], name
    return count


def per_network(tensors: dict, count: int) -> dict:
    """Each tensor with its leading network dimension K: the per-network ones as they are, the shared
    ones expanded (a view: autograd sums their gradient over the networks); None stays None. tau
    becomes (K, H) or (K, 1), lengths (K, B)."""
    out = {}
    for name, t in tensors.items():
        if t is None or not isinstance(t, torch.Tensor):
            out[name] = t
        elif t.dim() == NETWORK_RANKS[name] + 1:
            out[name] = t
        elif name == "tau" and t.dim() == 0:
            out[name] = t.reshape(1, 1).expand(count, 1)
        else:
            out[name] = t.unsqueeze(0).expand(count, *t.shape)
    return out


def check_network_args(tensors: dict, nonlinearity, placement, precision) -> tuple[int, int, int, int]:
    """Validates an ensemble's arguments (each with its leading K, see per_network) as check_op_args
    does one network's, on network 0 (the shapes past K are the same for all); returns (T, B, I, H)."""
    t = tensors
    count = t["input"].shape[0]
    tau = t["tau"]
    if tau.dim() != 2:
        raise ValueError(f"tau: expected (H,), 0-dim, (K, H) or (K, 1); got shape {tuple(tau.shape)}")
    try:
        first = [None if t[name] is None else t[name][0] for name in
                 ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        steps, batch, in_size, hidden = check_op_args(*first, tau[0] if tau.shape[1] != 1 else tau[0, 0],
                                                      nonlinearity, placement, precision)
    except ValueError as err:
        raise ValueError(f"{err} (the shape of one network, of K = {count})") from None
    if t["drive_noise"] is not None:
        try:
            check_drive_noise(t["drive_noise"][0], first[0], hidden)
        except ValueError as err:
            raise ValueError(f"{err} (the shape of one network, of K = {count})") from None
    _check_finite_tau(tau)
    return steps, batch, in_size, hidden


def check_network_lengths(lengths, count: int, steps: int, batch: int, device: torch.device) -> torch.Tensor:
    """lengths (B,) shared or (K, B) per network, integers in 1..T; returns (K, B) int64 on device."""
    if isinstance(lengths, torch.Tensor) and lengths.dim() == 2:
        if lengths.shape[1] != batch:
            raise ValueError(f"lengths: expected shape ({count}, {batch}) (K, B) or ({batch},); "
                             f"got {tuple(lengths.shape)}")
        return check_lengths(lengths.flatten(), steps, count * batch, device).view(count, batch)
    if isinstance(lengths, torch.Tensor) and lengths.dim() != 1:
        raise ValueError(f"lengths: expected shape ({batch},) or ({count}, {batch}) (K, B); got {tuple(lengths.shape)}")
    # contiguous: the kernels find network k's lengths at k * B
    return check_lengths(lengths, steps, batch, device).unsqueeze(0).expand(count, batch).contiguous()
