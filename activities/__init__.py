"""Playbook modules: Temporal activities grouped by domain (core, platform, database, ...)."""
