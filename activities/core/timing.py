"""``core.wait``: a deliberate pause in a playbook (let caches drain, let traffic settle)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog
from pydantic import BaseModel, Field

from activities.core.runtime import running
from fireline.modules import module
from fireline.plan import MAX_WAIT_S, WAIT_MODULE, Risk

log = structlog.get_logger(__name__)


class WaitInput(BaseModel):
    seconds: float = Field(ge=0, le=MAX_WAIT_S)
    reason: str = ""


class WaitOutput(BaseModel):
    waited_s: float


@module(
    WAIT_MODULE,
    domain="core",
    risk=Risk.low,
    mutates=False,
    timeout=timedelta(seconds=MAX_WAIT_S + 300),
    heartbeat=timedelta(seconds=30),
)
async def wait(request: WaitInput) -> WaitOutput:
    """Pause the playbook for a number of seconds, giving the reason in the timeline.

    Workflows run this module as a durable timer (``fireline.plan.WAIT_MODULE``) and never
    schedule this activity: a timer holds no worker slot and survives worker restarts. The
    activity still exists, sleeping while it heartbeats, so the module is complete, describable
    by ``fireline modules`` and behaves the same if something does call it directly.
    """
    async with running(WAIT_MODULE):
        log.info("waiting", seconds=request.seconds, reason=request.reason)
        started = time.monotonic()
        await asyncio.sleep(request.seconds)
        return WaitOutput(waited_s=time.monotonic() - started)
