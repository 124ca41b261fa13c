"""Platform modules: HAProxy's runtime API and Kubernetes, one file per target system.

``MODULES`` is what :func:`fireline.modules.load_registry` collects from this domain. The
drivers (sockets, lightkube) are used only inside the module sets, so importing this package
to compile a playbook opens nothing and imports no Kubernetes client.
"""

from __future__ import annotations

from activities.platform.haproxy import HaproxyModules
from activities.platform.kubernetes import KubernetesModules

MODULES: list[object] = [HaproxyModules, KubernetesModules]
