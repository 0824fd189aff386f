"""Which recipe a new object belongs to, how bursts of objects coalesce, and who may announce them.

A recipe opts in with ``update: {trigger: ...}`` in its meta.yaml: one rule or a list of rules, each with
a ``prefix`` of object names and optionally a ``bucket`` (default: any bucket that notifies this
receiver) and a ``suffix``. New objects are grouped per recipe over a short window, so a burst of files
becomes one append run, not one run per file.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from forge.events.notifications import ObjectCreated


def recipe_resource(recipe_id: str) -> dict[str, str]:
    """The Prefect resource a recipe's events are about (automations match on its id): new source
    files (the receiver's), new data published (a run's)."""
    return {"prefect.resource.id": f"forge.recipe.{recipe_id}", "prefect.resource.name": recipe_id}


class TriggerConfigError(ValueError):
    pass


class Unauthorized(Exception):
    """The request did not prove it comes from the configured sender (the sender gets a 401)."""


@dataclass(frozen=True)
class TriggerRule:
    recipe_id: str
    prefix: str
    bucket: str | None = None
    suffix: str = ""

    def matches(self, obj: ObjectCreated) -> bool:
        return (
            (self.bucket is None or self.bucket == obj.bucket)
            and obj.key.startswith(self.prefix)
            and obj.key.endswith(self.suffix)
        )


def rules_from_meta(recipe_id: str, meta: Mapping[str, Any]) -> list[TriggerRule]:
    """The trigger rules in one recipe's meta.yaml (``update.trigger``), checked."""
    spec = (meta.get("update") or {}).get("trigger")
    if spec is None:
        return []
    rules = []
    for entry in spec if isinstance(spec, list) else [spec]:
        if not isinstance(entry, dict) or not isinstance(entry.get("prefix"), str):
            raise TriggerConfigError(f"{recipe_id}: update.trigger needs a prefix (got {entry!r})")
        unknown = set(entry) - {"prefix", "bucket", "suffix"}
        if unknown:
            raise TriggerConfigError(f"{recipe_id}: update.trigger has unknown fields {sorted(unknown)}")
        rules.append(TriggerRule(recipe_id, entry["prefix"], entry.get("bucket"), entry.get("suffix", "")))
    return rules


def route(objects: Iterable[ObjectCreated], rules: Sequence[TriggerRule]) -> dict[str, list[ObjectCreated]]:
    """The objects each recipe should append (an object can feed several recipes); unmatched ones drop."""
    out: dict[str, list[ObjectCreated]] = {}
    for obj in objects:
        for recipe_id in dict.fromkeys(r.recipe_id for r in rules if r.matches(obj)):
            out.setdefault(recipe_id, []).append(obj)
    return out


@dataclass
class Coalescer:
    """Collects objects per recipe and releases each recipe's batch ``window`` seconds after its first
    object arrived: a burst of files becomes one batch. Duplicate deliveries are merged."""

    window: float
    clock: Callable[[], float]
    _pending: dict[str, dict[ObjectCreated, None]] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, recipe_id: str, objects: Iterable[ObjectCreated]) -> None:
        with self._lock:
            self._pending.setdefault(recipe_id, {}).update(dict.fromkeys(objects))
            self._due.setdefault(recipe_id, self.clock() + self.window)

    def take_due(self, everything: bool = False) -> list[tuple[str, list[ObjectCreated]]]:
        """The batches whose window has passed (all of them with ``everything``), removed from the queue."""
        now = self.clock()
        with self._lock:
            ready = [r for r, due in self._due.items() if everything or due <= now]
            for r in ready:
                del self._due[r]
            return [(r, list(self._pending.pop(r))) for r in ready]


def check_token(expected: str, given: str | None) -> None:
    """The shared secret, compared in constant time."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Unauthorized("missing or wrong X-Forge-Token")


@dataclass(frozen=True)
class OidcCheck:
    """Pub/Sub push authentication: a Google-signed OIDC token for ``audience``, from ``email``."""

    audience: str
    email: str
    certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"

    def __call__(self, authorization: str | None) -> None:
        from google.auth import exceptions
        from google.auth.transport import requests as google_requests
        from google.oauth2 import id_token

        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer token")
        try:
            claims = id_token.verify_token(
                token, google_requests.Request(), audience=self.audience, certs_url=self.certs_url
            )
        except (ValueError, exceptions.GoogleAuthError) as e:
            raise Unauthorized(f"invalid token: {type(e).__name__}") from None
        if claims.get("iss") not in ("https://accounts.google.com", "accounts.google.com"):
            raise Unauthorized("token not issued by Google")
        if claims.get("email") != self.email or not claims.get("email_verified"):
            raise Unauthorized("token is not from the configured push service account")
