"""Database modules (PostgreSQL via psycopg 3): each target system gets a file of its own here.

``connection`` holds the targets, sessions and the step ledger; ``postgres`` replication,
sessions, read-only, promotion and connection limits; ``snapshot`` dumps, restores and
integrity against a manifest. Importing this package never imports psycopg.
"""

from __future__ import annotations

from activities.database.postgres import PostgresModules
from activities.database.snapshot import SnapshotModules

MODULES: list[object] = [PostgresModules, SnapshotModules]
