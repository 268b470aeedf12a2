"""The triton backend against the GPU baselines: the benchmark groups of `make gpu-check`.

    python benchmarks/bench_gpu.py GROUP --results PATH [--dry-run] [--budget-s S]

GROUP (each writes results[GROUP] in the JSON at PATH, rewritten after every measurement):
  table       per (T, B, H): fwd and fwd+bwd ms of the default kernel family in each precision and of
              the baselines: eager-study (the loop as the study writes it: input layer over all T, x[t]
              indexed out of a tensor that needs a gradient), eager (the same model, lean),
              cuda-graph (the lean loop captured once, replayed), cudnn (nn.RNN tanh, torch's
              defaults) and cudnn-fp32 (allow_tf32 off); peak memory of each fwd+bwd
  persistent  the persistent kernel family in each precision (its own group: a hang costs only it)
  torch-compile  torch.compile of the study's step, the Python loop around it
  analysis    the analysis simulation: forward only, B = 10 trials, H = 500, 100,500 steps, per family
              and precision (timed over a probe first; the full run only when it fits), and
              analysis.simulate with its statistics
  defect-ab   the forward kernel launched as the launcher launches it, with W read through its unit
              stride (M[k, n] = W[n, k]) against a contiguous copy of W^T, per family
  ensemble    K networks in one call (the network a grid axis: K = 64 of (100, 64, 64), K = 4 of
              (100, 256, 500)) against the same networks one call each and torch.func.vmap over the
              eager loop (what PyTorch's model-ensembling idiom runs without a vmap rule)
  dropin      the modules at the second shape (T = 100): LeakyRNN (triton, tanh, fp32) against
              torch.nn.RNN (cuDNN, tanh; torch's defaults and allow_tf32 off), one layer, and two
              layers bidirectional with nn.RNN's weights
--dry-run runs the same code on the CPU at tiny shapes under the Triton interpreter (timings
meaningless; it rehearses the command and its output).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_results import (PRECISIONS, deadline_passed, family_pinned, peak_memory, record,  # noqa: E402
                         settings, short_error, sync, time_ms)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def make_problem(T, B, H, device, seed=0):
    """x (T, B, 1), h0 (B, H) and the leaf parameters (dict), initialised as the study does."""
    g = torch.Generator().manual_seed(seed)
    bound = H ** -0.5
    p = {"weight_ih": (torch.rand(H, 1, generator=g) * 2 - 1) * bound,
         "weight_hh": (torch.rand(H, H, generator=g) * 2 - 1) * bound,
         "bias_ih": (torch.rand(H, generator=g) * 2 - 1) * bound,
         "bias_hh": (torch.rand(H, generator=g) * 2 - 1) * bound,
         "tau": 1.0 + 9.0 * torch.rand(H, generator=g)}
    p = {k: v.to(device).requires_grad_() for k, v in p.items()}
    x = torch.randn(T, B, 1, generator=g).to(device)
    return x, torch.zeros(B, H, device=device), p


def study_step(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh, tau, mask):
    """One step of the study's model (leaky ReLU outside), (B, 1) and (B, H) -> (B, H)."""
    alpha = 1.0 / torch.clamp(tau, min=1.0)
    pre = x_t @ weight_ih.T + bias_ih + h @ (weight_hh * mask).T + bias_hh
    return F.leaky_relu((1 - alpha) * h + alpha * pre)


