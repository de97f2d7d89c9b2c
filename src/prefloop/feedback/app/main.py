"""The annotation web app: `create_app(settings)` builds the FastAPI application.

Pages are static HTML + JS (no build step); all data goes through the JSON API (routes.py),
documented at /openapi.json. Model output reaches the browser only as JSON strings that the
page renders with DOM text nodes (static/md.js), under a Content-Security-Policy without
'unsafe-inline'.
"""

from __future__ import annotations

import random
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from prefloop.errors import PrefloopError
from prefloop.feedback import assign
from prefloop.feedback.app import fastpath, service
from prefloop.feedback.app.hot import BUSY, HotPaths, error_status
from prefloop.feedback.app.routes import router
from prefloop.feedback.app.security import GuardMiddleware, RateLimiter, TokenCache
from prefloop.feedback.app.settings import AppSettings
from prefloop.feedback.app.writer import LabelWriter
from prefloop.feedback.store import PreferenceStore

HERE = Path(__file__).parent


def create_app(settings: AppSettings, db_url: str | None = None) -> FastAPI:
    """The app over the store at `db_url` (default: settings.db), migrated on start."""
    url = db_url or settings.db
    if not url:
        raise PrefloopError("no database URL (give --db or --workspace)", field="db")
    store = PreferenceStore(url)
    if settings.overlap is not None:
        assign.set_overlap(store.engine, settings.overlap)
    return build_app(settings, store.engine)


def build_app(settings: AppSettings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="prefloop annotation API",
        version="1",
        description="Fetch comparison tasks, post preference labels, manage annotators. "
        "Every call needs `Authorization: Bearer <token>` except /api/login.",
        docs_url=None,  # Swagger UI needs inline script and a CDN; the CSP forbids both
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.tokens = TokenCache(engine, settings.auth_cache_s)
    app.state.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.state.login_limiter = RateLimiter(settings.rate_limit, settings.rate_burst)  # per address
    app.state.open_count = service.OpenCount()
    app.state.rng = random.SystemRandom()  # side order must not be predictable
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_pages(app)
    _add_error_handlers(app)
    app.state.label_writer = LabelWriter(engine)
    app.add_middleware(HotPaths, state=app.state)  # inside GuardMiddleware (added after it)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _add_pages(app: FastAPI) -> None:
    def page(name: str) -> FileResponse:
        return FileResponse(HERE / "templates" / name, media_type="text/html")

    @app.get("/", include_in_schema=False)
    def label_page() -> FileResponse:
        return page("label.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return page("admin.html")

    @app.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:
        return page("login.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> RedirectResponse:
        return RedirectResponse("/openapi.json")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PrefloopError)
    async def user_error(_: Request, exc: PrefloopError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=error_status(exc))

    async def busy(_: Request, exc: Exception) -> JSONResponse:
        # the database is locked/unreachable: tell the client to retry (the label was not stored)
        return JSONResponse(BUSY, status_code=503, headers={"Retry-After": "1"})

    for error in fastpath.UNAVAILABLE:
        app.add_exception_handler(error, busy)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes (`prefloop annotate --workers N`)."""
    return create_app(AppSettings.from_env())
