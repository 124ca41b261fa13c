"""Application modules (feature flags, Redis, HTTP services, Prometheus) live here."""

from __future__ import annotations

MODULES: list[object] = []
