"""The app database: one engine per process, async sessions, and the migrations that build it."""

from haven.db.engine import Database, upsert_once_more_on_conflict, utcnow

__all__ = ["Database", "upsert_once_more_on_conflict", "utcnow"]
