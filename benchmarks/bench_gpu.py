"""The triton backend against the GPU baselines, forward+backward and forward-only.

    python benchmarks/bench_gpu.py [--json PATH] [--budget-s S] [--shapes 100x256x500,...]

Rows, at each (T, B, H), I = 1, float32, timed in one process with triton.testing.do_bench (median):
  eager           the study's model as a lean loop: per step leaky_relu((1-a) h + a (x_t Wih^T + b_ih + h (W*mask)^T + b_hh))
  eager-study     the loop as the study's code writes it (input layer over all T, x[t] indexed per step)
  compile-cell    torch.compile of that step, the Python loop around it
  compile-loop    torch.compile of the whole loop (unrolled by dynamo; at (100, 256, 500) only)
  cuda-graph      the eager loop, forward and backward captured once in a CUDA graph, replayed
  cudnn           torch.nn.RNN(1, H, nonlinearity="tanh"), torch's defaults (cuDNN may use TF32)
  cudnn-fp32      the same with torch.backends.cudnn.allow_tf32 = False
  triton-fp32     timescale_kernels.leaky_rnn(..., backend="triton"), exact fp32 (the reference row)
  triton-tf32x3, triton-tf32, triton-bf16   the same with precision="tf32x3" / "tf32" / "bf16"
  triton-persistent-fp32, triton-persistent-tf32x3   the opt-in persistent column-split kernels
                  (TIMESCALE_KERNELS_TRITON_PERSISTENT=1), each timed in a subprocess with a timeout so
                  that a grid-barrier deadlock records an error instead of hanging the table
Ratios are baseline / triton-fp32. Floors per step are computed from the device's measured matmul
rate and L2 bandwidth (see floors()). A failing row records its error; the table goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DEVICE = "cuda"  # a smoke test may set "cpu" (with TRITON_INTERPRET=1) to exercise the code paths
SHAPES = ((100, 256, 500), (400, 256, 500), (1000, 64, 256), (100, 16, 500))
# Dynamo unrolls the loop: compile time grows with T, so the whole-loop compile runs at one shape.
COMPILE_LOOP_SHAPES = {(100, 256, 500)}
PERSISTENT_TIMEOUT_S = 60
# Seconds a row needs (cold compile included) before it may start near the deadline.
ROW_RESERVE_S = {"compile-cell": 60, "compile-loop": 180}


def make_problem(T, B, H, seed=0):
    """x (T, B, 1), h0 (B, H) and the leaf parameters, as the study initialises them."""
    g = torch.Generator().manual_seed(seed)
    bound = H ** -0.5
    p = {"weight_ih": (torch.rand(H, 1, generator=g) * 2 - 1) * bound,
         "weight_hh": (torch.rand(H, H, generator=g) * 2 - 1) * bound,
         "bias_ih": (torch.rand(H, generator=g) * 2 - 1) * bound,
         "bias_hh": (torch.rand(H, generator=g) * 2 - 1) * bound,
         "tau": 1.0 + 9.0 * torch.rand(H, generator=g)}
    p = {k: v.to(DEVICE).requires_grad_() for k, v in p.items()}
    x = torch.randn(T, B, 1, generator=g).to(DEVICE)
    h0 = torch.zeros(B, H, device=DEVICE)
    return x, h0, p


def study_step(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, tau, mask):
    alpha = 1.0 / torch.clamp(tau, min=1.0)
    pre = x_t @ weight_ih.T + bias_ih + h @ (weight_hh * mask).T + bias_hh
    return F.leaky_relu((1 - alpha) * h + alpha * pre)


def eager_loop(x, h0, p, mask, step=study_step):
    h, outputs = h0, []
    for x_t in x:
        h = step(x_t, h, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"], mask)
        outputs.append(h)
    return torch.stack(outputs)


def triton_op(x, h0, p, precision):
    try:
        from timescale_kernels import leaky_rnn
    except ImportError:
        leaky_rnn = None
    if leaky_rnn is not None:
        out, _ = leaky_rnn(x, h0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"],
                           nonlinearity="leaky_relu", placement="outside", backend="triton", precision=precision)
        return out
    from timescale_kernels.ops import core  # noqa: F401  (registers the op)
    T, B, _ = x.shape
    H = p["weight_hh"].shape[0]
    u = torch.addmm(p["bias_ih"] + p["bias_hh"], x.reshape(T * B, -1), p["weight_ih"].t()).view(T, B, H)
    w = p["weight_hh"].masked_fill(torch.eye(H, dtype=torch.bool, device=x.device), 0.0)
    alpha = (1.0 / torch.clamp(p["tau"], min=1.0)).contiguous()
    out, _ = torch.ops.timescale_kernels.recurrence(u, h0, w, alpha, "leaky_relu", "outside", "triton", precision,
                                                    torch.is_grad_enabled())
    return out


def _graphed(fn, params, train):
    """fn captured in a CUDA graph (the documented whole-network capture: warm up on a side stream,
    grads allocated inside the capture); returns the replay."""
    def body():
        for q in params:
            q.grad = None
        if train:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    for q in params:
        q.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if train:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
    return graph.replay


def study_loop(x, h0, p, mask):
    """The loop as the study's code writes it: the input layer over all T at once, then x[t]
    indexed per step out of that (T, B, H) tensor (its backward builds a zero (T, B, H) gradient
    per step), tau clamped twice per step."""
    w = p["weight_hh"] * mask
    inp = x @ p["weight_ih"].T + p["bias_ih"]
    h, outputs = h0, []
    for t in range(x.shape[0]):
        h = F.leaky_relu((1 - 1 / torch.clamp(p["tau"], min=1.0)) * h
                         + (h @ w.T + p["bias_hh"] + inp[t]) / torch.clamp(p["tau"], min=1.0))
        outputs.append(h)
    return torch.stack(outputs)


def build_rows(T, B, H):
    """[(name, fn, grads)] in measuring order: the backend's rows first, torch.compile's last
    (their compile time is what a deadline cuts). fn produces the output (T, B, H); the
    strings 'graph' and 'cudnn-fp32' name rows that measure_row builds itself."""
    x, h0, p = make_problem(T, B, H)
    params = list(p.values())
    mask = 1.0 - torch.eye(H, device=DEVICE)
    rnn = torch.nn.RNN(1, H, nonlinearity="tanh").to(DEVICE)
    rows = [(f"triton-{prec}", (lambda prec=prec: triton_op(x, h0, p, prec)), params)
            for prec in ("fp32", "tf32x3", "tf32", "bf16")]
    rows += [(f"triton-persistent-{prec}", ("persistent", prec), None) for prec in ("fp32", "tf32x3")]
    rows += [("cudnn", lambda: rnn(x, h0[None])[0], list(rnn.parameters())),
             ("cudnn-fp32", "cudnn-fp32", list(rnn.parameters())),
             ("eager", lambda: eager_loop(x, h0, p, mask), params),
             ("eager-study", lambda: study_loop(x, h0, p, mask), params),
             ("cuda-graph", "graph", None)]
    cell = torch.compile(study_step, dynamic=False)
    rows.append(("compile-cell", lambda: eager_loop(x, h0, p, mask, step=cell), params))
    if (T, B, H) in COMPILE_LOOP_SHAPES:
        whole = torch.compile(eager_loop, dynamic=False)
        rows.append(("compile-loop", lambda: whole(x, h0, p, mask), params))
    return rows, (x, h0, p, mask, rnn)


def time_ms(fn, grads):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median")


def measure_row(name, fn, grads, problem):
    """{'fwd_bwd_ms', 'fwd_ms'} for one row; a mode that fails records its error."""
    x, h0, p, mask, rnn = problem
    if isinstance(fn, tuple) and fn[0] == "persistent":
        return persistent_row(x.shape[0], x.shape[1], p["weight_hh"].shape[0], fn[1])
    out = {}
    for mode, train in (("fwd_bwd_ms", True), ("fwd_ms", False)):
        try:
            if fn == "graph":
                run = _graphed(lambda: eager_loop(x, h0, p, mask), list(p.values()), train)
            elif fn == "cudnn-fp32":
                def run(train=train):
                    previous = torch.backends.cudnn.allow_tf32
                    torch.backends.cudnn.allow_tf32 = False
                    try:
                        with torch.set_grad_enabled(train):
                            y = rnn(x, h0[None])[0]
                            if train:
                                y.sum().backward()
                    finally:
                        torch.backends.cudnn.allow_tf32 = previous
            else:
                def run(fn=fn, train=train):
                    with torch.set_grad_enabled(train):
                        y = fn()
                        if train:
                            y.sum().backward()
            run()  # compile (triton, dynamo) outside do_bench, whose first calls size its repeat count
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            out[mode] = time_ms(run, grads)
        except Exception as err:  # one failing baseline must not end the table
            out[mode] = None
            out[f"{mode}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return out


def persistent_row(T, B, H, precision, timeout=PERSISTENT_TIMEOUT_S):
    """The triton-{precision} row with the persistent kernels, measured by this script in a child
    process (--persistent-row) that a deadlocked grid barrier cannot take down with the table."""
    env = dict(os.environ, TIMESCALE_KERNELS_TRITON_PERSISTENT="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    try:
        run = subprocess.run([sys.executable, __file__, "--persistent-row", f"{T}x{B}x{H}:{precision}"],
                             env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"fwd_bwd_ms": None, "fwd_ms": None, "error": f"timed out after {timeout} s (deadlock?)"}
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        return {"fwd_bwd_ms": None, "fwd_ms": None, "error": run.stderr[-300:]}
    return json.loads(lines[-1])


def _persistent_child(spec):
    """Child side of persistent_row: prints one JSON row, with which path ran and the error vs triton-fp32."""
    from timescale_kernels.ops import triton_persistent, triton_recurrence
    shape, precision = spec.split(":")
    T, B, H = (int(v) for v in shape.split("x"))
    x, h0, p = make_problem(T, B, H)
    row = measure_row(f"triton-persistent-{precision}", lambda: triton_op(x, h0, p, precision), list(p.values()),
                      (x, h0, p, None, None))
    row["path"] = triton_persistent.last_launch
    with torch.no_grad():
        got = triton_op(x, h0, p, precision)
        triton_recurrence.persistent = False
        want = triton_op(x, h0, p, "fp32")
    row["rel_err_vs_triton_fp32"] = ((got - want).norm() / want.norm()).item()
    print(json.dumps(row))


def measured_rates():
    """Achieved matmul rates (FLOP/s) in fp32, tf32, bf16 and L2 read+write bandwidth (B/s)."""
    rates = {}
    n = 8192
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        aa, bb = a.to(dtype), b.to(dtype)
        rates[f"{name}_flops"] = 2 * n ** 3 / (time_ms(lambda: aa @ bb, None) * 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = previous
    # A copy small enough to stay in L2 (L2 is 50 MB on an H100): read + write per byte copied.
    size = min(8 << 20, torch.cuda.get_device_properties(0).L2_cache_size // 4)
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    import triton.testing
    copies = 20  # do_bench flushes L2 before each call: the first copy loads src, the rest hit L2

    def copy():
        for _ in range(copies):
            dst.copy_(src)
    ms = triton.testing.do_bench(copy, warmup=25, rep=100, return_mode="median")
    rates["l2_bytes_per_s"] = 2 * size * copies / (ms * 1e-3)
    return rates


def floors(T, B, H, rates, sms, block_b=16):
    """Per-step lower bounds (microseconds). Whole-device: 2 B H^2 FLOPs forward (about 2x that backward,
    the dW GEMM included) at the measured fp32 matmul rate, and W (H^2 * 4 bytes) from L2. Per
    program (this backend: one program per 16-row batch tile, each streaming all of W every step):
    the same W through one SM's share of L2 bandwidth, and 2 * 16 * H^2 FLOPs on one SM's share of
    the fp32 rate (the exact mode's dot runs on FMA units). One SM's share of L2 bandwidth
    (aggregate / SMs) is pessimistic when few SMs are busy: an SM's own L2 port is wider."""
    w_bytes = H * H * 4
    f = {
        "fwd_flop_us": 2 * B * H * H / rates["fp32_flops"] * 1e6,
        "fwd_flop_tf32_us": 2 * B * H * H / rates["tf32_flops"] * 1e6,
        "fwd_bwd_flop_us": 3 * 2 * B * H * H / rates["fp32_flops"] * 1e6,
        "w_from_l2_us": w_bytes / rates["l2_bytes_per_s"] * 1e6,
        "per_program_w_us": w_bytes / (rates["l2_bytes_per_s"] / sms) * 1e6,
        "per_program_fma_us": 2 * min(B, block_b) * H * H / (rates["fp32_flops"] / sms) * 1e6,
    }
    # This backend's own bound: each program must both stream W and do its FMAs every step.
    f["design_fwd_us"] = max(f["per_program_w_us"], f["per_program_fma_us"])
    return f


def run(shapes=SHAPES, deadline=None, log=print, sweep=True, checkpoint=None):
    """The whole table as a dict. Order: every shape's non-compile rows, the launch-config sweep,
    then the torch.compile rows (whose compile time cannot be interrupted: a row is skipped when
    less than its ROW_RESERVE_S remains before deadline, a time.monotonic() value).
    checkpoint(results) is called before the compile rows, so a caller can save partial results."""
    results = {"shapes": []}
    # Each shape and grad mode recompiles the compiled rows; past dynamo's limit they would
    # silently run eagerly.
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        results.update(device=props.name, sms=props.multi_processor_count, l2_bytes=props.L2_cache_size)
    try:
        results["rates"] = measured_rates()
    except Exception as err:
        results["rates_error"] = repr(err)
    built = []
    for T, B, H in shapes:
        entry = {"T": T, "B": B, "H": H, "rows": {}}
        results["shapes"].append(entry)
        try:
            built.append((entry, *build_rows(T, B, H)))
        except Exception as err:
            entry["error"] = repr(err)

    def measure_pass(compile_pass):
        for entry, rows, problem in built:
            for name, fn, grads in rows:
                if name.startswith("compile") != compile_pass:
                    continue
                if deadline is not None and time.monotonic() + ROW_RESERVE_S.get(name, 0) > deadline:
                    entry["rows"][name] = {"skipped": "time budget"}
                    continue
                start = time.monotonic()
                entry["rows"][name] = measure_row(name, fn, grads, problem)
                log(f"  T={entry['T']} B={entry['B']} H={entry['H']} {name:13s} {entry['rows'][name]} "
                    f"({time.monotonic() - start:.0f}s)")
            summarise(entry, problem, results)

    measure_pass(False)
    if sweep:
        results["sweep"] = sweep_configs(deadline=deadline)
    if checkpoint is not None:
        checkpoint(results)
    measure_pass(True)
    return results


def summarise(entry, problem, results):
    """Ratios baseline / triton-fp32, ms per step, floors, and the backend's error vs the eager loop."""
    T = entry["T"]
    try:
        x, h0, p, mask, _ = problem
        with torch.no_grad():
            want = eager_loop(x, h0, p, mask)
            got = triton_op(x, h0, p, "fp32")
        entry["triton_rel_err_vs_eager"] = ((got - want).norm() / want.norm()).item()
    except Exception as err:
        entry["triton_rel_err_vs_eager"] = repr(err)
    ref = entry["rows"].get("triton-fp32", {})
    for mode in ("fwd_bwd_ms", "fwd_ms"):
        base = ref.get(mode)
        entry[f"ratio_{mode[:-3]}"] = {n: r[mode] / base for n, r in entry["rows"].items() if base and r.get(mode)}
        entry[f"per_step_{mode}"] = {n: r[mode] / T for n, r in entry["rows"].items() if r.get(mode)}
    if "rates" in results:
        entry["floor_per_step"] = floors(T, entry["B"], entry["H"], results["rates"], results["sms"])


def sweep_configs(T=400, B=256, H=500, deadline=None):
    """fwd+bwd ms of the triton backend under alternative launch configs (not yet tuned on a GPU)."""
    from timescale_kernels.ops import triton_recurrence as tr
    x, h0, p = make_problem(T, B, H)
    configs = [tr.GPU_CONFIG, tr.LaunchConfig(16, 64, 64, 4, 2), tr.LaunchConfig(16, 32, 64, 4, 2),
               tr.LaunchConfig(16, 64, 128, 8, 2), tr.LaunchConfig(16, 128, 64, 8, 2),
               tr.LaunchConfig(16, 64, 64, 8, 3), tr.LaunchConfig(32, 64, 64, 8, 2)]
    out, default = [], tr.GPU_CONFIG
    with torch.no_grad():
        want = triton_op(x, h0, p, "fp32")
    try:
        for cfg in configs:
            for precision in ("fp32", "tf32x3", "tf32"):
                if deadline is not None and time.monotonic() + 20 > deadline:  # 20 s: a cold compile
                    return out
                tr.GPU_CONFIG = cfg
                row = {"config": dataclasses.asdict(cfg), "precision": precision}
                try:
                    def step(prec=precision):
                        triton_op(x, h0, p, prec).sum().backward()
                    step()  # compile first
                    row["fwd_bwd_ms"] = time_ms(step, list(p.values()))
                    with torch.no_grad():  # a config must not change the result
                        got = triton_op(x, h0, p, precision)
                    row["rel_err_vs_default_fp32"] = ((got - want).norm() / want.norm()).item()
                except Exception as err:
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                out.append(row)
    finally:
        tr.GPU_CONFIG = default
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--shapes", default=None, help="e.g. 100x256x500,400x256x500")
    parser.add_argument("--persistent-row", default=None, help=argparse.SUPPRESS)  # TxBxH:precision
    args = parser.parse_args()
    if args.persistent_row:
        return _persistent_child(args.persistent_row)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device")
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    deadline = time.monotonic() + args.budget_s
    results = run(shapes, deadline)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
