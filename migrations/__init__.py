"""Alembic migrations for the results database (run through `facegender db upgrade`)."""
