"""How stale a dataset is: its last update against its schedule and its ``stale_after`` window (pure).

meta.yaml's ``update: {schedule: {cron: ...}, stale_after: 36h, notify: custom-webhook/forge-alerts}``:
``forge deploy`` turns ``stale_after`` into a Prefect automation that notifies through the named block
when no update came within the window (:mod:`flows.alerts`); ``forge catalog`` shows each dataset's
last update and the scheduled updates it missed (:func:`describe`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim

from forge.errors import RecipeError

DURATION = re.compile(r"^(\d+)\s*([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
UPDATED = "forge.recipe.updated"  # the event a run emits when it published new data


def duration(text: str) -> dt.timedelta:
    """``"36h"``, ``"2d"``, ``"90m"``, ``"30s"`` as a timedelta.

    Examples
    --------
    >>> duration("36h")
    datetime.timedelta(days=1, seconds=43200)
    """
    found = DURATION.match(str(text).strip())
    if not found:
        raise RecipeError(
            f"meta.yaml: update.stale_after must be a number and a unit (s, m, h, d), not {text!r}"
        )
    return dt.timedelta(**{UNITS[found[2]]: int(found[1])})


@dataclass(frozen=True)
class Staleness:
    last_update: dt.datetime | None
    missed: int  # scheduled updates since the last one (0: on time)
    behind: dt.timedelta  # since the first missed one
    stale: bool  # older than stale_after


def staleness(
    last_update: dt.datetime | None,
    now: dt.datetime,
    cron: str | None = None,
    timezone: str = "UTC",
    stale_after: dt.timedelta | None = None,
) -> Staleness:
    """How far ``last_update`` is behind the schedule ``cron`` (in ``timezone``) at ``now``.

    Examples
    --------
    >>> now, last = dt.datetime(2026, 12, 7, 7, tzinfo=dt.UTC), dt.datetime(2026, 12, 5, 6, 5, tzinfo=dt.UTC)
    >>> s = staleness(last, now, "0 6 * * *", stale_after=dt.timedelta(hours=36))
    >>> s.missed, s.behind, s.stale
    (2, datetime.timedelta(days=1, seconds=3600), True)
    """
    if last_update is None:
        return Staleness(None, 0, dt.timedelta(0), stale_after is not None)
    missed, first_missed = 0, None
    if cron:
        for tick in CronSim(cron, now.astimezone(ZoneInfo(timezone)), reverse=True):
            if tick <= last_update:
                break
            missed, first_missed = missed + 1, tick
            if missed >= 1000:
                break
    behind = now - first_missed if first_missed is not None else dt.timedelta(0)
    stale = stale_after is not None and now - last_update > stale_after
    return Staleness(last_update, missed, behind, stale)


def describe(collection: Mapping[str, Any], now: dt.datetime) -> str | None:
    """A catalog line on a dataset's freshness, from its Collection's ``forge:updated``,
    ``forge:update_schedule`` and ``forge:stale_after`` (None for a dataset with no schedule or window)."""
    schedule = collection.get("forge:update_schedule") or {}
    window = collection.get("forge:stale_after")
    updated = collection.get("forge:updated")
    if not schedule and not window:
        return None
    last = dt.datetime.fromisoformat(updated) if updated else None
    state = staleness(
        last, now, schedule.get("cron"), schedule.get("timezone", "UTC"), duration(window) if window else None
    )
    age = f"{_span(now - last)} ago" if last else "never"
    parts = [f"last update {updated[:16] if updated else 'never'} ({age})"]
    if schedule:
        parts.append(
            "on schedule"
            if not state.missed
            else f"{state.missed} scheduled update(s) missed, {_span(state.behind)} behind"
        )
    if state.stale:
        parts.append(f"STALE (no update within {window})")
    return "; ".join(parts)


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"
