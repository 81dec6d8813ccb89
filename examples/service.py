"""An aiohttp service that backs up a directory every night and serves /metrics.

Run it with ``python examples/service.py STORE SOURCE_DIR [PORT]``; ``POST /backup`` runs a
backup at once. tests/test_embedding.py runs it and docs/library.md shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from asyncbackup import BackupEngine, BackupError, BackupFailed, Metrics, open_storage

log = logging.getLogger("service")
ENGINE = web.AppKey("engine", BackupEngine)
REGISTRY = web.AppKey("registry", CollectorRegistry)
SOURCE = web.AppKey("source", Path)


def seconds_until(hour: int, now: datetime) -> float:
    """Seconds from ``now`` to the next ``hour``:00 UTC."""
    next_run = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if next_run <= now:
        next_run += timedelta(days=1)
    return (next_run - now).total_seconds()


async def backup_once(engine: BackupEngine, source: Path) -> str | None:
    """Back up ``source``; the new backup's name, or None (logged) if nothing was committed."""
    try:
        summary = await engine.backup(source)
    except BackupFailed as exc:  # the job gave up: nothing committed, each failure named
        for failure in exc.failures:
            log.error("backup: %s: %s", failure.path, failure.error)
        return None
    except BackupError as exc:  # bad configuration, a store that refuses us...
        log.error("backup: %s", exc)
        return None
    if summary.warnings:  # committed, but some files were skipped or changed while read
        log.warning("backup %s: %d warnings", summary.name, len(summary.warnings))
    return summary.name


async def nightly(engine: BackupEngine, source: Path, hour: int) -> None:
    while True:
        await asyncio.sleep(seconds_until(hour, datetime.now(UTC)))
        await backup_once(engine, source)


def make_app(store_url: str, source: Path, *, hour: int = 2) -> web.Application:
    app = web.Application()
    app[REGISTRY] = CollectorRegistry()  # the service's registry: ours and its own metrics
    app[SOURCE] = source

    async def engine_and_schedule(app: web.Application) -> AsyncIterator[None]:
        async with open_storage(store_url) as store:
            metrics = Metrics(app[REGISTRY], labels={"engine": "nightly"})
            app[ENGINE] = BackupEngine(store, metrics=metrics)
            schedule = asyncio.create_task(nightly(app[ENGINE], source, hour))
            yield
            schedule.cancel()  # a backup in flight stops; nothing is committed, nothing left
            with contextlib.suppress(asyncio.CancelledError):
                await schedule

    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(request.app[REGISTRY])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def backup_now(request: web.Request) -> web.Response:
        name = await backup_once(request.app[ENGINE], request.app[SOURCE])
        return web.json_response({"name": name}, status=200 if name else 500)

    app.cleanup_ctx.append(engine_and_schedule)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_post("/backup", backup_now)
    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 8080
    web.run_app(make_app(sys.argv[1], Path(sys.argv[2])), host="127.0.0.1", port=port)
