"""Python's cycle collector, told to skip what a process loaded before its work.

The flow's process and each Dask worker hold about 300,000 objects once Prefect, Dask, xarray and zarr
are imported, and every full collection walked them all (0.2 s each). 16,500 tiny inputs made four full
collections per worker (0.9 CPU-seconds in all) and five in the flow's process (0.8 s, start-up
included). Frozen objects are still freed by reference counting; only garbage cycles among them wait
until they are unfrozen.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable


def freeze_loaded() -> None:
    """For a process that lives to run tasks (a Dask worker): what it has loaded so far stays loaded."""
    gc.freeze()


def loaded_frozen[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run with what its process had loaded frozen, unfrozen after: for a flow, whose process may
    go on to other work (a test session, ``forge run``). A plain function, not a ``contextmanager``
    used as a decorator: Prefect pickles the flow's function with every task it submits, and that one
    holds a generator."""

    @functools.wraps(fn)
    def frozen_while_running(*args: P.args, **kwargs: P.kwargs) -> R:
        gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.unfreeze()

    return frozen_while_running
