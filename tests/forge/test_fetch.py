"""Fetching against a real loopback server: retries, permanent failures, secrets kept out of messages."""

from pathlib import Path

import pytest
import requests

from forge.io.fetch import HostSession, PermanentSourceError, RetryPolicy, TransientSourceError, download
from forge.io.secrets import with_query_secrets
from forge.replicas.server import SourceServer

FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, timeout=5)


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.nc").write_bytes(b"x" * 100_000)
    srv = SourceServer(root=tmp_path / "src", faults={"/a.nc": ["503", "reset", "truncate", "429"]})
    with srv:
        yield srv


def test_transient_failures_are_retried_to_success(server, tmp_path):
    dest = tmp_path / "out"
    size = download(f"{server.url}/a.nc", dest, display_url="a.nc", policy=FAST)
    assert size == 100_000 and dest.read_bytes() == b"x" * 100_000
    assert server.requests["/a.nc"] == 5  # 4 faults, then success


def test_gives_up_after_the_policy_attempts(server, tmp_path):
    with pytest.raises(TransientSourceError, match="gave up after 3 attempts"):
        download(
            f"{server.url}/a.nc",
            tmp_path / "out",
            display_url="a.nc",
            policy=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01),
        )
    assert not (tmp_path / "out").exists()


def test_404_fails_at_once_with_the_url(server, tmp_path):
    with pytest.raises(PermanentSourceError, match=r"/missing.nc: HTTP 404"):
        download(
            f"{server.url}/missing.nc", tmp_path / "out", display_url=f"{server.url}/missing.nc", policy=FAST
        )
    assert server.requests["/missing.nc"] == 1


def test_query_secret_never_in_messages(tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    monkeypatch.setenv("API_TOKEN", "tok-SECRET-123")
    with SourceServer(root=tmp_path / "s", required_query={"token": "wrong"}) as srv:
        url = with_query_secrets(f"{srv.url}/x.nc", {"token": "API_TOKEN"}, lambda n: "tok-SECRET-123")
        assert "tok-SECRET-123" in url
        with pytest.raises(PermanentSourceError) as err:
            download(
                url, tmp_path / "o", display_url=f"{srv.url}/x.nc", secrets=["tok-SECRET-123"], policy=FAST
            )
    assert "HTTP 403" in str(err.value) and "SECRET" not in str(err.value)


def test_a_host_session_takes_proxies_from_the_environment_once(tmp_path, monkeypatch):
    """A proxy here is a second loopback server: it answers for the absolute URLs it is sent."""
    for name, body in (("origin", b"from the origin"), ("proxy", b"through the proxy")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "b.nc").write_bytes(body)
    lookups = []
    real = requests.sessions.get_environ_proxies
    monkeypatch.setattr(
        requests.sessions, "get_environ_proxies", lambda *a, **k: lookups.append(a) or real(*a, **k)
    )
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with SourceServer(root=tmp_path / "origin") as origin, SourceServer(root=tmp_path / "proxy") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with HostSession() as session:
            for i in range(3):
                download(f"{origin.url}/b.nc", tmp_path / f"o{i}", display_url="b.nc", session=session)
                assert (tmp_path / f"o{i}").read_bytes() == b"through the proxy"
        assert len(lookups) == 1 and proxy.requests["/b.nc"] == 3 and origin.requests["/b.nc"] == 0
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with HostSession() as session:
            download(f"{origin.url}/b.nc", tmp_path / "direct", display_url="b.nc", session=session)
        assert (tmp_path / "direct").read_bytes() == b"from the origin" and origin.requests["/b.nc"] == 1
