"""The catalogue: users, plans and videos in SQL (SQLite or PostgreSQL), with Alembic migrations."""
