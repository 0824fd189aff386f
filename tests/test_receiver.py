"""The receiver on its own: notification formats, authentication, routing and coalescing.

The end-to-end path (receiver -> Prefect event -> automation -> append run) is in
tests/integration/test_triggers_run.py; here the emit step is recorded instead.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from google.auth import crypt, jwt

from flows.receiver import Authenticator, create_app, load_rules
from forge.events.notifications import NotificationError, ObjectCreated, parse_notification
from forge.events.triggers import (
    Coalescer,
    OidcCheck,
    TriggerConfigError,
    TriggerRule,
    route,
    rules_from_meta,
)
from forge.replicas.server import SourceServer

TOKEN = "s3cr3t-token-value"
KEY = "noaa-oisst/202409/oisst-avhrr-v02r01.20240901.nc"


def s3_record(key: str, bucket: str = "landing", name: str = "ObjectCreated:Put") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
    }


def sqs_delivery(*keys: str) -> dict:
    """S3 -> SQS, as Lambda's SQS event source (and our docs' forwarder) delivers it."""
    return {
        "Records": [
            {"messageId": f"m{i}", "eventSource": "aws:sqs", "body": json.dumps({"Records": [s3_record(k)]})}
            for i, k in enumerate(keys)
        ]
    }


def eventbridge(key: str, bucket: str = "landing") -> dict:
    return {
        "version": "0",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
    }


def pubsub(key: str, bucket: str = "landing", event_type: str = "OBJECT_FINALIZE") -> dict:
    data = base64.b64encode(json.dumps({"name": key, "bucket": bucket}).encode()).decode()
    attributes = {
        "bucketId": bucket,
        "objectId": key,
        "eventType": event_type,
        "payloadFormat": "JSON_API_V1",
    }
    return {
        "message": {"attributes": attributes, "data": data, "messageId": "1"},
        "subscription": "projects/p/s",
    }


def event_grid(*keys: str, container: str = "landing") -> list[dict]:
    return [
        {
            "id": f"e{i}",
            "topic": "/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": f"/blobServices/default/containers/{container}/blobs/{key}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "data": {"api": "PutBlob", "url": f"https://acct.blob.core.windows.net/{container}/{key}"},
            "dataVersion": "",
            "metadataVersion": "1",
            "eventTime": "2026-11-22T06:00:00Z",
        }
        for i, key in enumerate(keys)
    ]


VALIDATION = [
    {
        "id": "v1",
        "topic": "/subscriptions/x",
        "subject": "",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        "dataVersion": "2",
        "metadataVersion": "1",
        "eventTime": "2026-11-22T06:00:00Z",
    }
]


def objects(doc) -> list[str]:
    return [o.url for o in parse_notification(json.dumps(doc).encode()).objects]


# --------------------------------------------------------------------------------------- formats


def test_every_cloud_format_reads_as_the_object_created():
    assert objects({"Records": [s3_record("a/b%2Bc+d.nc")]}) == ["s3://landing/a/b+c d.nc"]
    assert objects(sqs_delivery(KEY, KEY)) == [f"s3://landing/{KEY}"]  # duplicate deliveries merge
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [s3_record(KEY)]})}
    assert objects(sns) == [f"s3://landing/{KEY}"]
    pipes = [{"messageId": "1", "body": json.dumps(eventbridge(KEY))}]  # EventBridge Pipes from SQS
    assert objects(pipes) == [f"s3://landing/{KEY}"]
    assert objects(eventbridge(KEY)) == [f"s3://landing/{KEY}"]
    assert objects(pubsub(KEY)) == [f"gs://landing/{KEY}"]
    assert objects(event_grid(KEY, "b.nc")) == [f"az://landing/{KEY}", "az://landing/b.nc"]
    cloudevent = {"specversion": "1.0", "type": "Microsoft.Storage.BlobCreated", **event_grid(KEY)[0]}
    assert objects(cloudevent) == [f"az://landing/{KEY}"]
    assert (
        parse_notification(json.dumps(VALIDATION).encode()).validation_code
        == VALIDATION[0]["data"]["validationCode"]
    )


def test_deletions_and_test_events_are_ignored_not_errors():
    note = parse_notification(json.dumps({"Records": [s3_record(KEY, name="ObjectRemoved:Delete")]}).encode())
    assert note.objects == () and note.ignored == 1
    assert parse_notification(json.dumps(pubsub(KEY, event_type="OBJECT_DELETE")).encode()).ignored == 1
    assert parse_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": "b"}).encode()).ignored == 1


@pytest.mark.parametrize(
    "body, words",
    [
        (b"not json", "not JSON"),
        (b"[]", "empty list"),
        (b'{"hello": 1}', "not a storage notification"),
        (
            json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}).encode(),
            "s3",
        ),
        (json.dumps({"message": {"attributes": {}}, "subscription": "s"}).encode(), "bucketId"),
        (json.dumps([{**VALIDATION[0], "data": {}}]).encode(), "validationCode"),
        (json.dumps([{**event_grid(KEY)[0], "subject": "/nope", "data": {}}]).encode(), "subject"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # 200 KB: a RecursionError in json
        (b"[" * 50 + b"{}" + b"]" * 50, "nested too deeply"),  # within json's limit, beyond any envelope
        (json.dumps({"Type": "Notification", "Message": "[" * 5000 + "]" * 5000}).encode(), "SNS Message"),
        (b"\xff\xfe{}", "not JSON"),
        (b"null", "expected a JSON object"),
        (b'{"Records": [1]}', "not a JSON object"),
    ],
)
def test_malformed_notifications_say_what_is_wrong(body, words):
    with pytest.raises(NotificationError, match=words):
        parse_notification(body)


# --------------------------------------------------------------------------------------- routing


def test_rules_from_meta_and_routing():
    rules = rules_from_meta("oisst", {"update": {"trigger": {"prefix": "noaa-oisst/", "suffix": ".nc"}}})
    rules += rules_from_meta("other", {"update": {"trigger": [{"prefix": "", "bucket": "elsewhere"}]}})
    assert rules_from_meta("none", {"update": {"schedule": {"cron": "0 6 * * *"}}}) == []
    found = route(
        [
            ObjectCreated("s3", "landing", KEY),
            ObjectCreated("s3", "landing", "noaa-oisst/readme.txt"),  # wrong suffix
            ObjectCreated("gcs", "elsewhere", KEY),  # both rules
            ObjectCreated("azure", "landing", "imerg/x.nc"),  # no rule
        ],
        rules,
    )
    assert {k: [o.url for o in v] for k, v in found.items()} == {
        "oisst": [f"s3://landing/{KEY}", f"gs://elsewhere/{KEY}"],
        "other": [f"gs://elsewhere/{KEY}"],
    }
    with pytest.raises(TriggerConfigError, match="needs a prefix"):
        rules_from_meta("bad", {"update": {"trigger": {"bucket": "b"}}})
    with pytest.raises(TriggerConfigError, match="unknown fields"):
        rules_from_meta("bad", {"update": {"trigger": {"prefix": "", "regex": ".*"}}})


def test_the_committed_recipes_rules_load():
    assert TriggerRule("noaa-oisst", "noaa-oisst/", None, ".nc") in load_rules()


def test_coalescer_releases_one_batch_per_recipe_per_window():
    now = [0.0]
    c = Coalescer(window=10, clock=lambda: now[0])
    a, b = ObjectCreated("s3", "l", "a"), ObjectCreated("s3", "l", "b")
    c.add("r", [a])
    now[0] = 5
    c.add("r", [b, a])  # joins the open batch; the window does not restart
    c.add("q", [a])
    assert c.take_due() == []
    now[0] = 10
    assert c.take_due() == [("r", [a, b])]
    assert c.take_due(everything=True) == [("q", [a])]
    assert c.take_due(everything=True) == []


# --------------------------------------------------------------------------------------- the service


@pytest.fixture
def receiver():
    """The app with a recorded emit step and a 0.3 s window on a clock the test moves (a burst posted on
    a loaded machine may take longer than the window: the window closes when the test says)."""
    emitted: list[tuple[str, list[str]]] = []

    async def emit(recipe_id, objs):
        emitted.append((recipe_id, [o.url for o in objs]))

    rules = [TriggerRule("noaa-oisst", "noaa-oisst/", None, ".nc")]
    clock = ManualClock()
    app = create_app(rules, Authenticator(TOKEN, None), emit=emit, window=0.3, clock=clock)
    with TestClient(app) as client:
        yield client, emitted, clock


class ManualClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now

    def close_window(self) -> None:
        """Past the window, then long enough for the receiver's pump (every 0.075 s) to send."""
        self.now += 1.0
        time.sleep(0.3)


