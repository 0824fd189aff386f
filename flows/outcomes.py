"""How a recipe run ends when a stage fails: one plain-words cause, and every task run in a final state.

The flow returns a Failed state with that cause as its message (flows/reports.failed_run), so the Prefect
UI, the API and ``forge run``'s last line all say the same thing, not Prefect's "UnfinishedRun"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.states import Cancelled

from forge.errors import ForgeError
from forge.publish.transaction import RebuildBehind


class StageFailed(Exception):
    """A stage of the recipe failed; the message is the cause as users should read it."""

    def __init__(self, stage: str, task: str | None, cause: BaseException):
        self.stage, self.task, self.cause = stage, task, cause
        where = f" ({task})" if task and task != stage else ""
        # ForgeErrors say what is wrong themselves; anything else is a bug, named by its type.
        reason = str(cause) if isinstance(cause, ForgeError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{stage} stage failed{where}: {reason}")


def in_stage[T](stage: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: a stage the flow runs in its own process, whatever it raises a :class:`StageFailed`."""
    try:
        return fn(*args)
    except RebuildBehind:  # not a failure: the stages catch the rebuild up and publish again
        raise
    except Exception as e:
        raise StageFailed(stage, None, e) from e


def failure_of(future: PrefectFuture) -> BaseException | None:
    """The exception a task run ended with, None if it completed."""
    future.wait()
    state = future.state
    if state.is_completed():
        return None
    found = state.result(raise_on_failure=False)
    return found if isinstance(found, BaseException) else RuntimeError(state.message or state.name)


def first_failure(
    stage: str, futures: Sequence[PrefectFuture], labels: Sequence[str | None]
) -> StageFailed | None:
    """The first of ``futures`` (in order) that did not complete, as a :class:`StageFailed` naming its
    task run (``labels``), with how many others failed too."""
    failures = [(label, e) for f, label in zip(futures, labels, strict=True) if (e := failure_of(f))]
    if not failures:
        return None
    label, exc = failures[0]
    failed = StageFailed(stage, label, exc)
    if len(failures) > 1:
        failed.args = (f"{failed.args[0]} (and {len(failures) - 1} more {stage} task runs failed)",)
    return failed


def end_unrun(future: PrefectFuture, name: str, reason: str, timeout: float = 30.0) -> None:
    """A task run that never ran because an upstream one failed (Prefect leaves it Pending, "NotReady",
    for ever, named with a random suffix) ends Cancelled, named ``name``, saying why: the run's graph and
    its state end with the run."""
    future.wait()
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:  # the server records task runs from their events, a moment after they happen
            try:
                task_run = client.read_task_run(future.task_run_id)
                break
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    return  # never recorded: nothing is left pending in the UI either
                time.sleep(0.2)
        if task_run.state is None or not task_run.state.is_final():
            client.set_task_run_name(future.task_run_id, name)
            client.set_task_run_state(future.task_run_id, Cancelled(message=reason), force=True)
