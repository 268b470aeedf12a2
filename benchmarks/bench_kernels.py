"""Two groups of `make gpu-check` that time the kernels themselves (see bench_gpu.py):

analysis    the analysis simulation, forward only, at (T, B, H) = (100,500, 10, 500)
defect-ab   the forward kernel with W read through its unit stride against a contiguous W^T
"""
from __future__ import annotations

import contextlib
import time

import torch

from gpu_results import FAMILIES, call_with_family, deadline_passed, load, record, short_error, sync, time_ms


def seconds(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def analysis_model(hidden, device):
    from timescale_kernels.models import MemoryNet
    torch.manual_seed(0)
    return MemoryNet("leaky", hidden, num_heads=1).to(device)


def op_forward(model, x, h0, precision, family):
    """The core over all of x without gradients, one kernel family: h (T, B, H)."""
    from timescale_kernels import leaky_rnn
    rnn = model.rnn
    with torch.no_grad():
        return call_with_family(leaky_rnn, family, x, h0, rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh,
                                rnn.tau, backend="triton", precision=precision)[0]


def run_analysis(cfg, results, deadline):
    """results['analysis'][row] = {'probe_steps', 'probe_s', 'seconds_at_full' (measured when it fits,
    else projected from the probe), 'measured_full'}."""
    from timescale_kernels.analysis import simulate
    device, (steps, trials, hidden) = cfg["device"], cfg["analysis"]
    model = analysis_model(hidden, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(steps, trials, 1, generator=gen, device=device) < 0.5).float()
    h0 = torch.zeros(trials, hidden, device=device)
    probe = cfg["analysis_probe_steps"]
    for family, prec in [(family, prec) for family in FAMILIES for prec in ("fp32", "tf32x3")]:
        name = f"op {family} {prec}"
        if deadline_passed(deadline, 10):
            record(results, ["analysis", name], {"skipped": "group time limit"})
            continue
        row = {"steps": steps, "trials": trials, "hidden": hidden, "probe_steps": probe}
        try:
            op_forward(model, x[:probe], h0, prec, family)  # compile
            row["probe_s"] = seconds(lambda: op_forward(model, x[:probe], h0, prec, family), device)
            projected = row["probe_s"] * steps / probe
            fits = deadline is None or time.monotonic() + 2 * projected + 5 < deadline
            row["measured_full"] = bool(fits and projected < 5)
            row["seconds_at_full"] = (seconds(lambda: op_forward(model, x, h0, prec, family), device)
                                      if row["measured_full"] else projected)
            row["us_per_step"] = row["seconds_at_full"] / steps * 1e6
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["analysis", name], row)
        print(f"analysis {name}: {row}", flush=True)
    row = {"steps": steps, "trials": trials, "hidden": hidden}
    first = load(results).get("analysis", {}).get("op default fp32", {}).get("seconds_at_full", 0.0)
    if deadline_passed(deadline, 10 + 1.5 * first):
        record(results, ["analysis", "analysis.simulate default"], {"skipped": "group time limit"})
    else:
        try:
            burn_in = 500 if steps > 1000 else 0  # the study's 500 of its 100,500 steps
            row["seconds"] = seconds(lambda: simulate(
                model, trials=trials, steps=steps - burn_in, burn_in=burn_in, backend="triton",
                max_lag=min(30, steps - burn_in - 1),
                generator=torch.Generator(device=device).manual_seed(0)), device)
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["analysis", "analysis.simulate default"], row)
        print(f"analysis simulate: {row}", flush=True)


@contextlib.contextmanager
def launches_recorded():
    """Records (kernel, grid, args, kwargs) of every Triton launch inside the block (launching it too)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    records = []
    saved = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def recorder(original):
        def run(self, *args, grid, warmup, **kwargs):
            records.append((self, grid, args, dict(kwargs)))
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return run
    try:
        for cls, original in saved.items():
            cls.run = recorder(original)
        yield records
    finally:
        for cls, original in saved.items():
            cls.run = original


def w_variants(kernel, args, w):
    """{'strided W': args, 'contiguous W^T': args} for a forward kernel whose operand is addressed
    M[k, n] = w_ptr + k * stride_wk + n * stride_wn and equals W^T."""
    names = list(kernel.arg_names)
    missing = {"w_ptr", "stride_wk", "stride_wn"} - set(names)
    if missing:
        raise ValueError(f"kernel {kernel.fn.__name__}: no argument {sorted(missing)}")
    iw, ik, in_ = names.index("w_ptr"), names.index("stride_wk"), names.index("stride_wn")
    hidden = w.shape[0]
    operand = args[iw] if isinstance(args[iw], torch.Tensor) and args[iw].shape == w.shape else None
    dtype = operand.dtype if operand is not None else w.dtype
    out = {}
    for label, m, strides in (("strided W", w.to(dtype).contiguous(), (1, hidden)),
                              ("contiguous W^T", w.to(dtype).t().contiguous(), (hidden, 1))):
        new = list(args)
        new[iw], new[ik], new[in_] = m, *strides
        out[label] = new
    return out


def ab_launch(kernel, grid, args, kwargs):
    """A callable that relaunches the kernel (zeroing a grid-barrier counter first)."""
    names = list(kernel.arg_names)
    counter = args[names.index("counter_ptr")] if "counter_ptr" in names else None

    def launch():
        if counter is not None:
            counter.zero_()
        kernel[grid](*args, **kwargs)
    return launch


def run_defect_ab(cfg, results, deadline):
    """results['defect-ab'][family] = {'strided W': us/step, 'contiguous W^T': us/step, 'same_result'}."""
    from bench_gpu import make_problem, triton_op
    T, B, H = cfg["shapes"][0]
    device = cfg["device"]
    x, h0, p = make_problem(T, B, H, device)
    w = (p["weight_hh"] * (1 - torch.eye(H, device=device))).detach()
    for family in FAMILIES:
        if deadline_passed(deadline, 10):
            record(results, ["defect-ab", family], {"skipped": "group time limit"})
            continue
        row = {"T": T, "B": B, "H": H, "precision": "fp32"}
        try:
            with torch.no_grad(), launches_recorded() as launches:
                triton_op(x, h0, p, "fp32", family)
            kernel, grid, args, kwargs = next(r for r in launches if "fwd" in r[0].fn.__name__)
            row["kernel"] = kernel.fn.__name__
            outputs = {}
            for label, new_args in w_variants(kernel, args, w).items():
                launch = ab_launch(kernel, grid, new_args, kwargs)
                launch()
                sync(device)
                outputs[label] = new_args[list(kernel.arg_names).index("h_ptr")].clone()
                row[f"{label} us/step"] = time_ms(launch, device) * 1e3 / T
            a, b = outputs.values()
            row["max_abs_difference"] = (a - b).abs().max().item()
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["defect-ab", family], row)
        print(f"defect-ab {family}: {row}", flush=True)
