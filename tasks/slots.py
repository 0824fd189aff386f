"""Download slots: one global Prefect concurrency limit per source host, whose slots a run holds for its
cache stage, and what a run waiting for them says while it waits."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.runtime import flow_run

# The slots of a run that dies without releasing them (killed, out of memory, its node gone) come back
# when their lease expires and the server's repossessor (every 15 s) sees it: Prefect's default of 300 s
# held every later run of the source that long. The lease is renewed every 45 s while the run lives, one
# small API call.
SLOT_LEASE_SECONDS = 60
# A run waiting for slots says so this often: which limit, how long, and who holds it.
WAIT_REPORT_SECONDS = 25
ACQUIRED, RELEASED = "prefect.concurrency-limit.acquired", "prefect.concurrency-limit.released"


def host_limit_name(host: str) -> str:
    return f"source-host:{host}"


@contextlib.contextmanager
def source_host_slots(windows: Mapping[str, int]) -> Iterator[None]:
    """Hold ``windows[host]`` slots of each host's limit while the cache stage runs.

    Taken once per run by the flow, not once per batch by its task: every acquisition is a write to the
    Prefect database, and on SQLite concurrent writes make the server answer 503, which the client retries
    after 2 s (it doubled the cache stage of 16,500 tiny inputs). Hosts in sorted order, so two runs that
    share hosts never hold one each and wait for the other. A failed lease renewal only logs: a long cache
    stage is not killed for it.
    """
    log = get_run_logger()  # the flow run's log: where users look when another run holds the slots
    with contextlib.ExitStack() as stack:
        for host in sorted(windows):
            log.info("taking %d download slots of %s", windows[host], host_limit_name(host))
            _take(stack, host_limit_name(host), windows[host], log)
        yield


def _take(stack: contextlib.ExitStack, name: str, slots: int, log: logging.LoggerAdapter) -> None:
    """Wait for the slots, saying every :data:`WAIT_REPORT_SECONDS` who holds them (from a thread of its
    own: Prefect's client logs a failure of its own for every acquisition that times out)."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
    taken = threading.Event()
    t0 = time.monotonic()

    def report() -> None:
        while not taken.wait(WAIT_REPORT_SECONDS):
            try:
                held = usage(name)
            except Exception as e:  # the report must not end the run that waits
                held = f"who holds them is unknown ({type(e).__name__})"
            waited = time.monotonic() - t0
            log.warning("waited %.0f s for %d download slots of %s: %s", waited, slots, name, held)

    reporter = threading.Thread(target=contextvars.copy_context().run, args=(report,), daemon=True)
    reporter.start()
    try:
        stack.enter_context(
            concurrency(
                name,
                occupy=slots,
                strict=True,  # a missing limit is a setup bug, not a reason to run unthrottled
                lease_duration=SLOT_LEASE_SECONDS,
                holder=holder,
                raise_on_lease_renewal_failure=False,
            )
        )
    finally:
        taken.set()
        reporter.join()
    if (waited := time.monotonic() - t0) > WAIT_REPORT_SECONDS:
        log.info("took %d download slots of %s after %.0f s", slots, name, waited)


def usage(name: str) -> str:
    """How many of the limit's slots are taken, and by which flow runs, as far as Prefect's events tell
    (a holder's acquisition with no release since, while the run has not ended)."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        text = f"{limit.active_slots} of {limit.limit} in use"
        resource = EventResourceFilter(id=[f"prefect.concurrency-limit.{limit.id}"])
        names = EventNameFilter(name=[ACQUIRED, RELEASED])
        since = EventOccurredFilter(since=datetime.now(UTC) - timedelta(days=1))
        found = client.read_events(
            EventFilter(event=names, resource=resource, occurred=since), limit=50
        ).events
        released = {e.follows for e in found if e.event == RELEASED}
        runs = {}
        for event in found:
            if event.event == ACQUIRED and event.id not in released:
                for related in event.related:
                    if related.role == "flow-run" and related.id.startswith("prefect.flow-run."):
                        runs[related.id.removeprefix("prefect.flow-run.")] = related.name
        holders = []
        for run_id, run_name in runs.items():
            with contextlib.suppress(Exception):  # deleted since
                state = client.read_flow_run(run_id).state
                if state is not None and not state.is_final():
                    holders.append(f"'{run_name}' ({state.name}, flow run {run_id})")
    return text + (f"; held by {', '.join(holders)}" if holders else "")
