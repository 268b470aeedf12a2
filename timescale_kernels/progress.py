"""Progress bars: tqdm's (a dependency of the package) when it imports, else a silent stand-in with the
calls the package makes, so that the op, the models and the GPU command run where only torch (and
triton) are installed, as on a GPU machine the checkout is copied to."""
from __future__ import annotations

import sys

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is not installed: no bars, the same calls
    class tqdm:  # noqa: N801 (tqdm's own name)
        """Iterates like tqdm(iterable) and counts like tqdm(total=...), showing nothing."""

        def __init__(self, iterable=None, *args, total=None, initial=0, **kwargs):
            self.iterable, self.total, self.n = iterable, total, initial

        def __iter__(self):
            for item in self.iterable:
                self.n += 1
                yield item

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def update(self, n=1):
            self.n += n

        def set_postfix(self, *args, **kwargs):
            pass

        def set_description(self, *args, **kwargs):
            pass

        def close(self):
            pass

        @staticmethod
        def write(message, file=None, end="\n"):
            (file or sys.stdout).write(str(message) + end)
