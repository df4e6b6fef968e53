"""Request plumbing shared by the routers: database sessions, who is logged in, CSRF checks."""
from __future__ import annotations

import secrets
from typing import Iterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from rlhf.feedback.app.accounts import find_session
from rlhf.feedback.app.models import LoginSession

SESSION_COOKIE = "rlhf_session"
LOGIN_CSRF_COOKIE = "rlhf_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
MAX_ID = 2**31 - 1  # ids in URLs are database integers (32-bit on PostgreSQL); larger ones are refused (422)


class LoginRequired(Exception):
    """Raised for an anonymous request: pages redirect to /login, the JSON API answers 401."""


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


def current_session(request: Request, db: Session = Depends(get_db)) -> LoginSession:
    session = find_session(db, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise LoginRequired()
    return session


def require_admin(session: LoginSession = Depends(current_session)) -> LoginSession:
    if not session.user.is_admin:
        raise HTTPException(403, "admins only")
    return session


async def submitted_csrf_token(request: Request) -> str | None:
    """The token from the X-CSRF-Token header (fetch) or the csrf_token form field (forms)."""
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        token = (await request.form()).get(CSRF_FIELD)
    return token if isinstance(token, str) else None


def tokens_match(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and secrets.compare_digest(given.encode(), expected.encode())


async def _check_csrf(request: Request, session: LoginSession) -> LoginSession:
    if not tokens_match(await submitted_csrf_token(request), session.csrf_token):
        raise HTTPException(403, "CSRF token missing or wrong; reload the page and try again")
    return session


async def csrf_session(request: Request, session: LoginSession = Depends(current_session)) -> LoginSession:
    """Dependency for every state-changing route: a logged-in session whose CSRF token came along.
    The session (a cookie) is checked before any form body is read for the token."""
    return await _check_csrf(request, session)


async def csrf_admin(request: Request, session: LoginSession = Depends(require_admin)) -> LoginSession:
    """An admin's session (role checked first, from the cookie) whose CSRF token came along."""
    return await _check_csrf(request, session)


async def admin_form(request: Request, session: LoginSession = Depends(csrf_admin)):
    """The multipart form of an admin upload, read only once the request is known to be an
    admin's (routes that declare File/Form parameters have their body parsed before any dependency
    runs, so an anonymous client could make the server read and spool a large upload)."""
    form = await request.form()  # already parsed (and cached on the request) by the CSRF check
    try:
        yield form
    finally:
        await form.close()
