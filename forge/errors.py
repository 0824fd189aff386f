"""What can go wrong, sorted by what a run should do about it.

A :class:`ForgeError` is an expected failure whose message already says what is wrong and where (the
file, the variable, the stage): it is shown as it is, without a traceback, and never retried, since
the same input fails the same way again. Anything else is either a passing fault of the machine or the
network (:func:`is_transient`: retried) or a bug, in the recipe's code or ours, whose traceback helps.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from types import CodeType


class ForgeError(Exception):
    """An expected failure, explained by its message."""


class RecipeError(ForgeError):
    """The recipe cannot be loaded or its arguments are wrong; the message names the file and line."""


class RecipeCodeError(ForgeError):
    """The recipe's own code (``process_input``, a URL function) raised; the message says where."""


# OSErrors that say something about the request, not about the moment: retrying cannot help.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the work that raised ``exc`` may succeed: I/O faults (connections, timeouts,
    storage), looked for along the chain of causes. Never a :class:`ForgeError`: those that wrap a
    transient fault (a download) have had their retries already."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ForgeError):
            return False
        if isinstance(seen, OSError | TimeoutError) and not isinstance(seen, _PERMANENT_OS_ERRORS):
            return True
        seen = seen.__cause__
    return False


def code_location(exc: BaseException, code: CodeType) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback that runs ``code``'s file (the
    recipe's, when ``code`` is a recipe function), for messages about the recipe's own code."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == code.co_filename:
            found = f"{Path(frame.filename).name}:{frame.lineno}"
    return found


def call_recipe_code(fn: Callable, what: str, *args, **kwargs):
    """``fn(*args, **kwargs)``, its exceptions turned into a :class:`RecipeCodeError` that names
    ``what`` (e.g. "process_input on <url>") and the line of the recipe that raised."""
    try:
        return fn(*args, **kwargs)
    except ForgeError:
        raise
    except Exception as e:
        where = code_location(e, fn.__code__) if hasattr(fn, "__code__") else None
        at = f" at {where}" if where else ""
        raise RecipeCodeError(f"{what}: the recipe's {fn.__name__}{at} raised {type(e).__name__}: {e}") from e
