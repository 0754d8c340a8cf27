"""The webhook receiver: OpenAI's signed "fine-tuning job finished" deliveries, as an ASGI app.

`POST /webhooks/openai`, in this order:

1. The body is read with a bound (`FTDEPLOY_WEBHOOK_MAX_BODY_BYTES`; a larger Content-Length is
   refused before a byte is read) and a deadline (`FTDEPLOY_WEBHOOK_BODY_TIMEOUT_SECONDS`, then
   408). Slow headers, idle connections and the number of connections are bounded by the server
   (`worker.receiver_server`).
2. The openai SDK's `webhooks.unwrap()` checks the Standard Webhooks signature over the raw body
   with `FTDEPLOY_WEBHOOK_SECRET` (any of several `v1,` signatures may match; the timestamp must
   be within 300 s either way) and parses the JSON; `registry.jobs.webhooks.parse_event` checks that
   it is an event.
3. A finished-job event is recorded (delivery + job event, one transaction, deduplicated on
   `webhook-id`) and committed; then the 2xx is sent, then the job is handed to the broker. A
   crash or a broker outage after the commit leaves the event to the reconciler (beat).

Guarantees: every refusal is a 400 (a 408 for a body too slow) with a small JSON reason and
writes and enqueues nothing; a redelivery or replay of a recorded `webhook-id` is a 200 no-op;
event types ftdeploy does not act on get a 200 and are counted; a database failure is a 503
(OpenAI retries). The secret and the signature never reach a log line, a response or the
database.

`GET /healthz`: 200 when the database answers `SELECT 1`, else 503. `GET /metrics`: Prometheus.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import Any

import openai
from openai import InvalidWebhookSignatureError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from registry import messages
from registry.db import ping, unit_of_work
from registry.errors import InvalidInput
from registry.jobs import webhooks
from registry.lograte import LogRate
from registry.settings import Settings, get_settings
from worker.logs import event
from worker.metrics import WEBHOOK_DELIVERIES
from worker.receiver_server import SLOW_CLIENTS

log = logging.getLogger("ftdeploy.webhooks")

WEBHOOK_PATH = "/webhooks/openai"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SECRET_PREFIX = "whsec_"
_MAX_REASON = 200

# The receiver's own registry: /metrics here shows the receiver's counters only, whatever the
# worker's metrics (worker.metrics) register in the default one.
METRICS = CollectorRegistry()
DELIVERIES = Counter(
    WEBHOOK_DELIVERIES.name,
    WEBHOOK_DELIVERIES.help,
    WEBHOOK_DELIVERIES.labels,
    registry=METRICS,
)
METRICS.register(SLOW_CLIENTS)
# A flood of slow clients must not become a flood of lines: a few per minute, then counts.
_SLOW_LOG = LogRate(burst=5, per_seconds=60.0)


class Refused(Exception):
    """A delivery answered 400: nothing written, nothing enqueued."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason[:_MAX_REASON]
        self.status = status


