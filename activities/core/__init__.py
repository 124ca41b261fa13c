"""Core modules any playbook can use: HTTP calls and probes, notifications, waits.

``MODULES`` is what :func:`fireline.modules.load_registry` collects from this domain.
"""

from __future__ import annotations

from activities.core.http import HttpModules
from activities.core.notify import NotifyModules
from activities.core.paging import PagingModules, guard_admit, run_status
from activities.core.timing import wait

MODULES = [HttpModules, NotifyModules, wait, PagingModules, run_status, guard_admit]
