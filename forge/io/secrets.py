"""Secrets are named in recipes, never written in them; values are looked up only when a source is fetched.

A :class:`Secret` holds a *name*. :func:`resolve` replaces each one by its value through a lookup function
(by default the environment; the Prefect tasks add Prefect Secret blocks). :func:`scrub` removes known
secret values from any text before it reaches a log, an error message or an artifact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

Lookup = Callable[[str], "str | None"]
REDACTED = "***"


@dataclass(frozen=True)
class Secret:
    """A reference to a secret by name: an environment variable or a Prefect Secret block.

    Examples
    --------
    >>> import os
    >>> os.environ["DEMO_TOKEN"] = "s3cr3t"
    >>> resolve({"auth": ("user", Secret("DEMO_TOKEN"))}, env_lookup)
    {'auth': ('user', 's3cr3t')}
    >>> Secret("DEMO_TOKEN")
    Secret('DEMO_TOKEN')
    """

    name: str

    def __repr__(self) -> str:
        return f"Secret({self.name!r})"


class MissingSecretError(LookupError):
    pass


def env_lookup(name: str) -> str | None:
    return os.environ.get(name)


def lookup_secret(name: str, lookup: Lookup = env_lookup) -> str:
    value = lookup(name)
    if value is None:
        raise MissingSecretError(
            f"secret {name!r} is not set: export it as an environment variable or create a Prefect "
            f"Secret block named {name.lower().replace('_', '-')!r}"
        )
    return value


def resolve(value: Any, lookup: Lookup = env_lookup) -> Any:
    """Replace every :class:`Secret` inside nested dicts, lists and tuples by its value."""
    if isinstance(value, Secret):
        return lookup_secret(value.name, lookup)
    if isinstance(value, Mapping):
        return {k: resolve(v, lookup) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve(v, lookup) for v in value)
    return value


def secret_values(value: Any, lookup: Lookup = env_lookup) -> list[str]:
    """The resolved values of every Secret inside ``value``, for scrubbing."""
    if isinstance(value, Secret):
        return [lookup_secret(value.name, lookup)]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in secret_values(v, lookup)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in secret_values(v, lookup)]
    return []


_SENSITIVE_KEYS = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)


def check_no_plain_secrets(options: Mapping[str, Any], path: str = "fsspec_open_kwargs") -> None:
    """Refuse plain strings where a secret belongs, so a recipe cannot carry a credential by value."""
    for k, v in options.items():
        where = f"{path}[{k!r}]"
        if isinstance(v, Mapping):
            check_no_plain_secrets(v, where)
        elif k == "auth" and isinstance(v, list | tuple):
            if len(v) != 2 or not isinstance(v[1], Secret):
                raise TypeError(f"{where} must be (username, Secret('PASSWORD_NAME'))")
        elif _SENSITIVE_KEYS.search(str(k)) and isinstance(v, str):
            raise TypeError(f"{where} looks like a credential: give it as Secret('NAME'), not by value")


def with_query_secrets(url: str, query_string_secrets: Mapping[str, str], lookup: Lookup) -> str:
    """The URL to request: the recipe's URL plus each secret query parameter's value."""
    if not query_string_secrets:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(param, lookup_secret(name, lookup)) for param, name in query_string_secrets.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def scrub(text: str, values: Iterable[str]) -> str:
    """Replace each secret value (and its URL-encoded form) in ``text`` by ``***``."""
    from urllib.parse import quote, quote_plus

    for v in sorted({v for v in values if v}, key=len, reverse=True):
        for form in {v, quote(v, safe=""), quote_plus(v)}:
            text = text.replace(form, REDACTED)
    return text


def redact_url(url: str) -> str:
    """Drop a password from a URL's user-info (a URL written in a recipe should carry none anyway)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:{REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
