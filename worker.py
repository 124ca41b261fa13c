"""Run Fireline's Temporal workers: ``python worker.py [--domains a,b] [--no-workflows]``.

The logic lives in :mod:`fireline.runtime.workers`; this file is the entry point the product
layout promises, so a deployment can run one process per domain next to that domain's systems.
"""

from __future__ import annotations

from fireline.runtime.workers import exit_process, main

if __name__ == "__main__":
    exit_process(main())
