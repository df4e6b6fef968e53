"""Log in and out. Login has its own CSRF token (a cookie matched against a form field) because
there is no session yet to hold one."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from rlhf.feedback.app.accounts import SESSION_LIFETIME, authenticate, end_session, start_session
from rlhf.feedback.app.deps import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, csrf_session, current_session, get_db,
                                    tokens_match)
from rlhf.feedback.app.models import LoginSession
from rlhf.feedback.app.templating import templates

router = APIRouter()


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


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
    ip = request.client.host if request.client else "?"
    if limiter.blocked(username, ip):
        return _login_page(request, "Too many failed logins; wait a minute and try again.", 429)
    user = authenticate(db, username, password)
    if user is None:
        limiter.failed(username, ip)
        return _login_page(request, "Wrong username or password.", 401)
    limiter.succeeded(username, ip)
    session = start_session(db, user)
    response = RedirectResponse("/", status_code=303)
    _cookie(response, request, SESSION_COOKIE, session.token, int(SESSION_LIFETIME.total_seconds()))
    return response


@router.post("/logout")
def logout(session: LoginSession = Depends(csrf_session), db: Session = Depends(get_db)) -> Response:
    end_session(db, session.token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/api/session")
def whoami(session: LoginSession = Depends(current_session)) -> dict:
    """Who is logged in, and the CSRF token API clients send back in X-CSRF-Token."""
    return {"username": session.user.username, "role": session.user.role, "csrf_token": session.csrf_token}


@router.get("/")
def home(session: LoginSession = Depends(current_session)) -> Response:
    return RedirectResponse("/admin" if session.user.is_admin else "/projects", status_code=303)