def eager_loop(x, h0, p, mask, step=study_step):
    """The lean loop: (T, B, 1) -> (T, B, H)."""
    h, outputs = h0, []
    for x_t in x:
        h = step(x_t, h, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"], mask)
        outputs.append(h)
    return torch.stack(outputs)


def study_loop(x, h0, p, mask):
    """The loop as the study writes it (see benchmarks/bench_cpu.py): (T, B, 1) -> (T, B, H)."""
    w = p["weight_hh"] * mask
    inp = x @ p["weight_ih"].T + p["bias_ih"]
    h, outputs = h0, []
    for t in range(x.shape[0]):
        h = F.leaky_relu((1 - 1 / torch.clamp(p["tau"], min=1.0)) * h
                         + (h @ w.T + p["bias_hh"] + inp[t]) / torch.clamp(p["tau"], min=1.0))
        outputs.append(h)
    return torch.stack(outputs)


def triton_op(x, h0, p, precision):
    """timescale_kernels.leaky_rnn on the triton backend: (T, B, H). The kernel family is the row's
    setting (row_setting), which measure() holds over the forward and the backward."""
    from timescale_kernels import leaky_rnn
    out, _ = leaky_rnn(x, h0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"],
                       nonlinearity="leaky_relu", placement="outside", backend="triton", precision=precision)
    return out


def graphed(fn, params, train):
    """fn captured in a CUDA graph (warm-up on a side stream, grads allocated inside the capture)."""
    def body():
        for q in params:
            q.grad = None
        with torch.set_grad_enabled(train):
            y = fn()
            if train:
                y.sum().backward()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def measure(fn, device, params, graph=False, setting=contextlib.nullcontext):
    """{'fwd_bwd_ms', 'fwd_ms', 'peak_mb', 'peak_fwd_mb', 'family_ran'} of fn() -> (T, B, H); a failing
    mode records its error. setting: a context manager factory entered around the forward and the
    backward alike (a kernel family pinned, cuDNN's TF32 off): autograd runs the backward after fn
    has returned, and both the triton launchers and cuDNN read their settings when they run.
    Peak memory is taken over a second run, after the first has compiled and allocated workspaces."""
    from timescale_kernels.ops import triton_recurrence
    out = {}
    for mode, train in (("fwd_bwd_ms", True), ("fwd_ms", False)):
        try:
            if graph:
                with setting():
                    run = graphed(fn, params, train)  # a graph's memory is its pool, taken at capture
            else:
                def run(train=train):
                    with torch.set_grad_enabled(train), setting():
                        y = fn()
                        if train:
                            y.sum().backward()
            run()  # compiles (triton, dynamo) before timing
            triton_recurrence.last_family = ""
            with peak_memory("none" if graph else device, out, "peak_mb" if train else "peak_fwd_mb"):
                run()
            sync(device)
            if triton_recurrence.last_family:  # the family the last launch ran ("default" where persistent fell back)
                out["family_ran" if train else "family_ran_fwd"] = triton_recurrence.last_family
            out[mode] = time_ms(run, device, params)
        except Exception as err:  # one failing row must not end the table
            out[mode] = None
            out[f"{mode}_error"] = short_error(err)
    return out


@contextlib.contextmanager
def cudnn_without_tf32():
    """cuDNN's TF32 off inside (torch's default allows it for cuDNN's RNNs); entered around the
    forward and the backward of a row, since cuDNN's RNN backward reads the flag again."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def row_setting(name: str):
    """The setting measure() holds over a row's forward and backward, from its name:
    "triton-<family>-<precision>" pins the family, "... cudnn-fp32 ..." turns cuDNN's TF32 off."""
    if name.startswith("triton-"):
        return lambda: family_pinned(name.split("-")[1])
    if "cudnn-fp32" in name:
        return cudnn_without_tf32
    return contextlib.nullcontext


def baseline_rows(x, h0, p, device):
    """[(name, fn, params, graph)] of the baselines at one problem."""
    H = h0.shape[1]
    mask = 1.0 - torch.eye(H, device=device)
    params = list(p.values())
    rnn = torch.nn.RNN(1, H, nonlinearity="tanh").to(device)
    rows = [("eager-study", lambda: study_loop(x, h0, p, mask), params, False),
            ("eager", lambda: eager_loop(x, h0, p, mask), params, False),
            ("cudnn", lambda: rnn(x, h0[None])[0], list(rnn.parameters()), False),
            ("cudnn-fp32", lambda: rnn(x, h0[None])[0], list(rnn.parameters()), False)]
    if device == "cuda":
        rows.append(("cuda-graph", lambda: eager_loop(x, h0, p, mask), params, True))
    return rows


def dropin_rows(shape, device):
    """[(name, fn, params, graph)]: LeakyRNN against torch.nn.RNN (tanh) as modules, 1 layer and 2
    layers bidirectional, the same weights (LeakyRNN's tau in 1..2)."""
    import timescale_kernels as tk
    steps, batch, hidden = shape
    x = torch.rand(steps, batch, 1, device=device).round()
    rows = []
    for layers, bidirectional in ((1, False), (2, True)):
        torch.manual_seed(0)
        rnn = torch.nn.RNN(1, hidden, num_layers=layers, bidirectional=bidirectional, nonlinearity="tanh").to(device)
        leaky = tk.LeakyRNN(1, hidden, num_layers=layers, bidirectional=bidirectional, nonlinearity="tanh",
                            backend="triton").to(device)
        with torch.no_grad():
            for name, p in rnn.named_parameters():
                getattr(leaky, name).copy_(p)
        tag = "1 layer" if layers == 1 else f"{layers} layers bidirectional"
        rows += [(f"LeakyRNN {tag} (triton fp32)", lambda leaky=leaky: leaky(x)[0], list(leaky.parameters()), False),
                 (f"nn.RNN {tag} (cudnn)", lambda rnn=rnn: rnn(x)[0], list(rnn.parameters()), False),
                 (f"nn.RNN {tag} (cudnn-fp32)", lambda rnn=rnn: rnn(x)[0], list(rnn.parameters()), False)]
    return rows


def ensemble_rows(count, shape, device):
    """[(name, fn, params, graph)]: K networks (per-network weights and tau, a shared input) in one
    triton call, one call each, and torch.func.vmap over the eager loop; fn() -> (K, T, B, H)."""
    from timescale_kernels import leaky_rnn
    x, h0, _ = make_problem(*shape, device)
    nets = [make_problem(*shape, device, seed=k)[2] for k in range(count)]
    stacked = {name: torch.stack([p[name].detach() for p in nets]).requires_grad_() for name in nets[0]}
    mask = 1.0 - torch.eye(shape[2], device=device)

    def one_call():
        return leaky_rnn(x, h0, *stacked.values(), backend="triton")[0]

    def separate():
        return torch.stack([leaky_rnn(x, h0, *p.values(), backend="triton")[0] for p in nets])

    def vmapped():
        def one(w_ih, w_hh, b_ih, b_hh, tau):
            return eager_loop(x, h0, dict(weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh, tau=tau), mask)
        return torch.func.vmap(one)(*stacked.values())
    separate_params = [t for p in nets for t in p.values()]
    return [("ensemble triton fp32", one_call, list(stacked.values()), False),
            ("separate triton fp32", separate, separate_params, False),
            ("vmap eager", vmapped, list(stacked.values()), False)]


def run_ensembles(cfg, results, deadline):
    """Each ensemble's rows; results['ensemble']['K=k of T,B,H'][row] after every measurement."""
    for count, shape in cfg["ensembles"]:
        key = f"K={count} of " + ",".join(map(str, shape))
        for name, fn, params, graph in ensemble_rows(count, shape, cfg["device"]):
            if deadline_passed(deadline, 5):
                record(results, ["ensemble", key, name], {"skipped": "group time limit"})
                continue
            start = time.monotonic()
            record(results, ["ensemble", key, name], {"started": True})
            row = measure(fn, cfg["device"], params, graph)
            row["seconds"] = round(time.monotonic() - start, 1)
            record(results, ["ensemble", key, name], row)
            print(f"ensemble {key} {name}: {row}", flush=True)


def group_rows(group, shape, cfg):
    """The rows of one group at one shape: [(name, fn, params, graph)]."""
    device = cfg["device"]
    if group == "dropin":
        return dropin_rows(shape, device)
    x, h0, p = make_problem(*shape, device)
    params = list(p.values())
    if group == "table":
        rows = [(f"triton-default-{prec}", lambda prec=prec: triton_op(x, h0, p, prec), params, False)
                for prec in PRECISIONS]
        return rows + baseline_rows(x, h0, p, device)
    if group == "persistent":
        return [(f"triton-persistent-{prec}", lambda prec=prec: triton_op(x, h0, p, prec), params, False)
                for prec in PRECISIONS]
    if group == "torch-compile":
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        cell = torch.compile(study_step, dynamic=False, backend=cfg["compile_backend"])
        mask = 1.0 - torch.eye(shape[2], device=device)
        # h0 needing a gradient like every later h: one training graph for every step, not two
        h0_grad = h0.clone().requires_grad_()
        return [("torch.compile", lambda: eager_loop(x, h0_grad, p, mask, step=cell), params + [h0_grad], False)]
    raise ValueError(f"group: unknown {group!r}")


def run_table(group, cfg, results, deadline):
    """Each row of the group at each shape; results[group]['T,B,H'][row] after every measurement."""
    for shape in (cfg["shapes"][-1:] if group == "dropin" else cfg["shapes"]):
        key = ",".join(map(str, shape))
        for name, fn, params, graph in group_rows(group, shape, cfg):
            if deadline_passed(deadline, 5):
                record(results, [group, key, name], {"skipped": "group time limit"})
                continue
            start = time.monotonic()
            record(results, [group, key, name], {"started": True})  # a row killed by the limit leaves a trace
            row = measure(fn, cfg["device"], params, graph, row_setting(name))
            row["seconds"] = round(time.monotonic() - start, 1)
            record(results, [group, key, name], row)
            print(f"{group} {key} {name}: {row}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("group", choices=("table", "persistent", "torch-compile", "analysis", "defect-ab", "dropin",
                                          "ensemble"))
    parser.add_argument("--results", required=True, help="the JSON file to update")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, the Triton interpreter")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this")
    args = parser.parse_args(argv)
    cfg = settings(args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device (use --dry-run to rehearse on the CPU)")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("bench_gpu --dry-run: set TRITON_INTERPRET=1 (before triton is imported)")
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    results = Path(args.results)
    if args.group == "analysis":
        from bench_kernels import run_analysis
        run_analysis(cfg, results, deadline)
    elif args.group == "defect-ab":
        from bench_kernels import run_defect_ab
        run_defect_ab(cfg, results, deadline)
    elif args.group == "ensemble":
        run_ensembles(cfg, results, deadline)
    else:
        run_table(args.group, cfg, results, deadline)


if __name__ == "__main__":
    main()
