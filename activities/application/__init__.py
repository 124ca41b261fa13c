"""Application modules (feature flags, Redis, HTTP services, Prometheus) live here."""
