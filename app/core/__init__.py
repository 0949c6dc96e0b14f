"""What the workers and the CLI share with the API: runs, sources, raw format, enqueueing, logs."""
