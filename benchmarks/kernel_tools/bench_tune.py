"""The triton backend's tuning choices, measured: the groups of `make gpu-tune` (run after `make gpu-check`).

    python benchmarks/kernel_tools/bench_tune.py GROUP --results PATH [--dry-run] [--budget-s S]
    python benchmarks/kernel_tools/bench_tune.py compile [--jobs N] [--json PATH]      (no GPU needed)

GROUP (each writes results[GROUP] in the JSON at PATH, rewritten after every measurement):
  compile     every candidate below compiled for sm_90 as it launches (the JIT's specialisation, in
              parallel processes, into triton's cache): registers and spills per candidate
  default     the default family's tiles (LaunchConfig candidates) at the study's batch and the
              analysis batch: forward (drive saved) and backward us/step, fp32, and each candidate's
              largest difference from the tiles in use; the tiles in use with rows moved 4 bytes at
              a time (aligned_rows=False) second
  persistent  the persistent family's tilings (the plans with the most programs, 4 and 8 warps) at
              the same shapes, timed and compared the same way; the rule's tiling with 4-byte rows second,
              with one state chunk loaded ahead third;
              last, tf32x3 with the rule's warps and with 8 (tensor_core_pins)
  crossover   both families as launched today over a grid of (B, H): forward + backward us/step, the
              faster one, and the family the rule (choose_family) picks
  bidi        one bidirectional layer (triton, tanh, fp32): the module, the two directions one after
              the other, and the two directions on two CUDA streams
--dry-run runs the same code on the CPU at tiny shapes under the Triton interpreter (timings
meaningless: it rehearses the command and its output).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "gpu")]
from gpu_results import deadline_passed, family_pinned, record, short_error, sync, time_ms  # noqa: E402

import torch  # noqa: E402

SETTINGS = {
    "gpu": {"device": "cuda", "steps": 100, "shapes": [(100, 256, 500), (100, 10, 500)],
            "batches": (10, 32, 64, 128, 256, 512), "hiddens": (64, 128, 256, 500, 1000)},
    "dry-run": {"device": "cpu", "steps": 3, "shapes": [(3, 16, 16), (3, 4, 16)],
                "batches": (4, 16), "hiddens": (16, 32)},
}
PERSISTENT_PLANS = 4  # per shape: the tilings with the most programs (the rule's pick first)
PERSISTENT_WARPS = (8, 4)


def settings(dry_run: bool) -> dict:
    return SETTINGS["dry-run" if dry_run else "gpu"]


# ---- the candidates ------------------------------------------------------------------------------

def default_candidates(dry_run: bool = False) -> list:
    """LaunchConfigs of the default family: the one in use first, then batch tiles of 16 and 32 rows,
    column x reduction blocks 32x32, 64x32, 64x64, 128x32, 4 and 8 warps."""
    from timescale_kernels.ops import triton_recurrence as tr
    current = tr.launch_config()
    unaligned = dataclasses.replace(current, aligned_rows=False)  # the tiles in use, rows moved 4 bytes at a time
    if dry_run:
        return [current, unaligned, dataclasses.replace(current, block_n=16, block_k=16)]
    out = [current, unaligned]
    for block_b in (16, 32):
        for block_n, block_k in ((32, 32), (64, 32), (64, 64), (128, 32)):
            for warps in (4, 8):
                config = tr.LaunchConfig(block_b, block_n, block_k, warps, current.num_stages)
                if config not in out:
                    out.append(config)
    return out


def config_label(config) -> str:
    rows = "" if config.aligned_rows else " 4-byte rows"
    return f"b{config.block_b} n{config.block_n} k{config.block_k} w{config.num_warps}{rows}"


def persistent_candidates(batch: int, hidden: int, dry_run: bool = False) -> list:
    """Plans of the persistent family at (B, H), fp32: the rule's pick first, then the other grids
    with the most programs (each with its narrowest batch tile), each with 8 and 4 warps. Empty
    where none fits."""
    from timescale_kernels.ops import triton_recurrence as tr
    if dry_run:
        picked = tr.persistent_plan(None, batch, hidden, "fp32")
        return [picked, dataclasses.replace(picked, num_warps=4)]
    props = device_properties()
    picked = tr.persistent_plan(props, batch, hidden, "fp32")
    if picked is None:
        return []
    grids = {picked.grid: picked}
    for p in sorted(tr.persistent_tilings(props, batch, hidden, "fp32"), key=lambda p: (-p.programs, p.block_b, p.block_n)):
        grids.setdefault(p.grid, p)  # one tiling per grid: the narrowest batch tile (a wider one only masks rows)
    tilings = list(grids.values())[:PERSISTENT_PLANS]
    return [dataclasses.replace(p, num_warps=w) for p in tilings for w in PERSISTENT_WARPS]


def tensor_core_pins(shape, dry_run: bool = False) -> list[tuple[str, dict]]:
    """tf32x3 on the persistent family: the rule's tiling with its mma_warps() warps, then the same
    tiling with 8 warps (each tensor-core product computed 8 / mma_warps times over); under the
    interpreter, a 2-warp variant of its plan stands in for the first."""
    from timescale_kernels.ops import triton_recurrence as tr
    props = None if dry_run else device_properties()
    picked = tr.persistent_plan(props, shape[1], shape[2], "tf32x3")
    if picked is None:
        return []
    if dry_run:
        picked = dataclasses.replace(picked, num_warps=2)
    plans = [picked] + ([dataclasses.replace(picked, num_warps=8)] if picked.num_warps != 8 else [])
    return [(f"tf32x3 {plan_label(p)}", {"plan": p, "precision": "tf32x3"}) for p in plans]


def plan_label(plan) -> str:
    return f"{plan.grid[0]}x{plan.grid[1]} b{plan.block_b} n{plan.block_n} w{plan.num_warps}"


def device_properties():
    """The CUDA device's properties; the stand-in H200's while compiling without a GPU."""
    from timescale_kernels.ops import triton_recurrence as tr
    return tr.device_properties(torch.device("cuda", 0))


# ---- one forward and one backward through the kernels -------------------------------------------

def problem(shape, device, make=torch.randn):
    """u, h0, w, alpha, grad_h of a (T, B, H) problem: the kernels' own arguments."""
    T, B, H = shape
    kwargs = {"device": device}
    if make is torch.randn:
        kwargs["generator"] = torch.Generator(device=device).manual_seed(0)
    u, grad_h = make(T, B, H, **kwargs), make(T, B, H, **kwargs)
    h0, w, alpha = make(B, H, **kwargs), make(H, H, **kwargs), make(H, **kwargs)
    if make is torch.randn:
        w, alpha = w / H ** 0.5, alpha.abs().clamp(max=1.0)
    return u, h0, w, alpha, grad_h


