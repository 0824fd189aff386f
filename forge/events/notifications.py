"""Object-storage notifications, as the clouds deliver them, read into one shape: the objects created.

Understood (one JSON body each, told apart by their shape):

- S3 event notifications: the ``{"Records": [...]}`` document itself, wrapped in SNS
  (``{"Type": "Notification", "Message": ...}``), or in SQS messages (``{"Records": [{"eventSource":
  "aws:sqs", "body": ...}]}`` as Lambda gets them, or a list of ``{"body": ...}`` as EventBridge Pipes
  sends them);
- S3 events through EventBridge (``{"source": "aws.s3", "detail-type": "Object Created", ...}``);
- GCS Pub/Sub push messages (``{"message": {"attributes": {"bucketId", "objectId", "eventType"}}}``);
- Azure Event Grid events (a list, in the Event Grid schema), including the subscription-validation
  event, and Azure's CloudEvents v1.0 schema.

Deletions and other event types are recognised and ignored; anything else is a :class:`NotificationError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from forge.events.sns import is_sns_message

AZURE_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
AZURE_CREATED = "Microsoft.Storage.BlobCreated"
GCS_CREATED = "OBJECT_FINALIZE"


class NotificationError(ValueError):
    """The body is not a notification this receiver understands (the sender gets a 400)."""


@dataclass(frozen=True)
class ObjectCreated:
    cloud: str  # "s3", "gcs" or "azure"
    bucket: str  # the S3/GCS bucket, or the Azure container
    key: str  # the object's name in the bucket, decoded

    @property
    def url(self) -> str:
        scheme = {"s3": "s3", "gcs": "gs", "azure": "az"}[self.cloud]
        return f"{scheme}://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Notification:
    objects: tuple[ObjectCreated, ...] = ()
    validation_code: str | None = None  # Event Grid's handshake: echo it back
    ignored: int = 0  # events of other kinds (deletions, ...)
    sns: dict | None = None  # a message SNS posted itself: to verify (and confirm, for a subscription)


def parse_notification(body: bytes) -> Notification:
    """The objects a notification body announces (or the Event Grid handshake it asks for)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotificationError(f"body is not JSON: {e}") from None
    except RecursionError:
        raise NotificationError("body is not a notification: JSON nested too deeply") from None
    if is_sns_message(doc) and doc["Type"] != "Notification":
        return Notification(sns=doc)  # a subscription's (un)confirmation: no objects
    created: list[ObjectCreated] = []
    ignored = 0
    validation = None
    for item in _events(doc):
        if isinstance(item, ObjectCreated):
            created.append(item)
        elif isinstance(item, _Validation):
            validation = item.code
        else:
            ignored += 1
    return Notification(
        tuple(dict.fromkeys(created)), validation, ignored, doc if is_sns_message(doc) else None
    )


@dataclass(frozen=True)
class _Validation:
    code: str


class _Ignored:
    pass


MAX_DEPTH = 6  # envelopes in envelopes: S3 in SNS in SQS in a Pipes batch is four


def _events(doc: Any, depth: int = 0) -> Iterator[ObjectCreated | _Validation | _Ignored]:
    if depth > MAX_DEPTH:
        raise NotificationError("not a storage notification: envelopes nested too deeply")
    if isinstance(doc, list):
        if not doc:
            raise NotificationError("empty list of events")
        for item in doc:
            yield from _events(item, depth + 1)
        return
    if not isinstance(doc, dict):
        raise NotificationError(f"expected a JSON object or list, got {type(doc).__name__}")
    if "Records" in doc:
        for record in _list(doc, "Records"):
            yield from _record(record, depth + 1)
    elif doc.get("Type") == "Notification" and "Message" in doc:  # SNS
        yield from _events(_json_string(doc["Message"], "SNS Message"), depth + 1)
    elif "body" in doc and ("messageId" in doc or "receiptHandle" in doc):  # an SQS message
        yield from _events(_json_string(doc["body"], "SQS body"), depth + 1)
    elif doc.get("source") == "aws.s3" and "detail-type" in doc:
        yield from _eventbridge(doc)
    elif isinstance(doc.get("message"), dict) and "subscription" in doc:
        yield from _pubsub(doc["message"])
    elif "eventType" in doc and "subject" in doc:
        yield from _event_grid(doc, doc["eventType"], doc.get("data") or {})
    elif "specversion" in doc and "type" in doc:  # Event Grid's CloudEvents schema
        yield from _event_grid(doc, doc["type"], doc.get("data") or {})
    elif doc.get("Event") == "s3:TestEvent":
        yield _Ignored()  # S3 sends this once when a notification is configured
    else:
        raise NotificationError(f"not a storage notification (keys: {sorted(doc)[:8]})")