def wait_for(emitted: list, n: int) -> None:
    deadline = time.time() + 10
    while len(emitted) < n and time.time() < deadline:
        time.sleep(0.05)


def test_a_burst_of_notifications_becomes_one_event(receiver):
    client, emitted, clock = receiver
    auth = {"X-Forge-Token": TOKEN}
    keys = [f"noaa-oisst/202409/oisst-avhrr-v02r01.202409{d:02d}.nc" for d in range(1, 21)]
    for key in keys:
        r = client.post("/", json=eventbridge(key), headers=auth)
        assert r.status_code == 202 and r.json()["recipes"] == ["noaa-oisst"]
    r = client.post("/", json=event_grid(*keys[:3]), headers=auth)  # the same files again, from Azure
    assert r.status_code == 202
    r = client.post("/", json=event_grid("imerg/x.nc"), headers=auth)
    assert r.status_code == 202 and r.json() == {"recipes": [], "objects": 1, "unmatched": 1, "ignored": 0}
    clock.close_window()
    wait_for(emitted, 1)
    [(recipe_id, urls)] = emitted
    assert recipe_id == "noaa-oisst"
    assert urls == [f"s3://landing/{k}" for k in keys] + [f"az://landing/{k}" for k in keys[:3]]


def test_unauthenticated_or_malformed_notifications_get_4xx_and_no_event(receiver):
    client, emitted, clock = receiver
    assert client.post("/", json=eventbridge(KEY)).status_code == 401
    assert client.post("/", json=eventbridge(KEY), headers={"X-Forge-Token": "wrong"}).status_code == 401
    assert (
        client.post("/", json=eventbridge(KEY), headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    )
    assert client.post("/", content=b"{", headers={"X-Forge-Token": TOKEN}).status_code == 400
    assert client.post("/", content=b"{", headers={}).status_code == 401
    r = client.post("/", json={"what": 1}, headers={"X-Forge-Token": TOKEN})
    assert r.status_code == 400 and "not a storage notification" in r.json()["detail"]
    big = b" " * (1 << 20) + b"{}"
    assert client.post("/", content=big, headers={"X-Forge-Token": TOKEN}).status_code == 413
    assert TOKEN not in r.text
    clock.close_window()
    assert emitted == []


def test_event_grid_handshakes(receiver):
    client, emitted, _ = receiver
    code = VALIDATION[0]["data"]["validationCode"]
    for headers in ({"X-Forge-Token": TOKEN}, {}):  # with or without the delivery header
        r = client.post("/", json=VALIDATION, headers={"aeg-event-type": "SubscriptionValidation", **headers})
        assert r.status_code == 200 and r.json() == {"validationResponse": code}
    assert client.post("/", json=VALIDATION, headers={"X-Forge-Token": "wrong"}).status_code == 401
    r = client.options("/", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert r.status_code == 200 and r.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert emitted == []


def test_receiver_refuses_to_start_without_a_secret(monkeypatch):
    for name in ("FORGE_RECEIVER_TOKEN", "FORGE_RECEIVER_OIDC_AUDIENCE", "FORGE_RECEIVER_OIDC_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="FORGE_RECEIVER_TOKEN"):
        Authenticator.from_env()


# --------------------------------------------------------------------------------------- Pub/Sub OIDC

PUSHER = "forge-push@project.iam.gserviceaccount.com"


def self_signed(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA key and a certificate for it, valid from yesterday to tomorrow."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def google_like_issuer():
    """An RSA key and its certificate served the way Google serves its OIDC certs (kid -> PEM)."""
    key, cert = self_signed("test-issuer")
    certs = json.dumps({"kid1": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = crypt.RSASigner.from_string(pem, key_id="kid1")

    def token(**claims) -> str:
        t = int(time.time())
        base = {"iss": "https://accounts.google.com", "aud": "forge-receiver", "iat": t, "exp": t + 600}
        base |= {"email": PUSHER, "email_verified": True, "sub": "1"}
        return jwt.encode(signer, base | claims).decode()

    with SourceServer(generate=lambda path: certs if path == "/certs" else None) as server:
        yield server.url + "/certs", token


def test_pubsub_push_with_a_google_signed_token(google_like_issuer):
    certs_url, token = google_like_issuer
    emitted: list = []

    async def emit(recipe_id, objs):
        emitted.append(recipe_id)

    check = OidcCheck("forge-receiver", PUSHER, certs_url)
    app = create_app([TriggerRule("noaa-oisst", "noaa-oisst/")], Authenticator(None, check), emit, window=0.1)
    with TestClient(app) as client:

        def post(tok: str) -> int:
            return client.post("/", json=pubsub(KEY), headers={"Authorization": f"Bearer {tok}"}).status_code

        assert post(token(aud="someone-else")) == 401
        assert post(token(email="intruder@example.com")) == 401
        assert post(token(iss="https://evil.example.com")) == 401
        assert post(token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)) == 401
        assert post(token()[:-4] + "AAAA") == 401  # signature broken
        assert client.post("/", json=pubsub(KEY), headers={"X-Forge-Token": TOKEN}).status_code == 401
        assert emitted == []
        assert post(token()) == 202
        wait_for(emitted, 1)
    assert emitted == ["noaa-oisst"]


# --------------------------------------------------------------------------------------- hostile requests

HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,
    b"[" * 50 + b"{}" + b"]" * 50,
    b"",
    b"\xff" * 1000,
    b'{"Records": "x"}',
    b'{"Records": [{"eventSource": "aws:sqs", "body": "' + b"[" * 3000 + b'"}]}',
    json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [1] * 10_000})}).encode(),
    json.dumps([{"messageId": str(i), "body": "{}"} for i in range(2000)]).encode(),
]


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
def test_any_body_that_is_not_a_notification_gets_a_4xx(receiver, token):
    client, emitted, _ = receiver
    headers = {"X-Forge-Token": token} if token else {}
    for body in HOSTILE:
        status = client.post("/", content=body, headers=headers).status_code
        assert status == (400 if token else 401), (status, body[:60])
    assert emitted == []


