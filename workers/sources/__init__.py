"""Source connectors: one module per kind, plus the shared HTTP and file helpers.

Use `workers.sources.registry.extract(source, state)`; it picks the connector by kind.
"""
