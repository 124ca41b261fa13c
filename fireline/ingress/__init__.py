"""Alerts in: one parser per source, authentication, routing and group commit."""
