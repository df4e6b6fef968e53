"""The FastAPI application: wiring of database, templates, static files and routers."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from rlhf.feedback.app import routes_admin, routes_auth, routes_label
from rlhf.feedback.app.accounts import LoginRateLimiter
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.deps import LoginRequired
from rlhf.feedback.app.templating import HERE, templates


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(db: str) -> FastAPI:
    """`db` is a SQLite file path or a database URL; the schema is migrated before serving."""
    app = FastAPI(title="rlhf labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = open_database(db)
    app.state.login_limiter = LoginRateLimiter()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (routes_auth, routes_label, routes_admin):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return templates.TemplateResponse(request, "message.html", {"title": f"Error {exc.status_code}",
                                                                     "message": exc.detail},
                                          status_code=exc.status_code)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data: http: https:; "
                                    "media-src 'self' http: https:; style-src 'self'; script-src 'self'")
        return response

    return app
