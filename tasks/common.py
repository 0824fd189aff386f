"""What every task shares: loading the run's recipe and looking up secrets (env, then Prefect blocks)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.blocks.system import Secret as SecretBlock
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import Task

from forge.engine.stages import recipe_for  # noqa: F401  (what the tasks load their recipe with)
from forge.errors import is_transient
from tasks.environment import run_environment


def stage(name: str, **options: Any):
    """Prefect's ``@task`` for a recipe stage: runs named after the stage (no random suffix), retried
    only for passing faults (:func:`retry_transient`), and without a cache policy: the stages are
    idempotent on their own, and Prefect's default policy hashes every input of every run (seconds for
    16,500 input summaries) for a result cache that nothing reads. On workers that serve many runs, the
    task runs in its own run's environment (tasks/environment.py)."""
    options.setdefault("task_run_name", name)
    if options.get("retries"):
        options.setdefault("retry_condition_fn", retry_transient)

    def decorate(fn: Callable) -> Task:
        @functools.wraps(fn)
        def in_its_run_environment(*args: Any, **kwargs: Any) -> Any:
            context = TaskRunContext.get()
            with run_environment(context.task_run.flow_run_id if context else None):
                return fn(*args, **kwargs)

        return task(name=name, cache_policy=NO_CACHE, **options)(in_its_run_environment)

    return decorate


class Opaque[T]:
    """A batch passed between tasks that Prefect does not look inside.

    Prefect walks every element of a task's parameters, twice, looking for futures (its own ``quote``
    and ``opaque`` annotations do not survive the Dask task runner). Passing 16,500 input summaries to
    ``prepare-target`` took 15 s as lists and 1 s as one of these per batch; a write batch of 4,000
    inputs cost its store task 4 s.
    """

    __slots__ = ("value",)

    def __init__(self, value: T):
        self.value = value

    def __dask_tokenize__(self) -> tuple[str, int]:
        """Not the value's: Dask would pickle a whole batch (at least twice) to name each task run it is
        submitted with, and the name is unique anyway (it holds the task run's id)."""
        return ("forge.Opaque", id(self))


def secret_lookup(name: str) -> str | None:
    """An environment variable first, then a Prefect Secret block (``MY_TOKEN`` -> ``my-token``)."""
    if name in os.environ:
        return os.environ[name]
    try:
        return SecretBlock.load(name.lower().replace("_", "-")).get()
    except (ValueError, RuntimeError):
        return None


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retries a stage only for passing faults (connections, timeouts, storage): a 404, a corrupt
    file, a schema mismatch or an error in the recipe's code fails the same way again. Downloads have
    retried their own faults already (forge.io.fetch): one retry budget, not one per layer."""
    try:
        state.result()
    except Exception as e:
        return is_transient(e)
    return True
