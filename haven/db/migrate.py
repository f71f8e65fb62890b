"""Brings a database to the newest schema with Alembic (`haven migrate`, and at `haven run`)."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config

from haven.settings import REPO_ROOT


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    """Synchronous: call it from a thread when an event loop is already running."""
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)
