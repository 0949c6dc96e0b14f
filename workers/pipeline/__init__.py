"""The pipeline stages, in the order data flows: fetch, raw, normalize, upsert, finalize."""
