"""Fireline: incident-response runbooks as code, run durably on Temporal."""

__version__ = "0.1.0"
