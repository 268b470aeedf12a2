"""Runs the Triton interpreter's programs concurrently, one thread per program, so that the
persistent kernels' programs can meet at their grid barrier on a CPU.

The interpreter runs a grid one program after another, so a kernel whose programs wait for each
other (the persistent kernels' per-step barrier) could never finish there, and their multi-split
plans ran nowhere but on a GPU. Inside `concurrent_programs()` every launch starts one thread per
program instead, each with its own program id (the interpreter keeps the id on its one builder: it
is made thread-local here), and waits for all of them. The threads interleave under the GIL at
arbitrary points, so a program reads other programs' stores only as the kernel orders them. The
atomics are the interpreter's own, done under its lock. `delay_s` holds back every program but the
first of each batch tile, so that a missing barrier shows deterministically: the first program
then reads columns nobody has written yet. A launch whose programs have not all finished within
`timeout_s` (a barrier that cannot be met) raises TimeoutError, and its threads are stopped at
their next atomic. This exercises the barrier's logic and the data exchange between programs, not
the GPU memory model (acquire/release), which only a GPU can test.

Works through the interpreter's GridExecutor: the same argument staging and language patching,
only the loop over the grid differs. Written against triton 3.9's interpreter, the one the tests run
under (3.6's cannot run these kernels with numpy 2.4, threads or not: its `range(T)` takes int() of
a one-element array).
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time

from triton.runtime import interpreter as _interp

from timescale_kernels.ops import triton_common

_local = threading.local()
_stop = threading.Event()


def _grid_idx(self):
    return getattr(_local, "grid_idx", None)


def _set_grid_idx(self, value):
    _local.grid_idx = value


def _launcher(delay_s: float, timeout_s: float):
    """A GridExecutor.__call__ that runs each program of the grid in a thread of its own."""

    def call(self, *args_dev, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        scope = _interp._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {n: a if n in self.constexprs else _interp._implicit_cvt(a) for n, a in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            _interp.interpreter_builder.set_grid_dim(*grid)
            errors = []

            def program(idx):
                try:
                    if idx[0] > 0:
                        time.sleep(delay_s)
                    _interp.interpreter_builder.set_grid_idx(*idx)
                    self.fn(**args)
                except BaseException as err:  # reported by the launching thread
                    errors.append(err)

            threads = [threading.Thread(target=program, args=((x, y, z),), daemon=True)
                       for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            _stop.clear()
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + timeout_s
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            stuck = sum(thread.is_alive() for thread in threads)
            if stuck:
                _stop.set()
                for thread in threads:
                    thread.join(5.0)
                raise TimeoutError(f"{stuck} of {len(threads)} programs still running after {timeout_s} s "
                                   "(a barrier that cannot be met)")
            if errors:
                raise errors[0]
        finally:
            scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    return call


def _atomic_rmw(original):
    def atomic_rmw(self, rmw_op, ptr, val, mask, sem, scope):
        if _stop.is_set():
            raise RuntimeError("stopped: the launch timed out")
        out = original(self, rmw_op, ptr, val, mask, sem, scope)
        if not val.data.any():  # adding zero: a program spinning at the barrier lets the others run
            time.sleep(1e-3)
        return out

    return atomic_rmw


@contextlib.contextmanager
def concurrent_programs(delay_s: float = 0.0, timeout_s: float = 120.0):
    """Within the block, interpreter launches run one thread per program (see the module docstring),
    and the triton backend accepts persistent plans with several column splits."""
    builder = type(_interp.interpreter_builder)
    saved = (_interp.GridExecutor.__call__, builder.create_atomic_rmw, sys.getswitchinterval(),
             triton_common.concurrent_programs)
    builder.grid_idx = property(_grid_idx, _set_grid_idx)
    builder.create_atomic_rmw = _atomic_rmw(saved[1])
    _interp.GridExecutor.__call__ = _launcher(delay_s, timeout_s)
    sys.setswitchinterval(1e-4)
    triton_common.concurrent_programs = True
    try:
        yield
    finally:
        _interp.GridExecutor.__call__, builder.create_atomic_rmw = saved[0], saved[1]
        del builder.grid_idx
        sys.setswitchinterval(saved[2])
        triton_common.concurrent_programs = saved[3]
