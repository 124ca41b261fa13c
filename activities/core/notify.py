"""``core.notify``: tell people what a playbook is doing, through a generic JSON webhook.

The payload's ``text`` key is what Slack-compatible incoming webhooks show; the other keys give
any other receiver (a chat bridge, a paging tool, an audit sink) structured fields to use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field
from temporalio import activity

from activities.core.runtime import (
    HttpClientSet,
    idempotency_key,
    invalid_input,
    require_url,
    run_headers,
    running,
)
from fireline.modules import module
from fireline.plan import Risk

log = structlog.get_logger(__name__)


class NotifyInput(BaseModel):
    message: str
    severity: Literal["info", "warning", "critical"] = "info"
    url: str | None = Field(default=None, description="defaults to FIRELINE_NOTIFY_WEBHOOK_URL")
    fields: dict[str, Any] = Field(default_factory=dict)


class NotifyOutput(BaseModel):
    delivered: bool
    """Always true when the module returns: a refused or failed delivery raises instead."""
    status: int


class NotifyModules(HttpClientSet):
    """Webhook notifications sharing one connection pool per worker."""

    @module("core.notify", domain="core", risk=Risk.low, mutates=False)
    async def notify(self, request: NotifyInput) -> NotifyOutput:
        """Post a message to a JSON webhook (Slack-compatible ``text``), deduplicated by key.

        Failures raise like any other module, so the retry policy applies and a lost
        notification shows up in the run instead of disappearing.
        """
        async with running("core.notify"):
            url = request.url or self.settings.notify_webhook_url
            if not url:
                raise invalid_input(
                    "core.notify has no url and FIRELINE_NOTIFY_WEBHOOK_URL is not set"
                )
            require_url(url, "url")
            info = activity.info()
            payload = {
                "text": request.message,
                "severity": request.severity,
                "fields": request.fields,
                "workflow_id": info.workflow_id,
                "activity_id": info.activity_id,
                "sent_at": datetime.now(UTC).isoformat(),
            }
            response = await self.deliver(url, payload, run_headers())
            log.info(
                "notification delivered",
                url=url,
                severity=request.severity,
                status=response.status_code,
                idempotency_key=idempotency_key(),
            )
            return NotifyOutput(delivered=True, status=response.status_code)