def test_the_receiver_reads_no_more_than_its_limit_of_a_huge_body(tmp_path):
    """300 MB, chunked, at the real receiver under uvicorn: answered at once, its memory flat."""
    import psutil

    from tests.integration.helpers import BIN, free_port, wait_until_up

    port = free_port()
    env = {**os.environ, "FORGE_RECEIVER_TOKEN": TOKEN, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    log = tmp_path / "receiver.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "forge"), "receiver", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", server, log, "forge receiver")
        process = psutil.Process(server.pid)
        rss = [process.memory_info().rss]
        for headers, expected in ({}, 401), ({"X-Forge-Token": TOKEN}, 413):
            status, sent = post_chunked(
                port, headers, total=300 << 20, sample=lambda: rss.append(process.memory_info().rss)
            )
            assert status == expected
        growth = max(rss) - rss[0]
        assert growth < 10 << 20, f"the receiver grew by {growth >> 20} MB"
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)


def post_chunked(port: int, headers: dict, total: int, sample) -> tuple[int, int]:
    """POST ``total`` bytes of one JSON string in 1 MB chunks until the server answers or hangs up;
    (status, bytes sent)."""
    import select
    import socket

    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    chunk = b"%x\r\n" % (1 << 20) + b"a" * (1 << 20) + b"\r\n"
    sent, reply = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{head}\r\n".encode())
        s.sendall(b'1\r\n"\r\n')
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not select.select([s], [], [], 0)[0]:  # until it answers
                s.sendall(chunk)
                sent += 1 << 20
                if sent % (16 << 20) == 0:
                    sample()
        while b"\r\n" not in reply:
            reply += s.recv(4096)
    sample()
    return int(reply.split(b" ", 2)[1]), sent


