"""The FastAPI application: wiring of database, templates, static files and routers, the security
headers every response carries (error pages included) and the request size limits."""
from __future__ import annotations

import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.feedback.app.accounts import LoginRateLimiter, ServerBusy
from rlhf.feedback.app.db import DatabaseFileGuard, open_database, sqlite_path
from rlhf.feedback.app.deps import LoginRequired
from rlhf.feedback.app.importer import MAX_UPLOAD_BYTES
from rlhf.feedback.app.templating import HERE, templates

MAX_BODY_BYTES = 256 * 2**10  # any other request body (labels, forms, logins)
IMPORT_PATH = re.compile(r"/admin/projects/[^/]+/import")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: http: https:; "
                               "media-src 'self' http: https:; style-src 'self'; script-src 'self'",
}


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def add_security_headers(response: Response, path: str) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not path.startswith("/static/"):  # pages, API answers and media are per user: never cached
        response.headers.setdefault("Cache-Control", "no-store")
    return response


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request too large: the limit is {limit // 1024} KiB")


class BodyLimit:
    """Refuses request bodies over the limit (413) by Content-Length, and while streaming for
    requests without one, before anything is parsed or stored."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = 2 * MAX_UPLOAD_BYTES + 2**20 if IMPORT_PATH.fullmatch(scope["path"]) else MAX_BODY_BYTES
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            too_large = BodyTooLarge(limit)
            response = JSONResponse({"detail": too_large.detail}, status_code=413, headers={"Connection": "close"})
            return await add_security_headers(response, scope["path"])(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message
        await self.app(scope, limited_receive, send)


def create_app(db: str, secure_cookies: bool = False) -> FastAPI:
    """`db` is a SQLite file path or a database URL; the schema is migrated before serving.
    `secure_cookies` marks every cookie Secure (otherwise only those set over https)."""
    from rlhf.feedback.app import routes_admin, routes_auth, routes_label

    app = FastAPI(title="rlhf labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = open_database(db)
    app.state.database_files = DatabaseFileGuard(sqlite_path(db))
    app.state.login_limiter = LoginRateLimiter()
    app.state.secure_cookies = secure_cookies
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (routes_auth, routes_label, routes_admin):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and the router's 404/405
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return templates.TemplateResponse(request, "message.html", {"title": f"Error {exc.status_code}",
                                                                     "message": exc.detail},
                                          status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ServerBusy)
    async def busy(request: Request, exc: ServerBusy) -> Response:
        return await http_error(request, HTTPException(503, str(exc), headers={"Retry-After": "5"}))

    @app.exception_handler(Exception)
    async def server_error(request: Request, _exc: Exception) -> Response:
        """Runs outside every middleware: the security headers are added here too."""
        if wants_json(request):
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
        else:
            response = HTMLResponse("<!doctype html><title>Error 500</title><h1>Error 500</h1>"
                                    "<p>Internal server error; the server log has the details.</p>", status_code=500)
        return add_security_headers(response, request.url.path)

    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        return add_security_headers(await call_next(request), request.url.path)

    return app
