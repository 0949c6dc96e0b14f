"""The operator console: one server-rendered page at `/` (readable without JavaScript)."""
