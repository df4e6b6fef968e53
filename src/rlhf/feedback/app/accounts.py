"""Users, password hashing (argon2), server-side sessions with a per-session CSRF token, and the
failed-login rate limiter.

Policy (docs/labeling-app.md, "Security"):
* Session tokens: the cookie holds 32 random bytes; the database holds only their SHA-256.
* Password hashing costs argon2's 64 MiB per hash, so at most HASH_SLOTS hashes run at once; a
  login that waits longer than HASH_WAIT seconds for a slot is answered 503 (try again).
* Usernames are at most MAX_USERNAME characters and passwords at most MAX_PASSWORD; longer input is
  refused before any hashing or bookkeeping.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.models import LoginSession, User

ROLES = ("admin", "annotator")
SESSION_LIFETIME = timedelta(days=7)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_USERNAME = 100
_USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,%d}" % MAX_USERNAME)
HASH_SLOTS = 2  # argon2 hashes running at once (each takes 64 MiB and a core for ~0.1 s)
HASH_WAIT = 10.0  # seconds a login waits for a free slot before the server answers 503
_hash_slots = threading.BoundedSemaphore(HASH_SLOTS)
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of "no such user" and
# "wrong password" alike, so login responses do not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class ServerBusy(Exception):
    """Every password-hashing slot stayed taken for HASH_WAIT seconds (HTTP 503)."""


def _hashing(fn, *args):
    """Run one argon2 operation in a bounded slot, so concurrent logins cannot exhaust memory."""
    if not _hash_slots.acquire(timeout=HASH_WAIT):
        raise ServerBusy("the server is busy checking passwords; try again in a few seconds")
    try:
        return fn(*args)
    finally:
        _hash_slots.release()


def hash_password(password: str) -> str:
    return _hashing(lambda p: _hasher.hash(p), password)


def _verify(password_hash: str, password: str) -> bool:
    def check(h, p):
        try:
            return _hasher.verify(h, p)
        except (VerificationError, InvalidHashError):
            return False
    return _hashing(check, password_hash, password)


def valid_username(username: str) -> bool:
    return isinstance(username, str) and _USERNAME.fullmatch(username) is not None


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise RLHFError(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise RLHFError(f"password must be at most {MAX_PASSWORD} characters")


def create_user(db: Session, username: str, password: str, role: str = "annotator") -> User:
    if not valid_username(username):
        shown = username if len(username) <= 120 else username[:120] + "..."
        raise RLHFError(f"bad username {shown!r}: use 1-{MAX_USERNAME} letters, digits, or _ . @ -")
    if role not in ROLES:
        raise RLHFError(f"role must be one of {ROLES}, got {role!r}")
    check_new_password(password)
    user = User(username=username, password_hash=hash_password(password), role=role, disabled=False)
    db.add(user)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise RLHFError(f"user {username!r} already exists") from None
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    """The user if the password is right (disabled users included: the caller refuses them)."""
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return None  # refused before any work
    user = db.scalar(select(User).where(User.username == username))
    ok = _verify(user.password_hash if user else _DUMMY_HASH, password)
    return user if ok and user is not None else None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(db: Session, user: User) -> LoginSession:
    """A new session row; the cookie value is on the returned object as `.token` (never stored)."""
    now = datetime.now(timezone.utc)
    db.execute(delete(LoginSession).where(LoginSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session = LoginSession(token_hash=token_hash(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                           expires_at=now + SESSION_LIFETIME, created_at=now)
    db.add(session)
    db.commit()
    session.token = token
    return session


def find_session(db: Session, token: str | None) -> LoginSession | None:
    if not token or len(token) > 200:
        return None
    session = db.get(LoginSession, token_hash(token))
    if session is None or session.user.disabled:
        return None
    expires = session.expires_at
    if expires.tzinfo is None:  # SQLite hands datetimes back naive (they were stored as UTC)
        expires = expires.replace(tzinfo=timezone.utc)
    return session if expires > datetime.now(timezone.utc) else None


def end_session(db: Session, session: LoginSession) -> None:
    db.execute(delete(LoginSession).where(LoginSession.token_hash == session.token_hash))
    db.commit()


def end_user_sessions(db: Session, user_id: int, keep: LoginSession | None = None) -> int:
    """Delete the user's sessions (all but `keep`); returns how many ended."""
    query = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep is not None:
        query = query.where(LoginSession.token_hash != keep.token_hash)
    ended = db.execute(query).rowcount
    db.commit()
    return ended


def count_sessions(db: Session) -> dict[int, int]:
    now = datetime.now(timezone.utc)
    return dict(db.execute(select(LoginSession.user_id, func.count()).where(LoginSession.expires_at > now)
                           .group_by(LoginSession.user_id)).all())


def change_password(db: Session, session: LoginSession, current: str, new: str, confirm: str) -> int:
    """Check the current password, set the new one and end the user's other sessions."""
    user = session.user
    if not _verify(user.password_hash, current[:MAX_PASSWORD + 1]):
        raise RLHFError("the current password is wrong")
    if new != confirm:
        raise RLHFError("the new password and its confirmation differ")
    check_new_password(new)
    user.password_hash = hash_password(new)
    db.commit()
    return end_user_sessions(db, user.id, keep=session)


def set_disabled(db: Session, user: User, disabled: bool) -> None:
    """Disable (ending every session of the user at once) or enable a user."""
    user.disabled = disabled
    db.commit()
    if disabled:
        end_user_sessions(db, user.id)


class LoginRateLimiter:
    """Failed logins are counted per (username, client IP), per client IP and per username (any IP);
    while any count has reached its limit within the last `window` seconds, logins for that
    username from that IP are refused with 429, even with the right password (otherwise guessing
    could go on until it succeeds). A success clears only its (username, IP) count.

    Kept in memory: the app runs as one server process, and a restart forgetting recent failures
    costs an attacker nothing they could not get by waiting a minute. Keys whose failures are all
    older than the window are evicted, and at most `max_keys` keys are kept (oldest dropped first),
    so a flood of made-up usernames cannot grow memory without bound."""

    def __init__(self, per_user_ip: int = 5, per_ip: int = 20, per_user: int = 20, window: float = 60.0,
                 max_keys: int = 10_000):
        self.limits = {"user_ip": per_user_ip, "ip": per_ip, "user": per_user}
        self.window, self.max_keys = window, max_keys
        self._failures: OrderedDict[tuple, deque[float]] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    @staticmethod
    def _keys(username: str | None, ip: str) -> list[tuple]:
        if username is None:  # input refused unread (too long): counts against the IP only
            return [("ip", ip)]
        username = username[:MAX_USERNAME]
        return [("user_ip", username, ip), ("ip", ip), ("user", username)]

    def _evict(self, now: float) -> None:
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if len(self._failures) <= self.max_keys and times and times[-1] > now - self.window:
                break
            self._failures.popitem(last=False)

    def _count(self, key: tuple, now: float) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times)

    def blocked(self, username: str, ip: str) -> bool:
        with self._lock:
            now = time.monotonic()
            self._evict(now)
            return any(self._count(key, now) >= self.limits[key[0]] for key in self._keys(username, ip))

    def failed(self, username: str | None, ip: str) -> None:
        with self._lock:
            now = time.monotonic()
            for key in self._keys(username, ip):
                times = self._failures.setdefault(key, deque(maxlen=max(self.limits.values())))
                times.append(now)
                self._failures.move_to_end(key)
            self._evict(now)

    def succeeded(self, username: str, ip: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(username, ip)[0], None)

    def key_count(self) -> int:
        with self._lock:
            self._evict(time.monotonic())
            return len(self._failures)
