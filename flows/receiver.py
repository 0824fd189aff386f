"""``forge receiver``: storage notifications in, one Prefect event per recipe and burst out.

The clouds post new-object notifications here (S3 through EventBridge or SQS, GCS through Pub/Sub push,
Azure through Event Grid). Each is authenticated (the ``X-Forge-Token`` shared secret, or for Pub/Sub
a Google-signed OIDC token), routed to recipes by their meta.yaml ``update.trigger`` rules, and
coalesced per recipe over a short window. Then one ``forge.source.objects-landed`` event per recipe goes
to Prefect, where the automation that ``forge deploy`` created runs ``recipe/<id>-append``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from forge.events.notifications import Notification, NotificationError, ObjectCreated, parse_notification
from forge.events.sns import SnsCheck, SnsError
from forge.events.triggers import (
    Coalescer,
    OidcCheck,
    TriggerRule,
    Unauthorized,
    check_token,
    recipe_resource,
    route,
    rules_from_meta,
)
from forge.recipe.loading import list_recipes

logger = logging.getLogger("forge.receiver")

OBJECTS_LANDED = "forge.source.objects-landed"
MAX_BODY = 1 << 20  # Event Grid batches are at most 1 MB; S3/GCS notifications are a few KB
MAX_HANDSHAKE = 16 << 10  # what an unauthenticated request may send: an Event Grid handshake is 1 KB
LISTED_OBJECTS = 100  # names carried in one event's payload (the count is always exact)

Emit = Callable[[str, list[ObjectCreated]], Awaitable[None]]


def load_rules() -> list[TriggerRule]:
    return [rule for source in list_recipes() for rule in rules_from_meta(source.recipe_id, source.meta())]


async def emit_to_prefect(recipe_id: str, objects: list[ObjectCreated]) -> None:
    """Send the event and wait for the server to confirm it (so a failure is seen and retried)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(
        event=OBJECTS_LANDED,
        resource=recipe_resource(recipe_id),
        payload={"count": len(objects), "objects": [o.url for o in objects[:LISTED_OBJECTS]]},
    )
    async with get_events_client(checkpoint_every=1) as client:
        await client.emit(event)


class Authenticator:
    """The shared secret (``X-Forge-Token``, or as the basic-auth password of an SNS endpoint URL) and,
    for Pub/Sub push, an OIDC bearer token."""

    def __init__(self, token: str | None, oidc: OidcCheck | None):
        if not token and not oidc:
            raise ValueError("set FORGE_RECEIVER_TOKEN, or FORGE_RECEIVER_OIDC_AUDIENCE and _EMAIL")
        self.token, self.oidc = token, oidc

    def __call__(self, request: Request) -> None:
        given = request.headers.get("x-forge-token")
        if given is not None and self.token:
            return check_token(self.token, given)
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic ") and self.token:  # SNS: basic auth in the endpoint URL
            return check_token(self.token, basic_password(authorization))
        if authorization and self.oidc:
            return self.oidc(authorization)
        raise Unauthorized("no credentials")

    @classmethod
    def from_env(cls) -> Authenticator:
        audience, email = (
            os.environ.get("FORGE_RECEIVER_OIDC_AUDIENCE"),
            os.environ.get("FORGE_RECEIVER_OIDC_EMAIL"),
        )
        oidc = None
        if audience and email:
            certs = os.environ.get("FORGE_RECEIVER_OIDC_CERTS_URL")
            oidc = OidcCheck(audience, email, certs) if certs else OidcCheck(audience, email)
        return cls(os.environ.get("FORGE_RECEIVER_TOKEN") or None, oidc)


