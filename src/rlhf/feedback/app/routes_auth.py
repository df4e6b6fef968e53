"""Log in and out, change one's password, end one's other sessions. Login has its own CSRF token
(a cookie matched against a form field) because there is no session yet to hold one."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.accounts import (MAX_PASSWORD, MAX_USERNAME, MIN_PASSWORD, SESSION_LIFETIME, ServerBusy,
                                        WrongPassword, authenticate, change_password, end_session,
                                        end_user_sessions, find_session, start_session)
from rlhf.feedback.app.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, csrf_session, current_session, get_db,
                                    tokens_match)
from rlhf.feedback.app.models import LoginSession
from rlhf.feedback.app.templating import templates

router = APIRouter()


WRONG_LOGIN = "Wrong username or password."
TOO_MANY_LOGINS = "Too many failed logins; wait a minute and try again."


def client_ip(request: Request) -> str:
    """The peer's address; a forwarding header has replaced it only if it came from a proxy the
    operator trusts (`rlhf label serve --forwarded-allow-ips`)."""
    return request.client.host if request.client else "?"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    """Secure when the server was told so (--secure-cookies) or the request came over https (the
    scheme of a trusted proxy's X-Forwarded-Proto; never a header from anyone else)."""
    secure = request.app.state.secure_cookies or request.url.scheme == "https"
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = templates.TemplateResponse(request, "login.html", {"csrf_token": token, "error": error},
                                          status_code=status_code)
    _cookie(response, request, LOGIN_CSRF_COOKIE, token)
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
def login(request: Request, username: str = Form(...), password: str = Form(...), csrf_token: str = Form(""),
          db: Session = Depends(get_db)) -> Response:
    if not tokens_match(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(403, "CSRF token missing or wrong; reload the login page")
    limiter = request.app.state.login_limiter
    ip = client_ip(request)
    too_long = len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD
    # Counted before the slow hash, so a burst of concurrent guesses gets no further than the limits.
    attempt = limiter.reserve(None if too_long else username, ip)  # too long: counts against the IP only
    if attempt is None:
        return _login_page(request, TOO_MANY_LOGINS, 429)
    if too_long:
        return _login_page(request, WRONG_LOGIN, 401)
    try:
        user = authenticate(db, username, password)
    except ServerBusy:
        limiter.release(attempt, succeeded=False)  # no password was checked
        raise
    if user is None or user.disabled:  # a disabled account answers exactly like a wrong password
        return _login_page(request, WRONG_LOGIN, 401)
    limiter.release(attempt)
    old = find_session(db, request.cookies.get(SESSION_COOKIE))
    if old is not None:  # logging in again replaces the session this browser had
        end_session(db, old)
    session = start_session(db, user)
    response = RedirectResponse("/", status_code=303)
    _cookie(response, request, SESSION_COOKIE, session.token, int(SESSION_LIFETIME.total_seconds()))
    return response


@router.post("/logout")
def logout(session: LoginSession = Depends(csrf_session), db: Session = Depends(get_db)) -> Response:
    end_session(db, session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _account_page(request: Request, session: LoginSession, error: str | None = None, notice: str | None = None,
                  status_code: int = 200) -> Response:
    return templates.TemplateResponse(request, "account.html", {
        "session": session, "error": error, "notice": notice, "min_password": MIN_PASSWORD}, status_code=status_code)


@router.get("/account")
def account(request: Request, session: LoginSession = Depends(current_session)) -> Response:
    return _account_page(request, session)


@router.post("/account/password")
def password(request: Request, current: str = Form(...), new: str = Form(...), confirm: str = Form(...),
             session: LoginSession = Depends(csrf_session), db: Session = Depends(get_db)) -> Response:
    """Change one's own password; every other session of the user ends."""
    limiter = request.app.state.login_limiter
    attempt = limiter.reserve(session.user.username, client_ip(request))
    if attempt is None:
        return _account_page(request, session, "Too many wrong passwords; wait a minute and try again.",
                             status_code=429)
    try:
        ended = change_password(db, session, current, new, confirm)
    except WrongPassword as exc:  # stays counted
        return _account_page(request, session, str(exc), status_code=400)
    except RLHFError as exc:  # the current password was right
        limiter.release(attempt)
        return _account_page(request, session, str(exc), status_code=400)
    except ServerBusy:
        limiter.release(attempt, succeeded=False)
        raise
    limiter.release(attempt)
    return _account_page(request, session, notice=f"Password changed; {ended} other session(s) logged out.")


@router.post("/account/sessions/end-others")
def end_other_sessions(request: Request, session: LoginSession = Depends(csrf_session),
                       db: Session = Depends(get_db)) -> Response:
    ended = end_user_sessions(db, session.user_id, keep=session)
    return _account_page(request, session, notice=f"{ended} other session(s) logged out.")


@router.get("/api/session")
def whoami(session: LoginSession = Depends(current_session)) -> dict:
    """Who is logged in, and the CSRF token API clients send back in X-CSRF-Token."""
    return {"username": session.user.username, "role": session.user.role, "csrf_token": session.csrf_token}


@router.get("/")
def home(session: LoginSession = Depends(current_session)) -> Response:
    return RedirectResponse("/admin" if session.user.is_admin else "/projects", status_code=303)
