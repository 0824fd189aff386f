"""How a recipe reaches its sources: credentials resolved from their secret names, and the one origin (or
the trusted hosts) they may be sent to.

A source's credentials (basic auth, secret headers, secret query parameters) go only to the source's own
origin (scheme, host and port). When a redirect leaves it, as data portals do towards a signed
object-store URL, they are dropped from the request that follows, unless the recipe lists the new host
in ``trusted_redirect_hosts`` (a login server that needs them, say).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from forge.io.secrets import (
    Lookup,
    Secret,
    basic_auth_forms,
    lookup_secret,
    resolve,
    secret_values,
    with_query,
)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port made explicit for http and https."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


@dataclass(frozen=True)
class SourceAccess:
    """Resolved credentials for one recipe's sources, and where they may go."""

    auth: tuple[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    secret_headers: frozenset[str] = frozenset()  # lower-case names of the headers that carry a secret
    query: tuple[tuple[str, str], ...] = ()  # secret query parameters, added to every request
    trusted_hosts: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)  # the rest, for fsspec (non-HTTP sources)
    secrets: tuple[str, ...] = ()  # every form of every value, to scrub from messages

    @classmethod
    def resolve(
        cls,
        open_kwargs: Mapping[str, Any],
        query_string_secrets: Mapping[str, str],
        trusted_hosts: Iterable[str],
        lookup: Lookup,
    ) -> SourceAccess:
        """From a pattern's ``fsspec_open_kwargs`` and ``query_string_secrets`` (secret names only)."""
        options = dict(open_kwargs)
        auth = options.pop("auth", None)
        given_headers = dict(options.pop("headers", None) or {})
        secrets = secret_values([options, given_headers], lookup)
        if auth:
            user, password = auth[0], resolve(auth[1], lookup)
            auth = (user, password)
            secrets += basic_auth_forms(user, password)
        query = tuple((param, lookup_secret(name, lookup)) for param, name in query_string_secrets.items())
        secrets += [value for _, value in query]
        return cls(
            auth=auth,
            headers=resolve(given_headers, lookup),
            secret_headers=frozenset(k.lower() for k, v in given_headers.items() if isinstance(v, Secret)),
            query=query,
            trusted_hosts=frozenset(h.lower() for h in trusted_hosts),
            options=resolve(options, lookup),
            secrets=tuple(dict.fromkeys(s for s in secrets if s)),
        )

    def url(self, url: str) -> str:
        """The URL to request: ``url`` with the secret query parameters added."""
        return with_query(url, self.query)

    def may_receive(self, first_url: str, url: str) -> bool:
        """Whether a request for ``first_url`` redirected to ``url`` may carry the credentials."""
        return origin(url) == origin(first_url) or origin(url)[1] in self.trusted_hosts