def _record(record: Any, depth: int) -> Iterator[ObjectCreated | _Validation | _Ignored]:
    if not isinstance(record, dict):
        raise NotificationError("a record is not a JSON object")
    source = record.get("eventSource")
    if source == "aws:sqs":
        yield from _events(_json_string(record.get("body"), "SQS body"), depth + 1)
    elif source == "aws:s3":
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            yield _Ignored()
            return
        s3 = _dict(record, "s3")
        # S3 URL-encodes keys in notifications, spaces as "+".
        yield ObjectCreated(
            "s3", _str(_dict(s3, "bucket"), "name"), unquote_plus(_str(_dict(s3, "object"), "key"))
        )
    elif isinstance(record.get("Sns"), dict):
        yield from _events(_json_string(record["Sns"].get("Message"), "SNS Message"), depth + 1)
    else:
        raise NotificationError(f"unknown record source {source!r}")


def _eventbridge(doc: dict) -> Iterator[ObjectCreated | _Ignored]:
    if doc["detail-type"] != "Object Created":
        yield _Ignored()
        return
    detail = _dict(doc, "detail")
    yield ObjectCreated("s3", _str(_dict(detail, "bucket"), "name"), _str(_dict(detail, "object"), "key"))


def _pubsub(message: dict) -> Iterator[ObjectCreated | _Ignored]:
    attributes = message.get("attributes") or {}
    if "bucketId" not in attributes:
        raise NotificationError(
            "Pub/Sub message without bucketId/objectId attributes (not a GCS notification)"
        )
    if attributes.get("eventType") != GCS_CREATED:
        yield _Ignored()
        return
    if "objectId" not in attributes:
        raise NotificationError("GCS notification without objectId")
    if message.get("data"):  # JSON_API_V1 payloads repeat the names; a payload that disagrees is suspect
        try:
            payload = json.loads(base64.b64decode(message["data"], validate=True))
        except (binascii.Error, ValueError):
            raise NotificationError("Pub/Sub message data is not base64-encoded JSON") from None
        if (
            isinstance(payload, dict)
            and payload.get("name", attributes["objectId"]) != attributes["objectId"]
        ):
            raise NotificationError("Pub/Sub message data and attributes name different objects")
    yield ObjectCreated("gcs", attributes["bucketId"], attributes["objectId"])


def _event_grid(doc: dict, event_type: Any, data: Any) -> Iterator[ObjectCreated | _Validation | _Ignored]:
    if event_type == AZURE_VALIDATION:
        if not isinstance(data, dict) or not data.get("validationCode"):
            raise NotificationError("subscription validation event without data.validationCode")
        yield _Validation(str(data["validationCode"]))
        return
    if event_type != AZURE_CREATED:
        yield _Ignored()
        return
    # subject: /blobServices/default/containers/<container>/blobs/<name>
    subject = _str(doc, "subject")
    prefix, sep, name = subject.partition("/blobs/")
    container = prefix.rpartition("/containers/")[2]
    if not sep or not name or not container or "/" in container:
        if isinstance(data, dict) and data.get("url"):  # fall back on data.url
            parts = urlsplit(str(data["url"])).path.lstrip("/").split("/", 1)
            if len(parts) == 2 and all(parts):
                yield ObjectCreated("azure", parts[0], unquote(parts[1]))
                return
        raise NotificationError(f"BlobCreated event with an unexpected subject {subject!r}")
    yield ObjectCreated("azure", container, name)


def _json_string(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise NotificationError(f"{what} is not a string")
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise NotificationError(f"{what} is not JSON (or is nested too deeply)") from None


def _list(doc: dict, field: str) -> list:
    value = doc.get(field)
    if not isinstance(value, list) or not value:
        raise NotificationError(f"{field} is not a non-empty list")
    return value


def _dict(doc: dict, field: str) -> dict:
    value = doc.get(field)
    if not isinstance(value, dict):
        raise NotificationError(f"{field} is missing or not an object")
    return value


def _str(doc: dict, field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise NotificationError(f"{field} is missing or empty")
    return value
