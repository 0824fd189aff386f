"""Secrets are named in recipes, never written in them; values are looked up only when a source is fetched.

A :class:`Secret` holds a *name*. :func:`resolve` replaces each one by its value through a lookup function
(by default the environment; the Prefect tasks add Prefect Secret blocks). :func:`scrub` removes known
secret values from any text before it reaches a log, an error message or an artifact.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from forge.errors import ForgeError

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


class MissingSecretError(ForgeError, LookupError):
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


def with_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    """``url`` with ``params`` added to its query string."""
    params = list(params)
    if not params:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


def without_query(url: str, names: Iterable[str], values: Iterable[str] = ()) -> str:
    """``url`` without the query parameters called ``names`` or holding one of ``values``."""
    names, values = set(names), {v for v in values if v}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k not in names and v not in values]
    return url if kept == query else urlunsplit(parts._replace(query=urlencode(kept)))


def _pattern(value: str) -> str:
    """A regular expression for ``value`` in every form a URL, a header or a log can carry it: each
    character as itself or percent-encoded (any safe set, either case of hex, the ``%`` itself encoded
    again), a space also as ``+``, a slash also JSON-escaped."""
    parts = []
    for ch in value:
        forms = [re.escape(ch), "".join(f"%(?:25)?{b:02x}" for b in ch.encode())]
        if ch == " ":
            forms.append(r"\+")
        if ch == "/":
            forms.append(r"\\/")
        parts.append("(?:" + "|".join(forms) + ")")
    return "".join(parts)


def scrub(text: str, values: Iterable[str]) -> str:
    """Replace every form of each secret value in ``text`` by ``***`` (see :func:`_pattern`; add the
    base64 of ``user:password`` to ``values`` for basic auth: :func:`basic_auth_forms`).

    Examples
    --------
    >>> scrub("GET /f.nc?token=a%2Bb%2fc&x=1 and a+b/c", ["a+b/c"])
    'GET /f.nc?token=***&x=1 and ***'
    """
    values = sorted({v for v in values if v}, key=len, reverse=True)
    if not values:
        return text
    return re.sub("|".join(_pattern(v) for v in values), REDACTED, text, flags=re.IGNORECASE)


def basic_auth_forms(user: str, password: str) -> list[str]:
    """What to scrub for basic auth: the password, and the ``Authorization`` header's base64 of
    ``user:password`` (standard and URL-safe alphabets)."""
    pair = f"{user}:{password}".encode()
    return [password, base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()]


_URL_QUERY = re.compile(r"((?:[a-z][a-z0-9+.-]*://|/)[^\s'\"?#]*)\?[^\s'\")#]*", re.IGNORECASE)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", re.IGNORECASE)


def without_url_secrets(text: str) -> str:
    """``text`` with the query strings and user-info of the URLs and paths in it removed: what the fetch
    layer does to messages it did not write (a library's error naming a redirect target, say).

    Examples
    --------
    >>> without_url_secrets("Max retries exceeded with url: /a.nc?sig=XYZ (https://u:p@host/b?c=d)")
    'Max retries exceeded with url: /a.nc (https://host/b)'
    """
    return _URL_USERINFO.sub(r"\1", _URL_QUERY.sub(r"\1", text))


def redact_url(url: str) -> str:
    """Drop a password from a URL's user-info (a URL written in a recipe should carry none anyway)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:{REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
