"""What every task shares: loading the run's recipe and looking up secrets (env, then Prefect blocks)."""

from __future__ import annotations

import os

from prefect.blocks.system import Secret as SecretBlock
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import Task

from forge.fetch import PermanentSourceError
from forge.loading import recipe_for  # noqa: F401  (what the tasks load their recipe with)
from forge.openers import InputError
from forge.secrets import MissingSecretError


def secret_lookup(name: str) -> str | None:
    """An environment variable first, then a Prefect Secret block (``MY_TOKEN`` -> ``my-token``)."""
    if name in os.environ:
        return os.environ[name]
    try:
        return SecretBlock.load(name.lower().replace("_", "-")).get()
    except (ValueError, RuntimeError):
        return None


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retries whole tasks, but not failures a retry cannot fix (404, bad input, missing secret)."""
    try:
        state.result()
    except (PermanentSourceError, InputError, MissingSecretError):
        return False
    except Exception:
        return True
    return True