def kernels(args, config=None, plan=None, family=None, nonlinearity="leaky_relu", precision="fp32"):
    """(forward, backward) closures over the launchers with one config / plan / family / precision."""
    from timescale_kernels.ops import triton_recurrence as tr
    u, h0, w, alpha, grad_h = args
    pin = dict(config=config, plan=plan, family=family)
    saved = {}

    def forward(save_drive=True):
        saved["h"], saved["drive"] = tr.forward(u, h0, w, alpha, nonlinearity, "outside", save_drive, precision,
                                                **pin)
        return saved["h"]

    def backward():
        return tr.backward(grad_h, saved["h"], h0, saved["drive"], w, alpha, nonlinearity, "outside", precision,
                           **pin)[0]
    return forward, backward


# ---- compile (no GPU) -----------------------------------------------------------------------------

def pins(group: str, shape, dry_run: bool = False) -> list[tuple[str, dict]]:
    """[(label, keywords of the launchers)] of one group at one shape (T, B, H): the candidates of
    "default" and "persistent", the two families of "crossover"."""
    if group == "default":
        return [(config_label(c), {"config": c, "family": "default"}) for c in default_candidates(dry_run)]
    if group == "persistent":
        out = [(plan_label(p), {"plan": p}) for p in persistent_candidates(shape[1], shape[2], dry_run)]
        if out:  # the rule's tiling with rows moved 4 bytes at a time, second
            from timescale_kernels.ops import triton_recurrence as tr
            unaligned = dataclasses.replace(tr.launch_config(), aligned_rows=False)
            out.insert(1, (out[0][0] + " 4-byte rows", {**out[0][1], "config": unaligned}))
            # and with one state chunk loaded ahead (the compiler's own schedule), third
            out.insert(2, (out[0][0] + " 1 chunk ahead", {"plan": dataclasses.replace(out[0][1]["plan"], prefetch=1)}))
        return out + tensor_core_pins(shape, dry_run)
    if group == "bidi":  # the layer's kernels: tanh, forward with and without the drive, backward
        return [(f"{family} tanh", {"family": family, "nonlinearity": "tanh"}) for family in ("default", "persistent")]
    return [(family, {"family": family}) for family in ("default", "persistent")]


