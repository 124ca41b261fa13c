"""Application modules: feature flags and caches in Redis, maintenance mode over HTTP, PromQL.

``MODULES`` is what :func:`fireline.modules.load_registry` collects from this domain. Importing
it loads declarations only; redis-py is imported by the module sets when a worker first uses a
Redis target.
"""

from __future__ import annotations

from activities.application.cache import CacheModules
from activities.application.flags import FlagModules
from activities.application.maintenance import MaintenanceModules
from activities.application.prometheus import PrometheusModules

MODULES: list[object] = [FlagModules, CacheModules, MaintenanceModules, PrometheusModules]