def test_unmatched_objects_are_logged_by_the_first_unmatched_one(receiver, caplog):
    client, _, _ = receiver
    caplog.set_level("INFO", logger="forge.receiver")
    body = event_grid(KEY, "imerg/first-unmatched.nc", "imerg/second.nc")
    assert client.post("/", json=body, headers={"X-Forge-Token": TOKEN}).json()["unmatched"] == 2
    assert (
        "2 new objects match no recipe's trigger (first: az://landing/imerg/first-unmatched.nc)"
        in caplog.text
    )


# --------------------------------------------------------------------------------------- SNS over HTTPS

TOPIC = "arn:aws:sns:us-east-1:123456789012:forge-landing"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
SUBSCRIBE_URL = f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=t0k"


@pytest.fixture(scope="module")
def sns_signer():
    """A signing key and certificate standing in for SNS's, and a signer of SNS messages."""
    from cryptography.hazmat.primitives.asymmetric import padding

    from forge.events.sns import string_to_sign

    key, cert = self_signed("sns.amazonaws.com")

    def sign(message: dict, version: str = "2") -> dict:
        message = {"SignatureVersion": version, "SigningCertURL": CERT_URL, "TopicArn": TOPIC, **message}
        digest = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = key.sign(string_to_sign(message), padding.PKCS1v15(), digest)
        return {**message, "Signature": base64.b64encode(signature).decode()}

    return cert.public_bytes(serialization.Encoding.PEM), sign


