"""Fetch: stream a source, leave out rows known unchanged, store raw chunks, fan them out."""
