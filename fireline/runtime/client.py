"""The one way to build a Temporal client: always with the pydantic data converter.

A client without it would silently turn our models into dicts; every caller (worker, CLI,
tests, bench) goes through :func:`make_client`.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from fireline.runtime.settings import Settings, get_settings


async def make_client(settings: Settings | None = None, *, address: str | None = None) -> Client:
    settings = settings or get_settings()
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        address or settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key,
        tls=settings.temporal_tls or bool(api_key),
        data_converter=pydantic_data_converter,
    )
