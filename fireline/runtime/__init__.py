"""Running Fireline: settings, logging, the Temporal client, workers and the embedded stack."""
