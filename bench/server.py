"""The one Temporal dev server a bench run measures on, started and stopped by the bench.

``tuned`` is what Fireline's embedded server runs with (history queue processors allowed to
poll at 1000/s, SQLite in WAL mode); ``stock`` is ``temporal server start-dev`` as shipped,
whose 20/s polling costs tens of milliseconds per workflow task round trip.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from fireline.messages import SEARCH_ATTRIBUTES
from fireline.runtime.binaries import temporal_cli
from fireline.runtime.stack import SQLITE_PRAGMAS, TUNING_FLAGS

ProfileName = Literal["tuned", "stock"]
DbName = Literal["sqlite", "memory"]


class ServerProfile(BaseModel):
    """What the figures were measured on; printed above the table and stored in the JSON."""

    profile: ProfileName
    db: DbName
    server_version: str
    flags: list[str]
    cpus: int
    load_average: tuple[float, float, float]


def server_args(profile: ProfileName, db: DbName) -> list[str]:
    args: list[str] = []
    if profile == "tuned":
        args += TUNING_FLAGS
        if db == "sqlite":
            for pragma in SQLITE_PRAGMAS:
                args += ["--sqlite-pragma", pragma]
    return args


def server_version() -> str:
    done = subprocess.run(
        [str(temporal_cli()), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() or done.stderr.strip() or "unknown"


@asynccontextmanager
async def dev_server(
    profile: ProfileName, db: DbName
) -> AsyncIterator[tuple[WorkflowEnvironment, ServerProfile]]:
    """Start a loopback dev server on a free port; the environment stops exactly that process."""
    args = server_args(profile, db)
    with tempfile.TemporaryDirectory(prefix="fireline-bench-") as tmp:
        db_file = str(Path(tmp) / "temporal.db") if db == "sqlite" else None
        env = await WorkflowEnvironment.start_local(
            ip="127.0.0.1",
            data_converter=pydantic_data_converter,
            search_attributes=[SearchAttributeKey.for_keyword(n) for n in SEARCH_ATTRIBUTES],
            dev_server_existing_path=str(temporal_cli()),
            dev_server_database_filename=db_file,
            dev_server_extra_args=args,
        )
        try:
            yield (
                env,
                ServerProfile(
                    profile=profile,
                    db=db,
                    server_version=server_version(),
                    flags=args,
                    cpus=os.cpu_count() or 0,
                    load_average=os.getloadavg(),
                ),
            )
        finally:
            await env.shutdown()
