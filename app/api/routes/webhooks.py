"""POST /webhooks/{source}: signed push deliveries (Standard Webhooks)."""

from __future__ import annotations

import os
from typing import Annotated

import anyio
import structlog
from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, Field

from app.api.deps import SessionDep, SettingsDep, SourcesDep
from app.api.errors import ApiError
from app.api.responses import COMMON_ERRORS, error_responses
from app.api.webhooks.intake import accept_delivery, delivery_rows
from app.api.webhooks.signature import SignatureError, verify
from app.core import exact_json
from app.core.enqueue import enqueue_close_push

log = structlog.get_logger("app.api.routes.webhooks")
router = APIRouter(tags=["webhooks"])

# The longest the answer waits for the window's close message to be sent.
CLOSE_SEND_TIMEOUT_S = 1.0


class WebhookAccepted(BaseModel):
    accepted: int = Field(description="Records accepted from this delivery (0 for a repeated webhook-id).")
    run_id: int = Field(description="The push run that batches this delivery.")
    duplicate: bool = Field(False, description="True when this webhook-id was delivered before.")

    model_config = {"json_schema_extra": {"examples": [{"accepted": 2, "run_id": 42, "duplicate": False}]}}


@router.post(
    "/webhooks/{source}",
    status_code=202,
    response_model=WebhookAccepted,
    summary="Receive a signed delivery for a webhook source",
    responses=error_responses(400, 401, 404, 413, 422, 503, *COMMON_ERRORS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [
                {"type": "object"}, {"type": "array", "items": {"type": "object"}, "minItems": 1}]}}},
        }
    },
)
async def receive_webhook(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    sources: SourcesDep,
    source: Annotated[str, Path(max_length=63, description="A source of kind `webhook`.")],
    webhook_id: Annotated[str | None, Header(alias="webhook-id", max_length=200)] = None,
    webhook_timestamp: Annotated[str | None, Header(alias="webhook-timestamp", max_length=20)] = None,
    webhook_signature: Annotated[str | None, Header(alias="webhook-signature", max_length=4096)] = None,
) -> WebhookAccepted:
    """Verify the signature over the raw body, then store the records durably before answering 202.

    The body is a JSON object or an array of objects. A repeated `webhook-id` is accepted
    once: later copies answer 202 with `duplicate: true` and store nothing.
    """
    config = sources.get(source)
    if config is None or config.kind != "webhook":
        raise ApiError(404, f"no webhook source named {source[:63]!r}", code="unknown_source")
    secret = os.environ.get(config.secret_env or "", "")
    if not secret:
        log.error("webhook_secret_missing", source=source, secret_env=config.secret_env)
        raise ApiError(503, f"webhook source {source!r} has no secret configured ({config.secret_env} is unset)")
    body = await request.body()
    try:
        verify(secret, webhook_id=webhook_id, timestamp=webhook_timestamp, signature_header=webhook_signature,
               body=body)
    except SignatureError as exc:
        raise ApiError(401, f"webhook signature rejected: {exc}", code="bad_signature") from None
    except ValueError as exc:  # the configured secret itself is malformed
        log.error("webhook_secret_invalid", source=source, error=str(exc))
        raise ApiError(503, f"webhook source {source!r} has an invalid secret") from None
    try:
        payload = exact_json.loads(body)
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deeply to be read") from None
    if not isinstance(payload, (dict, list)):
        raise ApiError(422, "body must be a JSON object or an array of objects")
    if isinstance(payload, list) and not payload:
        raise ApiError(422, "body is an empty array")
    assert webhook_id is not None  # verify() checked it
    intake = await accept_delivery(session, source=config, webhook_id=webhook_id, rows=delivery_rows(payload))
    if intake.opened_window:
        await _request_close(intake.run_id, settings.webhook_window_s)
    log.info("webhook_accepted", source=source, run_id=intake.run_id, accepted=intake.accepted,
             duplicate=intake.duplicate)
    return WebhookAccepted(accepted=0 if intake.duplicate else intake.accepted, run_id=intake.run_id,
                           duplicate=intake.duplicate)


async def _request_close(run_id: int, after_s: float) -> None:
    """Ask the workers to close the window after `after_s`. Never delays the 202 for long nor
    fails it: the delivery is committed, and the reconciler closes a window whose close
    message was not sent (an abandoned send may still complete in its thread)."""
    try:
        with anyio.fail_after(CLOSE_SEND_TIMEOUT_S):
            await anyio.to_thread.run_sync(enqueue_close_push, run_id, after_s, abandon_on_cancel=True)
    except Exception as exc:  # broker down or slow: logged, and left to the reconciler
        log.warning("push_window_close_not_sent", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
