"""FastAPI app: the JSON API under /api/v1, the server-rendered pages, health checks."""
