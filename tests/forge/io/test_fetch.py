"""Fetching against a real loopback server: retries, permanent failures, secrets kept out of messages."""

from pathlib import Path

import pytest
import requests

from forge.io.access import SourceAccess
from forge.io.fetch import PermanentSourceError, RetryPolicy, SourceSession, TransientSourceError, download
from forge.replicas.server import SourceServer
from forge.testing import assert_no_secret, secret_forms

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
        access = SourceAccess.resolve({}, {"token": "API_TOKEN"}, (), lambda n: "tok-SECRET-123")
        assert "tok-SECRET-123" in access.url(f"{srv.url}/x.nc")
        with pytest.raises(PermanentSourceError) as err:
            download(
                f"{srv.url}/x.nc", tmp_path / "o", display_url=f"{srv.url}/x.nc", access=access, policy=FAST
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
        with SourceSession() as session:
            for i in range(3):
                download(f"{origin.url}/b.nc", tmp_path / f"o{i}", display_url="b.nc", session=session)
                assert (tmp_path / f"o{i}").read_bytes() == b"through the proxy"
        assert len(lookups) == 1 and proxy.requests["/b.nc"] == 3 and origin.requests["/b.nc"] == 0
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with SourceSession() as session:
            download(f"{origin.url}/b.nc", tmp_path / "direct", display_url="b.nc", session=session)
        assert (tmp_path / "direct").read_bytes() == b"from the origin" and origin.requests["/b.nc"] == 1


TOKEN, KEY, PASSWORD = "Zq9+Tok/en=SECRET", "key-SECRET-55", "pw-SECRET-77"


FORMS = secret_forms(TOKEN, KEY, PASSWORD, basic_auth=("alice", PASSWORD))


def assert_no_secret_in(text: str) -> None:
    assert_no_secret(text, FORMS, f"in: {text[:2000]}")


@pytest.fixture
def redirecting(tmp_path: Path):
    """An origin that checks every credential and redirects to a second origin (a signed object-store
    URL, say), re-encoding the query as some servers do ('/' left literal, '+' as %2B). The second
    origin fails twice before it serves, so the retries log their reasons."""
    from urllib.parse import parse_qsl, quote

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.nc").write_bytes(b"y" * 1000)
    (tmp_path / "origin").mkdir()
    other = SourceServer(root=tmp_path / "other", faults={"/a.nc": ["503", "503"]})

    def redirect(path: str, query: str) -> str:
        echoed = "&".join(f"{k}={quote(v, safe='/')}" for k, v in parse_qsl(query))
        return f"{other.url}{path}?{echoed}&sig=abc"

    origin = SourceServer(
        root=tmp_path / "origin",
        basic_auth=("alice", PASSWORD),
        required_query={"token": TOKEN},
        redirect=redirect,
    )
    with other, origin:
        yield origin, other


def access_for(trusted: tuple[str, ...] = ()) -> SourceAccess:
    from forge.io.secrets import Secret

    values = {"TOKEN": TOKEN, "KEY": KEY, "PASSWORD": PASSWORD}
    return SourceAccess.resolve(
        {"auth": ("alice", Secret("PASSWORD")), "headers": {"X-Api-Key": Secret("KEY")}},
        {"token": "TOKEN"},
        trusted,
        values.get,
    )


def test_credentials_never_follow_a_redirect_to_another_origin(redirecting, tmp_path, caplog):
    from forge.io.fetch import source_exists

    origin, other = redirecting
    access = access_for()
    caplog.set_level("DEBUG")
    size = download(f"{origin.url}/a.nc", tmp_path / "out", display_url="a.nc", access=access, policy=FAST)
    assert size == 1000 and other.requests["/a.nc"] == 3 and origin.requests["/a.nc"] == 3
    assert source_exists(f"{origin.url}/a.nc", display_url="a.nc", access=access, policy=FAST)
    assert [m for m, *_ in other.seen] == ["GET", "GET", "GET", "HEAD"]
    for _, _, query, headers in other.seen:  # what reached the other origin
        assert "authorization" not in {h.lower() for h in headers} and "x-api-key" not in {
            h.lower() for h in headers
        }
        assert query == "sig=abc"
        assert_no_secret_in(repr(headers) + query)
    # the origin got every credential
    _, _, query, headers = origin.seen[0]
    assert headers["X-Api-Key"] == KEY and "token=" in query
    assert "503 (redirected to" in caplog.text  # the retries said where they went...
    assert_no_secret_in(caplog.text)  # ... without a secret


def test_a_trusted_redirect_host_receives_the_credentials(redirecting, tmp_path):
    origin, other = redirecting
    download(
        f"{origin.url}/a.nc",
        tmp_path / "out",
        display_url="a.nc",
        access=access_for(("127.0.0.1",)),
        policy=FAST,
    )
    _, _, _, headers = other.seen[-1]
    assert headers["X-Api-Key"] == KEY and headers["Authorization"].startswith("Basic ")


def test_every_form_of_a_secret_is_scrubbed():
    from forge.io.secrets import scrub

    assert_no_secret_in(scrub(" | ".join(FORMS), access_for().secrets))
