"""Pages as a person sees them: Debian's headless Chromium, after the page's scripts have run."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

# Tall: pages that list things (Prefect's runs) render only the rows in view.
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--virtual-time-budget=15000",
    "--window-size=1400,2400",
]


def chromium() -> str:
    """The browser; without it the test is skipped on a developer's machine, and fails in CI, which
    installs it (.ci/run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed")
    return found


def rendered(url: str, screenshot: Path | None = None, showing: str | None = None) -> str:
    """The page's DOM once its scripts have rendered it; ``screenshot``: also a PNG of it there.

    ``showing``: text the page shows once its data has loaded. Chromium's virtual time can run out
    before the page's API calls answer on a loaded machine, so the page is loaded again (three times at
    most) until the text is there.
    """
    for _ in range(3):
        command = [chromium(), *BROWSER_FLAGS, "--dump-dom", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        if showing is None or showing in done.stdout:
            break
    if screenshot is not None:
        shot = [chromium(), *BROWSER_FLAGS, f"--screenshot={screenshot}", url]
        subprocess.run(shot, capture_output=True, timeout=120, check=True)
    return done.stdout


@dataclass
class Inspection:
    """What a page gave once loaded: the value of the script run in it, and its console's errors (script
    errors, console.error calls, resources that failed to load)."""

    value: Any
    errors: list[str] = field(default_factory=list)


class _DevTools:
    """Chromium's DevTools protocol over its page's websocket: one command at a time, events kept."""

    def __init__(self, socket: ClientConnection):
        self.socket, self.events, self.next_id = socket, [], 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
        return found


@contextlib.contextmanager
def _devtools() -> Iterator[_DevTools]:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        flags = [f for f in BROWSER_FLAGS if not f.startswith("--virtual-time")]
        command = [
            chromium(),
            *flags,
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        browser = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (active.exists() and active.read_text().count("\n") >= 1):
                assert time.monotonic() < deadline and browser.poll() is None, "chromium did not start"
                time.sleep(0.1)
            port = active.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=2**26) as socket:
                yield _DevTools(socket)
        finally:  # the browser and its helper processes
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=30)


def inspected(url: str, script: str, screenshot: Path | None = None) -> Inspection:
    """Open ``url`` in headless Chromium, wait for it to load (images included), and return the value of
    ``script`` (a JavaScript expression) and the console's errors; ``screenshot``: a PNG of the whole page."""
    with _devtools() as tools:
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=url)
        tools.wait_for("Page.loadEventFired")
        value = tools.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value")
        if screenshot is not None:
            shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return Inspection(value, tools.errors())