@pytest.fixture
def sns_receiver(sns_signer):
    """The receiver with an expected topic; what it fetches (certificate, confirmation) is recorded."""
    from forge.events.sns import SnsCheck

    pem, sign = sns_signer
    fetched: list[str] = []
    emitted: list = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return pem if url == CERT_URL else b"<ConfirmSubscriptionResponse/>"

    async def emit(recipe_id, objs):
        emitted.append(recipe_id)

    sns = SnsCheck.from_topics([TOPIC], fetch)
    app = create_app(
        [TriggerRule("noaa-oisst", "noaa-oisst/")], Authenticator(TOKEN, None), emit, 0.1, sns=sns
    )
    with TestClient(app) as client:
        yield client, sign, fetched, emitted


BASIC = {"Authorization": "Basic " + base64.b64encode(f"forge:{TOKEN}".encode()).decode()}


def confirmation(**fields) -> dict:
    base = {"Type": "SubscriptionConfirmation", "MessageId": "m1", "Token": "t0k", "Message": "confirm"}
    return {**base, "SubscribeURL": SUBSCRIBE_URL, "Timestamp": "2026-12-01T00:00:00.000Z", **fields}


def test_an_sns_subscription_is_confirmed_only_when_signed_by_sns_for_an_expected_topic(sns_receiver):
    client, sign, fetched, _ = sns_receiver
    r = client.post("/", json=sign(confirmation()), headers=BASIC)
    assert r.status_code == 200 and r.json() == {"confirmed": TOPIC}
    assert fetched == [CERT_URL, SUBSCRIBE_URL]

    def refused(body: dict, headers=BASIC, status=403) -> None:
        fetched.clear()
        r = client.post("/", json=body, headers=headers)
        assert r.status_code == status, r.text
        assert SUBSCRIBE_URL not in fetched  # never confirmed

    refused(sign(confirmation()), headers={}, status=401)  # no shared secret
    refused({**sign(confirmation()), "Message": "tampered"})  # the signature does not match
    refused(sign(confirmation(SubscribeURL="https://evil.example.com/?Action=ConfirmSubscription")))
    refused(sign(confirmation(SubscribeURL=SUBSCRIBE_URL.replace("us-east-1", "eu-west-1"))))
    refused(sign(confirmation(SigningCertURL="https://evil.example.com/cert.pem")))
    assert "https://evil.example.com/cert.pem" not in fetched  # a certificate only from SNS
    refused(sign(confirmation(TopicArn="arn:aws:sns:us-east-1:123456789012:someone-else")))


def test_signed_sns_notifications_reach_their_recipe(sns_receiver):
    client, sign, _, emitted = sns_receiver
    message = {"Type": "Notification", "MessageId": "m2", "Timestamp": "2026-12-01T00:00:01.000Z"}
    note = sign(
        {
            **message,
            "Subject": "Amazon S3 Notification",
            "Message": json.dumps({"Records": [s3_record(KEY)]}),
        },
        "1",
    )
    r = client.post("/", json=note, headers=BASIC)
    assert r.status_code == 202 and r.json()["recipes"] == ["noaa-oisst"]
    forged = {**note, "Message": json.dumps({"Records": [s3_record(KEY.replace("0901", "0902"))]})}
    assert client.post("/", json=forged, headers=BASIC).status_code == 403
    wait_for(emitted, 1)
    assert emitted == ["noaa-oisst"]