def crossover_shapes(cfg) -> list[tuple]:
    return [(cfg["steps"], B, H) for B in cfg["batches"] for H in cfg["hiddens"]]


def compile_jobs(dry_run: bool = False) -> list[tuple]:
    """(group, shape, label, pin) for every kernel the timing groups launch."""
    cfg = settings(dry_run)
    with _stand_in_device():
        return [(group, shape, label, pin)
                for group, shapes in (("default", cfg["shapes"]), ("persistent", cfg["shapes"]),
                                      ("crossover", crossover_shapes(cfg)), ("bidi", cfg["shapes"][:1]))
                for shape in shapes for label, pin in pins(group, shape, dry_run)]


@contextlib.contextmanager
def _stand_in_device():
    """device_properties() answers the stand-in H200 inside (for planning without a GPU)."""
    if torch.cuda.is_available():
        yield
        return
    from triton_capture import capturing
    with capturing():
        yield


def compile_job(job) -> dict:
    """Registers and spills of the forward and backward kernels one job launches (sm_90)."""
    from ptx_checks import barrier_by_thread_zero
    from triton_capture import capturing, compile_launch, resources, stand_in
    group, shape, label, pin = job
    row = {"group": group, "shape": list(shape), "label": label}
    try:
        with capturing() as launches:
            args = problem(shape, "cuda", make=lambda *s, **_: stand_in(s))
            forward, backward = kernels(args, **pin)
            forward()
            backward()
            if group == "bidi":
                forward(save_drive=False)
        for launch in launches:
            compiled = compile_launch(launch)
            key = launch.name + ("_no_drive" if launch.name in row else "")  # the second forward: no drive
            row[key] = {k: v for k, v in resources(compiled).items() if k in ("registers", "spills", "smem")}
            if launch.name.startswith("persistent"):  # one arrival per program at the grid barrier
                row[key]["one_arrival"] = barrier_by_thread_zero(compiled.asm["ptx"], 32 * compiled.metadata.num_warps)
    except Exception as err:  # one failing candidate must not hide the others
        row["error"] = short_error(err)
    return row


