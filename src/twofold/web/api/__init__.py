"""The JSON API under /api/v1 (API.md)."""
