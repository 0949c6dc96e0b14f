"""Push ingestion: Standard Webhooks verification and durable intake of deliveries."""
