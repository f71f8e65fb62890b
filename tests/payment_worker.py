"""A worker in a process of its own, configured from HAVEN_* variables, for tests that kill it
(`kill -9`) in the middle of an activity: `python -m tests.payment_worker`."""

from __future__ import annotations

import asyncio

from haven.db import Database
from haven.settings import Settings
from haven.temporal import connect
from haven.worker import build_worker


async def main() -> None:
    settings = Settings()
    client = await connect(settings)
    # No sticky cache: the time-skipping server never hands a dead worker's sticky tasks on.
    async with build_worker(client, Database(settings.async_database_url), settings, max_cached_workflows=0) as worker:
        print("worker running", flush=True)
        await asyncio.Event().wait()
        del worker


if __name__ == "__main__":
    asyncio.run(main())
