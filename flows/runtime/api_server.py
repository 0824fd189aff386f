"""A Prefect server as ``prefect server start`` runs it, that tidies up after itself:
``python -m flows.runtime.api_server PORT HOME IDLE_SECONDS``.

Prefect's own app (the API, the UI and the background services: the scheduler, late runs, the lease
repossessor, events and automations) under uvicorn on loopback, plus a watchdog that ends the server when
its PREFECT_HOME is deleted, or when no request has reached it for IDLE_SECONDS (0: never). Its settings
come from the environment, which flows/server.py prepares.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

CHECK_EVERY = 2.0

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Activity:
    """The app, noting when it last received a request: a flow run, a worker polling for runs, the UI
    open in a browser, a ``forge`` command. Prefect's services reach the database directly, not here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.last = time.monotonic()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            self.last = time.monotonic()
        await self.app(scope, receive, send)


def why_stop(home: Path, activity: Activity, idle: float) -> str | None:
    """Why the server should end now, if it should."""
    if not home.exists():
        return f"its PREFECT_HOME {home} is gone"
    quiet = time.monotonic() - activity.last
    if idle and quiet > idle:
        return f"no request for {quiet:.0f} s (idle limit {idle:.0f} s)"
    return None


def watch(server: Any, home: Path, activity: Activity, idle: float) -> None:
    while not server.started and not server.should_exit:  # idle from the moment it serves, not before
        time.sleep(0.1)
    activity.last = time.monotonic()
    while not server.should_exit:
        if reason := why_stop(home, activity, idle):
            print(f"forge: stopping the Prefect server: {reason}", flush=True)
            server.should_exit = True
            return
        time.sleep(CHECK_EVERY)


def main(port: int, home: Path, idle: float) -> None:
    import uvicorn
    from prefect.server.api.server import create_app

    activity = Activity(create_app(final=True))
    config = uvicorn.Config(activity, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    threading.Thread(target=watch, args=(server, home, activity, idle), daemon=True).start()
    server.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))