def compile_all(jobs: int, json_path: str | None, only: str | None = None) -> int:
    import multiprocessing
    import triton
    os.environ.pop("TRITON_INTERPRET", None)
    from triton_compile import write_rows
    todo = [job for job in compile_jobs() if only is None or job[0] == only]
    rows = []
    with multiprocessing.get_context("spawn").Pool(max(1, jobs)) as pool:
        for row in pool.imap(compile_job, todo):  # written as they arrive: a time limit keeps what compiled
            rows.append(row)
            if json_path:
                write_rows(json_path, triton.__version__, rows)
    failed = [r for r in rows if "error" in r]
    failed += [r for r in rows if any(isinstance(v, dict) and v.get("one_arrival") is False for v in r.values())]
    spilling = [r for r in rows if any(isinstance(v, dict) and v.get("spills") for v in r.values())]
    for r in failed + spilling:
        print(f"bench_tune compile: {r}", file=sys.stderr)
    print(f"triton {triton.__version__}: {len(rows)} candidates compiled, {len(failed)} failed (or more than "
          "one arrival per program at the grid barrier), "
          f"{len(spilling)} spill registers", file=sys.stderr)
    return 1 if failed else 0


# ---- the timing groups ----------------------------------------------------------------------------

def time_pair(forward, backward, device, steps) -> dict:
    """{'fwd_us', 'bwd_us'} per step (the backward after a forward that saved the drive)."""
    forward()
    backward()
    sync(device)
    return {"fwd_us": time_ms(forward, device) * 1e3 / steps, "bwd_us": time_ms(backward, device) * 1e3 / steps}


def run_candidates(group, cfg, results, deadline):
    """results[group]['T,B,H'][label] = us/step, the family that ran, the largest difference of
    the forward output and the backward's d_drive from the first candidate's."""
    from timescale_kernels.ops import triton_recurrence as tr
    device, dry_run = cfg["device"], cfg["device"] != "cuda"
    for shape in cfg["shapes"]:
        key = ",".join(map(str, shape))
        args = problem(shape, device)
        first = None
        for label, pin in pins(group, shape, dry_run):
            if deadline_passed(deadline, 5):
                record(results, [group, key, label], {"skipped": "group time limit"})
                continue
            row = {"current": first is None}
            try:
                forward, backward = kernels(args, **pin)
                row.update(time_pair(forward, backward, device, shape[0]))
                row["family_ran"] = tr.last_family
                outputs = (forward().clone(), backward().clone())
                if first is None:
                    first = outputs
                row["max_abs_difference"] = max((a - b).abs().max().item() for a, b in zip(outputs, first))
            except Exception as err:
                row["error"] = short_error(err)
            record(results, [group, key, label], row)
            print(f"{group} {key} {label}: {row}", flush=True)


def run_crossover(cfg, results, deadline):
    """results['crossover']['B,H'] = {family: us/step fwd + bwd, 'faster', 'rule'}."""
    from timescale_kernels.ops import triton_recurrence as tr
    device = cfg["device"]
    props = tr.device_properties(torch.device(device)) if device == "cuda" else None
    for shape in crossover_shapes(cfg):
        _, B, H = shape
        key = f"{B},{H}"
        if deadline_passed(deadline, 5):
            record(results, ["crossover", key], {"skipped": "group time limit"})
            continue
        row = {"T": shape[0], "rule": tr.choose_family(props, B, H, "fp32") if props is not None else "default"}
        args = problem(shape, device)
        for family, pin in pins("crossover", shape):
            try:
                forward, backward = kernels(args, **pin)
                pair = time_pair(forward, backward, device, shape[0])
                forward()
                # None where it fell back: no tiling of the persistent family fits
                row[family] = pair["fwd_us"] + pair["bwd_us"] if tr.last_family == family else None
            except Exception as err:
                row[f"{family}_error"] = short_error(err)
        timed = {f: row[f] for f in ("default", "persistent") if row.get(f)}
        if timed:
            row["faster"] = min(timed, key=timed.get)
        record(results, ["crossover", key], row)
        print(f"crossover {key}: {row}", flush=True)


def _bidi_pair(shape, device, seed):
    x = (torch.rand(shape[0], shape[1], 1, generator=torch.Generator().manual_seed(seed)) < 0.5).float().to(device)
    torch.manual_seed(seed)
    import timescale_kernels as tk
    return x, tk.LeakyRNN(1, shape[2], bidirectional=True, nonlinearity="tanh", backend="triton").to(device)