def create_app(
    rules: Sequence[TriggerRule],
    authenticate: Callable[[Request], None],
    emit: Emit = emit_to_prefect,
    window: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sns: SnsCheck | None = None,
) -> FastAPI:
    coalescer = Coalescer(window, clock)

    async def send(everything: bool = False) -> None:
        for recipe_id, objects in coalescer.take_due(everything):
            try:
                await emit(recipe_id, objects)
                logger.info("%s: %d new objects -> %s", recipe_id, len(objects), OBJECTS_LANDED)
            except Exception as e:  # the server is away: keep the batch for the next round
                logger.warning("%s: could not emit the event (%s); retrying", recipe_id, type(e).__name__)
                coalescer.add(recipe_id, objects)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def pump() -> None:
            while True:
                await asyncio.sleep(min(1.0, max(0.05, window / 4)))
                await send()

        task = asyncio.create_task(pump())
        yield
        task.cancel()
        await send(everything=True)  # nothing accepted is dropped on shutdown

    app = FastAPI(title="forge receiver", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok", "recipes": sorted({r.recipe_id for r in rules})}

    @app.options("/")
    async def cloudevents_handshake(request: Request) -> Response:
        """CloudEvents v1.0 abuse protection (Event Grid's CloudEvents schema): allow the origin."""
        origin = request.headers.get("webhook-request-origin", "")
        return Response(headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})

    @app.post("/")
    async def notify(request: Request) -> Response:
        # Only headers before the body: who is asking, and how much they say they send.
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return _error(413, f"body over {MAX_BODY} bytes")
        try:
            await asyncio.to_thread(authenticate, request)  # OIDC fetches Google's certs: off the loop
            authenticated, reason = True, ""
        except Unauthorized as e:
            authenticated, reason = False, str(e)
        # An Event Grid handshake may come without the delivery header; nothing else is read unasked.
        body = await read_at_most(request, MAX_BODY if authenticated else MAX_HANDSHAKE)
        if body is None:
            return _error(413, f"body over {MAX_BODY} bytes") if authenticated else _error(401, reason)
        try:
            note = parse_notification(body)
        except NotificationError as e:
            return _error(400, str(e)) if authenticated else _error(401, reason)
        if not authenticated:
            # Event Grid's handshake carries no event to act on; answering it proves only that we listen.
            if _handshake_only(note) and request.headers.get("x-forge-token") is None:
                return JSONResponse({"validationResponse": note.validation_code})
            return _error(401, reason)
        if note.sns is not None and (sns is not None or note.sns["Type"] != "Notification"):
            if sns is None:  # a subscription to confirm, and no topic expected
                return _error(
                    400, "SNS HTTPS subscriptions need FORGE_RECEIVER_SNS_TOPICS (see docs/bakeries.md)"
                )
            try:
                await asyncio.to_thread(sns.verify, note.sns)  # fetches SNS's certificate: off the loop
                if note.sns["Type"] == "SubscriptionConfirmation":
                    await asyncio.to_thread(sns.fetch, sns.subscribe_url(note.sns))
                    logger.info("confirmed the SNS subscription to %s", note.sns["TopicArn"])
                    return JSONResponse({"confirmed": note.sns["TopicArn"]})
            except SnsError as e:
                return _error(403, str(e))
            except OSError as e:  # SNS did not answer: it sends the confirmation again
                return _error(502, f"could not reach SNS ({type(e).__name__})")
        if note.validation_code is not None:
            return JSONResponse({"validationResponse": note.validation_code})
        routed = route(note.objects, rules)
        for recipe_id, objects in routed.items():
            coalescer.add(recipe_id, objects)
        matched = {o for objs in routed.values() for o in objs}
        unmatched = [o for o in note.objects if o not in matched]
        if unmatched:
            logger.info(
                "%d new objects match no recipe's trigger (first: %s)", len(unmatched), unmatched[0].url
            )
        return JSONResponse(
            {
                "recipes": sorted(routed),
                "objects": len(note.objects),
                "unmatched": len(unmatched),
                "ignored": note.ignored,
            },
            status_code=202,
        )

    return app


async def read_at_most(request: Request, limit: int) -> bytes | None:
    """The body, read as it streams in and never held beyond ``limit`` bytes (None: it is longer)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def basic_password(authorization: str) -> str:
    """The password of a ``Basic`` Authorization header ("" if it is not one)."""
    try:
        decoded = base64.b64decode(authorization.split(" ", 1)[1], validate=True).decode()
    except (IndexError, ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _handshake_only(note: Notification) -> bool:
    return note.validation_code is not None and not note.objects


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def serve(host: str, port: int, window: float) -> None:
    """Run the receiver until interrupted (needs PREFECT_API_URL: the events go to that server)."""
    import uvicorn

    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("forge receiver: set PREFECT_API_URL to the Prefect server the events should go to")
    try:
        authenticate = Authenticator.from_env()
    except ValueError as e:
        raise SystemExit(f"forge receiver: {e}") from None
    topics = os.environ.get("FORGE_RECEIVER_SNS_TOPICS", "").split(",")
    sns = SnsCheck.from_topics(topics) if any(t.strip() for t in topics) else None
    rules = load_rules()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for rule in rules:
        logger.info(
            "trigger: %s <- %s%s*%s",
            rule.recipe_id,
            f"{rule.bucket}/" if rule.bucket else "",
            rule.prefix,
            rule.suffix,
        )
    app = create_app(rules, authenticate, window=window, sns=sns)
    uvicorn.run(app, host=host, port=port, access_log=False)
