"""Alembic migrations of the preference store (run by PreferenceStore.upgrade)."""