def bidi_rows(shape, device):
    """[(name, fn, params)]: one bidirectional layer as the module runs it, and its two directions
    through leaky_rnn one after the other, and on two CUDA streams (the same stream on the CPU)."""
    from timescale_kernels import leaky_rnn
    x, rnn = _bidi_pair(shape, device, 0)
    h0 = torch.zeros(shape[1], shape[2], device=device)
    params = list(rnn.parameters())

    def direction(suffix, reverse):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau")
        weights = [getattr(rnn, f"{n}_l0{suffix}") for n in names]
        return leaky_rnn(x, h0, *weights, nonlinearity="tanh", backend="triton", reverse=reverse)[0]

    def sequential():
        return torch.cat([direction("", False), direction("_reverse", True)], -1)

    streams = [torch.cuda.Stream() for _ in range(2)] if device == "cuda" else []

    def two_streams():
        if not streams:
            return sequential()
        main = torch.cuda.current_stream()
        outputs = []
        for stream, (suffix, reverse) in zip(streams, (("", False), ("_reverse", True))):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outputs.append(direction(suffix, reverse))
        for stream, out in zip(streams, outputs):
            main.wait_stream(stream)
            out.record_stream(main)
        return torch.cat(outputs, -1)
    return [("module", lambda: rnn(x)[0], params), ("directions one after the other", sequential, params),
            ("directions on two streams", two_streams, params)]


def run_bidi(cfg, results, deadline):
    """results['bidi']['T,B,H']['<family>: <row>'] = fwd and fwd+bwd ms, the largest difference from
    the module, per kernel family (pinned over the backward too); the persistent family last (two
    cooperative grids on two streams are serialised by the device, or refused)."""
    device = cfg["device"]
    shape = cfg["shapes"][0]
    key = ",".join(map(str, shape))
    for family in ("default", "persistent"):
        reference = None
        for name, fn, params in bidi_rows(shape, device):
            label = f"{family}: {name}"
            if deadline_passed(deadline, 5):
                record(results, ["bidi", key, label], {"skipped": "group time limit"})
                continue
            row = {}
            try:
                def train(fn=fn):
                    with family_pinned(family):
                        fn().sum().backward()

                def forward(fn=fn):
                    with torch.no_grad(), family_pinned(family):
                        return fn()
                out = forward()
                reference = out if reference is None else reference
                row["max_abs_difference"] = (out - reference).abs().max().item()
                train()
                sync(device)
                row["fwd_ms"] = time_ms(forward, device)
                row["fwd_bwd_ms"] = time_ms(train, device, params)
            except Exception as err:
                row["error"] = short_error(err)
            record(results, ["bidi", key, label], row)
            print(f"bidi {key} {label}: {row}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("group", choices=("compile", "default", "persistent", "crossover", "bidi"))
    parser.add_argument("--results", default=None, help="the JSON file to update (timing groups)")
    parser.add_argument("--json", default=None, help="compile: write the rows here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile: processes")
    parser.add_argument("--only", default=None, choices=("default", "persistent", "crossover", "bidi"),
                        help="compile: only this group's candidates")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, the Triton interpreter")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this")
    args = parser.parse_args(argv)
    if args.group == "compile":
        return compile_all(args.jobs, args.json, args.only)
    if args.results is None:
        parser.error(f"{args.group}: --results is required")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_tune: no CUDA device (use --dry-run to rehearse on the CPU)")
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("bench_tune --dry-run: set TRITON_INTERPRET=1 (before triton is imported)")
    cfg = settings(args.dry_run)
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    results = Path(args.results)
    if args.group in ("default", "persistent"):
        run_candidates(args.group, cfg, results, deadline)
    elif args.group == "crossover":
        run_crossover(cfg, results, deadline)
    else:
        run_bidi(cfg, results, deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
