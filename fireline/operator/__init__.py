"""The operator surface: one operations seam, the HTTP API and the CLI over it, rendering."""
