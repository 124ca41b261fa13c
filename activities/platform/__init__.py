"""Platform modules (HAProxy, Kubernetes): each target system gets a file of its own here."""

from __future__ import annotations

MODULES: list[object] = []
