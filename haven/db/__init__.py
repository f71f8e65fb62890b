"""The app database: one engine per process, async sessions, and the migrations that build it."""

from haven.db.engine import Database, utcnow

__all__ = ["Database", "utcnow"]