def require_secret(settings: Settings) -> str:
    """The signing secret, checked once at start: set, and a `whsec_` + base64 value as OpenAI
    shows it. Raises InvalidInput (the message never contains the secret)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret.strip():
        raise InvalidInput(
            "FTDEPLOY_WEBHOOK_SECRET",
            "not set; the receiver refuses to start without the endpoint's signing secret "
            "(the whsec_… value OpenAI shows for the webhook endpoint)",
        )
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInput("FTDEPLOY_WEBHOOK_SECRET", "expected a value starting with whsec_")
    try:
        # Decoded exactly as the SDK decodes it, so a secret accepted here is one it can use.
        key = base64.b64decode(secret[len(SECRET_PREFIX) :])
    except (binascii.Error, ValueError):
        raise InvalidInput(
            "FTDEPLOY_WEBHOOK_SECRET", "the part after whsec_ is not valid base64"
        ) from None
    if not key:
        raise InvalidInput("FTDEPLOY_WEBHOOK_SECRET", "the key after whsec_ is empty")
    return secret


class Receiver:
    """The endpoints, bound to one secret and body limit."""

    def __init__(self, secret: str, max_body_bytes: int, body_timeout: float = 10.0) -> None:
        self._secret = secret
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout
        # The client is only a holder for `webhooks.unwrap`; it never sends a request, so it
        # needs no real API key (the SDK refuses to build a client without one).
        self._openai = openai.OpenAI(
            api_key="unused-webhook-verification-only", webhook_secret=secret, max_retries=0
        )

    async def openai_webhook(self, request: Request) -> JSONResponse:
        try:
            body = await self._read_body(request)
            parsed = await run_in_threadpool(self._verify, body, request.headers)
        except Refused as refusal:
            DELIVERIES.labels("refused").inc()
            allowed, suppressed = (True, 0) if refusal.status == 400 else _SLOW_LOG.allow("body")
            if allowed:
                event(
                    log,
                    "webhook.refused",
                    logging.WARNING,
                    reason=refusal.reason,
                    status=refusal.status,
                    **({"suppressed": suppressed} if suppressed else {}),
                )
            return JSONResponse({"error": refusal.reason}, status_code=refusal.status)
        try:
            outcome, held = await run_in_threadpool(self._record, parsed)
        except SQLAlchemyError as error:
            DELIVERIES.labels("unavailable").inc()
            event(
                log,
                "webhook.unavailable",
                logging.ERROR,
                webhook_id=parsed.webhook_id,
                error=type(error).__name__,
            )
            return JSONResponse({"error": "database unavailable, retry later"}, status_code=503)
        DELIVERIES.labels(outcome).inc()
        event(
            log,
            f"webhook.{outcome}",
            webhook_id=parsed.webhook_id,
            type=parsed.event_type,
            job=parsed.job_id,
        )
        reply = {"status": str(outcome), "type": parsed.event_type, "job_id": parsed.job_id}
        if outcome != webhooks.DeliveryOutcome.RECORDED:
            return JSONResponse(reply)
        # Committed: answer now, then hand the job to the broker (the unit of work held its
        # message). If this process dies in between, or the broker is down, the event stays
        # unenqueued and beat's reconciler re-sends it; a redelivery from OpenAI meanwhile is a
        # duplicate.
        return JSONResponse(reply, background=BackgroundTask(_enqueue, held))

    async def _read_body(self, request: Request) -> bytes:
        limit = self._max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refused("invalid Content-Length")
            if int(declared) > limit:
                raise Refused(f"body over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:  # a chunked body, or one longer than it said
                        raise Refused(f"body over the {limit}-byte limit")
                    chunks.append(chunk)
        except ClientDisconnect:
            raise Refused("the client disconnected before sending the whole body") from None
        except TimeoutError:
            SLOW_CLIENTS.labels("body").inc()
            raise Refused(
                f"the body did not arrive within {self._body_timeout:g} s", status=408
            ) from None
        return b"".join(chunks)

    def _verify(self, body: bytes, headers: Headers) -> webhooks.WebhookEvent:
        missing = [name for name in SIGNATURE_HEADERS if not headers.get(name)]
        if missing:
            raise Refused(f"missing header: {', '.join(missing)}")
        # Only the three signed headers, first value of each: what the signature covers.
        signed = {name: headers[name] for name in SIGNATURE_HEADERS}
        try:
            unwrapped = self._openai.webhooks.unwrap(body, signed, secret=self._secret)
        except InvalidWebhookSignatureError as error:
            # The SDK's messages are fixed texts ("… too old", "… does not match …").
            raise Refused(f"signature rejected: {error}") from None
        except (json.JSONDecodeError, RecursionError):
            # unwrap parses only after the signature matched: signed, but not JSON.
            raise Refused("the body is not JSON") from None
        except (ValueError, TypeError):
            # Raised by the SDK's verification itself: a body that is not UTF-8, or a signature
            # header with non-ASCII characters (hmac.compare_digest refuses those).
            raise Refused("signature rejected: the headers or body cannot be verified") from None
        try:
            return webhooks.parse_event(signed["webhook-id"], _plain(unwrapped))
        except InvalidInput as error:
            raise Refused(f"not an event: {error}") from None

    @staticmethod
    def _record(
        parsed: webhooks.WebhookEvent,
    ) -> tuple[webhooks.DeliveryOutcome, list[messages.Message]]:
        with unit_of_work() as session:
            held = messages.hold_messages(session)
            outcome = webhooks.record_delivery(session, parsed)
        return outcome, held


def _plain(unwrapped: object) -> Any:
    """unwrap() returns a typed event, built without validation, for a JSON object, and the raw
    value for anything else; parse_event wants plain JSON values to validate."""
    if isinstance(unwrapped, BaseModel):
        return unwrapped.model_dump(warnings=False)
    return unwrapped


async def healthz(request: Request) -> JSONResponse:
    try:
        await run_in_threadpool(_ping_database)
    except SQLAlchemyError as error:
        event(log, "healthz.failed", logging.WARNING, error=type(error).__name__)
        return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics_endpoint(request: Request) -> Response:
    # This process's counters (with --workers N, each server process counts its own).
    return Response(generate_latest(METRICS), media_type=CONTENT_TYPE_LATEST)


def _ping_database() -> None:
    with unit_of_work() as session:
        ping(session)


def _enqueue(held: list[messages.Message]) -> None:
    for message in held:
        job_id = message.args[0] if message.args else None
        try:
            messages.deliver(message)
        except Exception as error:
            # Already answered 2xx and committed: the reconciler re-sends the stranded event.
            event(
                log,
                "webhook.enqueue_deferred",
                logging.WARNING,
                job=job_id,
                error=type(error).__name__,
            )
            continue
        event(log, "webhook.enqueued", job=job_id)


def routes(settings: Settings, *, webhook: bool = True) -> list[Route]:
    """The receiver's routes; without `webhook`, only /healthz and /metrics. Raises InvalidInput
    when the webhook is wanted and its secret is missing or bad."""
    served = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if webhook:
        receiver = Receiver(
            require_secret(settings),
            settings.webhook_max_body_bytes,
            settings.webhook_body_timeout_seconds,
        )
        served.insert(0, Route(WEBHOOK_PATH, receiver.openai_webhook, methods=["POST"]))
    return served


def create_app(settings: Settings | None = None) -> Starlette:
    """The receiver's ASGI app. Raises InvalidInput when the webhook secret is missing or bad."""
    return Starlette(routes=routes(settings or get_settings()))


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> int:
    """Run the receiver alone (see `worker.receiver_server.run`). Refuses to start, with
    InvalidInput, when the webhook secret is missing or malformed."""
    from worker import receiver_server

    settings = get_settings()
    require_secret(settings)
    return receiver_server.run("worker.web:create_app", settings, host, port, workers)
