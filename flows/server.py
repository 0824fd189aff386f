"""The Prefect API server of runs from this machine: one kept between runs, or one per process.

``forge run`` without ``PREFECT_API_URL`` uses a server it keeps: the first run starts it in the
background (8-10 s on 2 cores), every later run finds it at once, and ``forge server stop`` ends it. Its
address is recorded in ``$PREFECT_HOME/forge-server.json``; a recorded server that is gone, or that
answers as something else (another Prefect home, another Prefect version, another program on its port),
is left alone and a new one is started. The server is what ``prefect server start`` runs
(flows/runtime/api_server.py): the API, the UI and the background services, its SQLite database and its
concurrency leases under ``PREFECT_HOME`` (so a dead run's download slots come back even across a restart
of the server). A kept server and its workers stop by themselves after FORGE_SERVER_IDLE_TIMEOUT without
use (default 3 h), or once their ``PREFECT_HOME`` is deleted; every one this user started is listed in
``stacks_dir()``, for ``forge server status|stop --all``.

Tests and benchmarks use :class:`PrefectServer` for a server that lives as long as they do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

STATE_FILE = "forge-server.json"
CLUSTER_FILE = "forge-cluster.json"
BOOT_TIMEOUT = 120.0
SERVER_MODULE = "flows.runtime.api_server"
CLUSTER_MODULE = "flows.runtime.kept_cluster"
DEFAULT_IDLE_TIMEOUT = "3h"
# Leases kept on disk, not in the server's memory: slots a killed run held are repossessed when its lease
# expires, even if the server was restarted meanwhile (in memory they would stay taken for good).
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_home() -> Path:
    """PREFECT_HOME, as Prefect resolves it by default; without importing Prefect (a second, on the way
    to a run's first download)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


def prefect_version() -> str:
    return importlib.metadata.version("prefect")


def idle_timeout() -> float:
    """FORGE_SERVER_IDLE_TIMEOUT in seconds (``90``, ``45s``, ``30m``, ``3h``; ``0``: never)."""
    text = (os.environ.get("FORGE_SERVER_IDLE_TIMEOUT") or DEFAULT_IDLE_TIMEOUT).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 1)
    try:
        return float(text.rstrip("smh")) * scale
    except ValueError:
        message = f"FORGE_SERVER_IDLE_TIMEOUT={text!r}: give seconds, or a number with s, m or h"
        raise SystemExit(message) from None


def stacks_dir() -> Path:
    """Where every kept server and cluster this user started is listed (``forge server status --all``)."""
    state = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(state).expanduser() / "forge" / "stacks"


