"""SQLAlchemy 2 tables, repositories implementing the domain ports, and Alembic migrations."""
