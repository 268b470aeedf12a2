"""Two groups of `make gpu-check` that time the kernels themselves (see bench_gpu.py):

analysis    the analysis simulation, forward only, at (T, B, H) = (100,500, 10, 500)
defect-ab   the forward kernel with W read through its unit stride against a contiguous W^T
"""
from __future__ import annotations

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
    else projected from the probe), 'measured_full', 'family_ran'}; 'analysis.simulate' runs the
    family the rule picks."""
    from timescale_kernels.analysis import simulate
    from timescale_kernels.ops import triton_recurrence as tr
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
            row["family_ran"] = tr.last_family  # "default" where the persistent launch fell back
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["analysis", name], row)
        print(f"analysis {name}: {row}", flush=True)
    row = {"steps": steps, "trials": trials, "hidden": hidden}
    first = load(results).get("analysis", {}).get("op default fp32", {}).get("seconds_at_full", 0.0)
    if deadline_passed(deadline, 10 + 1.5 * first):
        record(results, ["analysis", "analysis.simulate"], {"skipped": "group time limit"})
    else:
        try:
            burn_in = 500 if steps > 1000 else 0  # the study's 500 of its 100,500 steps
            row["seconds"] = seconds(lambda: simulate(
                model, trials=trials, steps=steps - burn_in, burn_in=burn_in, backend="triton",
                max_lag=min(30, steps - burn_in - 1),
                generator=torch.Generator(device=device).manual_seed(0)), device)
            row["family_ran"] = tr.last_family  # the family the rule picked
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["analysis", "analysis.simulate"], row)
        print(f"analysis simulate: {row}", flush=True)


def run_defect_ab(cfg, results, deadline):
    """results['defect-ab'][family] = {'strided W us/step', 'contiguous W^T us/step', 'max_abs_difference',
    'family_ran'}: triton_recurrence.forward (fp32, no drive) with LaunchConfig(contiguous_wt=False),
    which reads W through its unit stride (M[k, n] = W[n, k], defect 1), against the default config,
    which copies W^T contiguous once per call (the copy is timed with it)."""
    import dataclasses
    from timescale_kernels.ops import triton_recurrence as tr
    T, B, H = cfg["shapes"][0]
    device = cfg["device"]
    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.randn(T, B, H, generator=gen, device=device)
    h0 = torch.randn(B, H, generator=gen, device=device)
    w = torch.randn(H, H, generator=gen, device=device) / H ** 0.5
    alpha = torch.rand(H, generator=gen, device=device) * 0.5
    base = tr.launch_config()
    configs = {"strided W": dataclasses.replace(base, contiguous_wt=False), "contiguous W^T": base}
    for family in FAMILIES:
        if deadline_passed(deadline, 10):
            record(results, ["defect-ab", family], {"skipped": "group time limit"})
            continue
        row = {"T": T, "B": B, "H": H, "precision": "fp32"}
        try:
            outputs = {}
            for label, config in configs.items():
                def launch(config=config):
                    return tr.forward(u, h0, w, alpha, "leaky_relu", "outside", False, "fp32", config=config,
                                      family=family)[0]
                outputs[label] = launch()
                sync(device)
                row["family_ran"] = tr.last_family
                row[f"{label} us/step"] = time_ms(launch, device) * 1e3 / T
            a, b = outputs.values()
            row["max_abs_difference"] = (a - b).abs().max().item()
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["defect-ab", family], row)
        print(f"defect-ab {family}: {row}", flush=True)
