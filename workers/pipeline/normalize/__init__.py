"""Normalize: turn a raw chunk into unified records and rejections, then hand it to the upsert."""
