"""Amazon SNS HTTPS subscriptions, the way AWS documents them.

SNS cannot send a custom header, so the shared secret travels as basic auth in the endpoint URL
(``https://forge:<token>@receiver.example.org/``). Every message is also signed: the signature is checked
against the certificate at ``SigningCertURL``, fetched only from an SNS host. A subscription is confirmed
by fetching its ``SubscribeURL`` only when that is the SNS endpoint of the region of an expected topic,
for that topic. See https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html and
https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_SNS_HOST = re.compile(r"^sns\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
_TOPIC = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):\d{12}:[\w-]+$")


class SnsError(ValueError):
    """An SNS message that is not what it claims to be, or comes from an unexpected topic."""


def is_sns_message(doc: Any) -> bool:
    """A message SNS posted itself (not an SNS message relayed inside an SQS body)."""
    return isinstance(doc, Mapping) and doc.get("Type") in SIGNED_FIELDS and "SigningCertURL" in doc


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical text SNS signs: each signed field's name and value on their own lines."""
    kind = message.get("Type")
    if kind not in SIGNED_FIELDS:
        raise SnsError(f"unknown SNS message type {kind!r}")
    lines = []
    for name in SIGNED_FIELDS[kind]:
        if name in message:
            lines += [name, str(message[name])]
        elif name != "Subject":
            raise SnsError(f"SNS {kind} without {name}")
    return ("\n".join(lines) + "\n").encode()


def region_of_topic(topic_arn: str) -> str:
    match = _TOPIC.match(topic_arn)
    if not match:
        raise SnsError(f"not an SNS topic ARN: {topic_arn!r}")
    return match.group(1)


def check_sns_url(url: str, region: str | None = None, *, pem: bool = False) -> None:
    """``url`` must be https on an SNS host (of ``region``, when given); a certificate's ends in .pem."""
    parts = urlsplit(url)
    match = _SNS_HOST.match(parts.hostname or "")
    if parts.scheme != "https" or not match or parts.port not in (None, 443):
        raise SnsError(f"not an SNS endpoint: {url!r}")
    if region is not None and match.group(1) != region:
        raise SnsError(f"{url!r} is not the SNS endpoint of {region}")
    if pem and not parts.path.endswith(".pem"):
        raise SnsError(f"not an SNS signing certificate: {url!r}")


def _fetch(url: str) -> bytes:
    import requests

    response = requests.get(url, timeout=10, allow_redirects=False)
    response.raise_for_status()
    return response.content


@dataclass(frozen=True)
class SnsCheck:
    """The topics this receiver expects, and how certificates are fetched and subscriptions confirmed
    (``fetch(url) -> bytes``: an HTTPS GET; a test passes its own)."""

    topics: frozenset[str]
    fetch: Callable[[str], bytes] = _fetch
    _certificates: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_topics(cls, topics: Iterable[str], fetch: Callable[[str], bytes] = _fetch) -> SnsCheck:
        topics = frozenset(t.strip() for t in topics if t.strip())
        for topic in topics:
            region_of_topic(topic)
        return cls(topics, fetch)

    def verify(self, message: Mapping[str, Any]) -> None:
        """The message is signed by SNS and comes from an expected topic; else :class:`SnsError`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        topic = str(message.get("TopicArn", ""))
        if topic not in self.topics:
            raise SnsError(f"messages from SNS topic {topic!r} are not expected here")
        version = str(message.get("SignatureVersion"))
        algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}.get(version)
        if algorithm is None:
            raise SnsError(f"unknown SNS SignatureVersion {version!r}")
        cert_url = str(message.get("SigningCertURL", ""))
        check_sns_url(cert_url, region_of_topic(topic), pem=True)
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
            self._certificate(cert_url).public_key().verify(
                signature, string_to_sign(message), padding.PKCS1v15(), algorithm()
            )
        except (InvalidSignature, binascii.Error, ValueError) as e:
            raise SnsError(f"the SNS message's signature does not verify ({type(e).__name__})") from None

    def subscribe_url(self, message: Mapping[str, Any]) -> str:
        """The URL that confirms a (verified) subscription: the SNS endpoint of its topic's region, for
        that topic, and nothing else."""
        url, topic = str(message.get("SubscribeURL", "")), str(message["TopicArn"])
        check_sns_url(url, region_of_topic(topic))
        query = parse_qs(urlsplit(url).query)
        if query.get("Action") != ["ConfirmSubscription"] or query.get("TopicArn") != [topic]:
            raise SnsError("the SubscribeURL does not confirm this topic")
        return url

    def _certificate(self, url: str):
        if url not in self._certificates:
            from cryptography import x509

            self._certificates[url] = x509.load_pem_x509_certificate(self.fetch(url))
        return self._certificates[url]
