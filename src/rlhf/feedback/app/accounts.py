"""Users, password hashing (argon2), server-side sessions with a per-session CSRF token, and the
failed-login rate limiter."""
from __future__ import annotations

import re
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.models import LoginSession, User

ROLES = ("admin", "annotator")
SESSION_LIFETIME = timedelta(days=7)
MIN_PASSWORD = 8
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of "no such user" and
# "wrong password" alike, so login responses do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def create_user(db: Session, username: str, password: str, role: str = "annotator") -> User:
    if not _USERNAME.match(username):
        raise RLHFError(f"bad username {username!r}: use 1-100 letters, digits, or _ . @ -")
    if role not in ROLES:
        raise RLHFError(f"role must be one of {ROLES}, got {role!r}")
    if len(password) < MIN_PASSWORD:
        raise RLHFError(f"password must be at least {MIN_PASSWORD} characters")
    user = User(username=username, password_hash=_hasher.hash(password), role=role)
    db.add(user)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise RLHFError(f"user {username!r} already exists") from None
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def start_session(db: Session, user: User) -> LoginSession:
    now = datetime.now(timezone.utc)
    db.execute(delete(LoginSession).where(LoginSession.expires_at < now))
    session = LoginSession(token=secrets.token_urlsafe(32), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                           expires_at=now + SESSION_LIFETIME)
    db.add(session)
    db.commit()
    return session


def find_session(db: Session, token: str | None) -> LoginSession | None:
    if not token:
        return None
    session = db.get(LoginSession, token)
    if session is None:
        return None
    expires = session.expires_at
    if expires.tzinfo is None:  # SQLite hands datetimes back naive (they were stored as UTC)
        expires = expires.replace(tzinfo=timezone.utc)
    return session if expires > datetime.now(timezone.utc) else None


def end_session(db: Session, token: str) -> None:
    db.execute(delete(LoginSession).where(LoginSession.token == token))
    db.commit()


class LoginRateLimiter:
    """At most `limit` failed logins per (username, client IP) in any `window` seconds.

    Kept in memory: the app runs as one server process, and a restart forgetting recent failures
    costs an attacker nothing they could not get by waiting a minute."""

    def __init__(self, limit: int = 5, window: float = 60.0):
        self.limit, self.window = limit, window
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, username: str, ip: str) -> bool:
        with self._lock:
            return len(self._recent((username, ip), time.monotonic())) >= self.limit

    def failed(self, username: str, ip: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._recent((username, ip), now).append(now)

    def succeeded(self, username: str, ip: str) -> None:
        with self._lock:
            self._failures.pop((username, ip), None)
