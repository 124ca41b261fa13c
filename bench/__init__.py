"""Fireline against a hand-written Temporal workflow, measured on one dev server in one run.

``python -m bench`` (or ``make bench``) prints the table; bench/README.md says how to read it.
"""

from __future__ import annotations
