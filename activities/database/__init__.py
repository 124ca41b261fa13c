"""Database modules (PostgreSQL via psycopg 3): each target system gets a file of its own here."""

from __future__ import annotations

MODULES: list[object] = []
