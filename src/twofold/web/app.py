"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from twofold import __version__
from twofold.config import Settings
from twofold.container import Twofold, build

from . import oauth as oauth_api
from . import problems
from .api import admin as admin_api
from .api import identity_providers as identity_providers_api
from .api import login as login_api
from .api import me as me_api
from .api import push as push_api
from .middleware import ExactPaths, LimitsAndHeaders
from .pages import authorize as authorize_pages
from .pages import common as page_common
from .pages import console as console_pages
from .pages import profile as profile_pages
from .pages import routes as pages
from .pages import sso as sso_pages

logger = logging.getLogger("twofold.web")


def create_app(
    twofold: Twofold | None = None, *, settings: Settings | None = None, housekeeping: bool = True
) -> FastAPI:
    twofold = twofold or build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeeping_loop(twofold)) if housekeeping else None
        try:
            yield
        finally:
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await twofold.wakeups.stop_listening()
            try:
                await run_in_threadpool(twofold.deferred_audit.flush)  # grants of the last moments
            except Exception as error:
                logger.error("audit events could not be written at shutdown: %s", error.__class__.__name__)

    app = FastAPI(
        title="Twofold",
        version=__version__,
        description="Identity and access management in which multi-factor authentication is mandatory.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.twofold = twofold
    problems.install(app)
    app.include_router(login_api.router)
    app.include_router(me_api.router)
    app.include_router(admin_api.router)
    app.include_router(identity_providers_api.router)
    app.include_router(push_api.router)
    app.include_router(oauth_api.router)
    app.include_router(pages.router)
    app.include_router(sso_pages.router)
    app.include_router(profile_pages.router)
    app.include_router(console_pages.router)
    app.include_router(authorize_pages.router)
    page_common.mount_static(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            with twofold.uow.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # any failure to reach the database means "not ready"
            logger.warning("not ready: %s", error.__class__.__name__)
            return problems.problem(503, "unavailable", "Database unreachable", headers={"Retry-After": "2"})
        return JSONResponse({"status": "ready"})

    secure_public_url = twofold.settings.public_url.startswith("https://")
    app.add_middleware(ExactPaths, paths=oauth_api.CLIENT_ENDPOINTS)
    app.add_middleware(LimitsAndHeaders, max_body_bytes=twofold.settings.max_body_bytes, hsts=secure_public_url)
    return app


async def _housekeeping_loop(twofold: Twofold) -> None:
    interval = max(5, twofold.settings.housekeeping_interval_seconds)
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(twofold.maintenance.housekeeping)
        except Exception as error:  # housekeeping must never take the server down; it retries next round
            logger.warning("housekeeping failed: %s", error.__class__.__name__)


def app_from_environment() -> FastAPI:
    """Entry point for `uvicorn --factory twofold.web.app:app_from_environment` (what `twofold serve` runs)."""
    return create_app()
