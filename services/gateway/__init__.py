"""Gateway: the public API, routing calls to the backend services."""
