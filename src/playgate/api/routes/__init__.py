"""Routers: health, auth, the seed-compatible routes, /v1 plays and streams, /v1 admin management."""