class PrefectServer:
    """A Prefect API server in a subprocess on loopback (SQLite under PREFECT_HOME, as Prefect's own).

    ``detached``: in a session of its own, writing to ``log``, so that it outlives this process.
    """

    def __init__(
        self, port: int | None = None, *, ui: bool = False, idle: float = 0, home: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.ui = ui
        self.idle = idle
        self.home = home or prefect_home()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, *, detached: bool = False, log: Path | None = None) -> PrefectServer:
        """Launched without importing the server package into this process (about 3 s) and without
        waiting for it, so that the Dask workers start, and import what their tasks need, while it boots.
        Its settings come from the environment (and Prefect's profile), as any Prefect server's do; its
        host and port are where it listens, so that the UI's pages call this server's API."""
        env = {
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "1" if self.ui else "0",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT__SERVER_EPHEMERAL", None)
        command = [sys.executable, "-m", SERVER_MODULE, str(self.port), str(self.home), str(self.idle)]
        output = open(log, "ab") if log else None  # noqa: SIM115  (the server's, for its whole life)
        try:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL if detached else None,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=detached,
            )
        finally:
            if output:
                output.close()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API answers its health check."""
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"the Prefect server on port {self.port} exited (code {code})")
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the Prefect server on port {self.port} did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@dataclass(frozen=True)
class KeptServer:
    """A server kept between runs, as its state file records it."""

    pid: int
    port: int
    home: str
    version: str
    started: float  # time.time() when it was launched

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers_as_ours(self) -> bool:
        """The process on its port is a Prefect server of this home and this Prefect version."""
        try:
            with httpx.Client(timeout=2) as client:
                settings = client.get(f"{self.api_url}/admin/settings").json()
                version = client.get(f"{self.api_url}/admin/version").json()
        except (httpx.HTTPError, ValueError):
            return False
        home = settings.get("home") if isinstance(settings, dict) else None
        same_home = home is not None and Path(home).expanduser().resolve() == Path(self.home)
        return same_home and version == self.version

    def booting(self) -> bool:
        """Launched a moment ago and still alive: a server that will answer soon."""
        return time.time() - self.started < BOOT_TIMEOUT and _is_server_process(self.pid)

    def wait_ready(self) -> KeptServer:
        """Block until it answers (it may have been launched by this command or by another one)."""
        while not self.answers_as_ours():
            if not self.booting():
                raise RuntimeError(
                    f"the Prefect server on port {self.port} did not start: see {self.home}/forge-server.log"
                )
            time.sleep(0.1)
        return self


def _is_process(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and, where /proc tells, runs ``marker`` (not a pid reused by another)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return marker in cmdline.read_bytes().decode(errors="replace") if cmdline.exists() else True


def wait_launched(process: subprocess.Popen, marker: str, timeout: float = 10.0) -> None:
    """Until ``process`` shows ``marker`` in /proc: Popen returns as exec begins, and /proc shows an empty
    command line until the kernel has set up the new program's arguments; a pid recorded before then
    would look like another program's to the next command."""
    deadline = time.monotonic() + timeout
    while not _is_process(process.pid, marker) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _is_server_process(pid: int) -> bool:
    return _is_process(pid, SERVER_MODULE)


