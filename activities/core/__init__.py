"""Core modules any playbook can use: HTTP calls and probes, notifications, waits.

Importing the package registers them (``load_domains(["core"])``).
"""

from __future__ import annotations

from activities.core import http, notify, runtime, timing

__all__ = ["http", "notify", "runtime", "timing"]
