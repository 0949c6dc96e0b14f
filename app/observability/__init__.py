"""Observability read by the API: ingest metrics and broker queue depths."""