def _terminate(pid: int, marker: str, state: Path | None, timeout: float = 30.0) -> None:
    """Stop the session led by ``pid`` if it is still ``marker``'s, and forget its state file."""
    if _is_process(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # it leads its own session: its children too
        deadline = time.monotonic() + timeout
        while _is_process(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
    if state is not None:
        state.unlink(missing_ok=True)
    (stacks_dir() / f"{pid}.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class StackProcess:
    """A kept server or cluster, as :func:`stacks_dir` lists it."""

    kind: str  # "server" or "workers"
    pid: int
    home: str
    detail: str  # the server's UI, the workers' scheduler

    @property
    def marker(self) -> str:
        return SERVER_MODULE if self.kind == "server" else CLUSTER_MODULE


def _enlist(process: StackProcess) -> None:
    stacks_dir().mkdir(parents=True, exist_ok=True)
    (stacks_dir() / f"{process.pid}.json").write_text(json.dumps(asdict(process)))


def all_stacks() -> list[StackProcess]:
    """Every kept server and cluster this user started that still runs (the list forgets the others)."""
    found = []
    for entry in sorted(stacks_dir().glob("*.json")):
        try:
            process = StackProcess(**json.loads(entry.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _is_process(process.pid, process.marker):
            found.append(process)
        else:
            entry.unlink(missing_ok=True)
    return found


def stop_all_stacks() -> list[StackProcess]:
    """Stop every kept server and cluster this user started; those stopped (a home's state file is
    forgotten only where it still records the process stopped)."""
    stopped = all_stacks()
    for process in stopped:
        home = Path(process.home)
        server = process.kind == "server"
        recorded = _recorded(home) if server else _recorded_cluster(home)
        state = home / (STATE_FILE if server else CLUSTER_FILE)
        _terminate(process.pid, process.marker, state if recorded and recorded.pid == process.pid else None)
    return stopped


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One command at a time checks and starts the kept server of ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "forge-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recorded(home: Path) -> KeptServer | None:
    try:
        return KeptServer(**json.loads((home / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def running_server(home: Path | None = None) -> KeptServer | None:
    """The kept server of ``home`` (default: PREFECT_HOME) if it is up and ours."""
    home = home or prefect_home()
    server = _recorded(home)
    return server if server and _is_server_process(server.pid) and server.answers_as_ours() else None


def kept_server(home: Path | None = None) -> KeptServer:
    """The kept server of ``home``: the running one, or one launched now in the background. It may not
    answer yet (:meth:`KeptServer.wait_ready`): the caller starts its Dask cluster meanwhile."""
    home = home or prefect_home()
    with _locked(home):
        recorded = _recorded(home)
        # Booting: launched by another command a moment ago.
        if (
            recorded
            and _is_server_process(recorded.pid)
            and (recorded.answers_as_ours() or recorded.booting())
        ):
            return recorded
        if recorded is not None:
            _terminate(recorded.pid, SERVER_MODULE, home / STATE_FILE)  # gone, not answering as ours
        server = PrefectServer(ui=True, idle=idle_timeout(), home=home)
        server.start(detached=True, log=home / "forge-server.log")
        wait_launched(server.process, SERVER_MODULE)
        record = KeptServer(server.process.pid, server.port, str(home), prefect_version(), time.time())
        (home / STATE_FILE).write_text(json.dumps(asdict(record)))
        _enlist(StackProcess("server", record.pid, str(home), f"UI {record.ui_url}"))
        return record


@dataclass(frozen=True)
class KeptCluster:
    """A local Dask cluster kept between runs (flows/runtime/kept_cluster.py), as its state file says."""

    pid: int
    address: str
    fingerprint: str
    started: float


def worker_fingerprint(workers: int) -> str:
    """What kept workers must share with a run to serve it: the interpreter, the installed packages (their
    folders' modification times), this project's code (where it is, and its files' modification times)
    and how many workers there are. Not the folder the run starts from, nor its environment: what the
    run needs of those reaches the workers with the run (flows/runtime/runner.py, tasks/environment.py)."""
    code = Path(__file__).resolve().parents[1]
    stamps = [p.stat().st_mtime_ns for d in ("forge", "tasks", "flows") for p in (code / d).rglob("*.py")]
    folders = [
        (p, Path(p).stat().st_mtime_ns) for p in sys.path if p.endswith("-packages") and Path(p).is_dir()
    ]
    state = (sys.executable, str(code), workers, max(stamps), folders)
    return hashlib.sha256(repr(state).encode()).hexdigest()


def _recorded_cluster(home: Path) -> KeptCluster | None:
    try:
        return KeptCluster(**json.loads((home / CLUSTER_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def kept_cluster(workers: int, home: Path | None = None, timeout: float = 120.0) -> KeptCluster:
    """The scheduler address of kept workers that match this run (:func:`worker_fingerprint`), launched
    now if there are none or they do not match (the old ones are stopped), once they are up."""
    home = home or prefect_home()
    fingerprint = worker_fingerprint(workers)
    with _locked(home):
        found = _recorded_cluster(home)
        if found and found.fingerprint == fingerprint and _is_process(found.pid, CLUSTER_MODULE):
            return found
        if found is not None:
            _terminate(found.pid, CLUSTER_MODULE, home / CLUSTER_FILE)
        command = [sys.executable, "-m", CLUSTER_MODULE, str(home / CLUSTER_FILE), str(workers), fingerprint]
        command.append(str(idle_timeout()))
        with open(home / "forge-cluster.log", "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while (found := _recorded_cluster(home)) is None or found.pid != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the kept Dask workers did not start: see {home}/forge-cluster.log")
            time.sleep(0.1)
        _enlist(StackProcess("workers", found.pid, str(home), f"scheduler {found.address}"))
        return found


def stop_kept_server(home: Path | None = None) -> KeptServer | None:
    """Stop the kept server of ``home``, and its kept workers; the server stopped, None if none was kept."""
    home = home or prefect_home()
    with _locked(home):
        cluster = _recorded_cluster(home)
        if cluster is not None:
            _terminate(cluster.pid, CLUSTER_MODULE, home / CLUSTER_FILE)
        server = _recorded(home)
        if server is not None:
            _terminate(server.pid, SERVER_MODULE, home / STATE_FILE)
        return server
