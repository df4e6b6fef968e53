"""Users, password hashing (argon2), server-side sessions with a per-session CSRF token, and the
failed-login rate limiter.

Policy (docs/labeling-app.md, "Security"):
* Session tokens: the cookie holds 32 random bytes; the database holds only their SHA-256.
* Password hashing costs argon2's 64 MiB per hash, so at most HASH_SLOTS hashes run at once; a
  login that waits longer than HASH_WAIT seconds for a slot is answered 503 (try again).
* Usernames are at most MAX_USERNAME characters and passwords at most MAX_PASSWORD; longer input is
  refused before any hashing (a login counts it against the client's IP only).
* Usernames are unique and matched ignoring ASCII case (`Alice` logs in as `alice`); they are
  shown as they were created.
* There is always an active admin: an admin may disable another admin, but never themselves nor
  the last active one.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
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


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def canonical_username(username: str) -> str:
    """The form usernames are compared in: ASCII letters lowered, nothing else changed (so no
    other character can become a valid username's alias, as str.lower() would make the Kelvin
    sign of 'K' one)."""
    return username.translate(_ASCII_LOWER)


def client_key(ip: str) -> str:
    """How the limiter counts a client address: IPv4 as is, IPv6 by its /64 network (one host is
    usually given a whole /64, so counting single addresses would give it 2**64 fresh counts)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip


class WrongPassword(RLHFError):
    """The current password given to change it is wrong (counted by the login limiter)."""


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
    existing = find_user(db, username)
    if existing is not None:
        raise RLHFError(_taken(username, existing.username))
    user = User(username=username, password_hash=hash_password(password), role=role, disabled=False)
    db.add(user)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()  # a concurrent request created it (the unique index on lower(username))
        existing = find_user(db, username)
        raise RLHFError(_taken(username, existing.username if existing else username)) from None
    return user


def _taken(username: str, existing: str) -> str:
    same = "" if existing == username else f" as {existing!r} (usernames ignore case)"
    return f"user {username!r} already exists{same}"


def find_user(db: Session, username: str) -> User | None:
    """The user with this username, ignoring ASCII case; None for anything not a valid username."""
    if not valid_username(username):
        return None
    return db.scalar(select(User).where(func.lower(User.username) == canonical_username(username)))


def authenticate(db: Session, username: str, password: str) -> User | None:
    """The user if the password is right (disabled users included: the caller refuses them).
    The same hash is computed whether or not the user exists, so timing tells nothing."""
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return None  # refused before any work
    user = find_user(db, username)
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
        raise WrongPassword("the current password is wrong")
    if new != confirm:
        raise RLHFError("the new password and its confirmation differ")
    check_new_password(new)
    user.password_hash = hash_password(new)
    db.commit()
    return end_user_sessions(db, user.id, keep=session)


def set_disabled(db: Session, user: User, disabled: bool) -> None:
    """Disable (ending every session of the user at once) or enable a user. Disabling an admin
    first locks every admin row (a PostgreSQL row lock / the SQLite write lock), so two admins
    disabling each other at once cannot leave no active admin: the second finds the first's change."""
    if disabled and user.is_admin:
        db.execute(update(User).where(User.role == "admin").values(disabled=User.disabled))
        others = db.scalar(select(func.count()).select_from(User).where(
            User.role == "admin", User.disabled.is_(False), User.id != user.id))
        if not others:
            db.commit()  # nothing changed: only the lock ends (a rollback would expire the caller's objects)
            raise RLHFError(f"{user.username} is the last active admin; enable or create another admin first")
    user.disabled = disabled
    db.commit()
    if disabled:
        end_user_sessions(db, user.id)


class Attempt:
    """One password check the limiter let through; it already counts as a failure until released."""

    def __init__(self, keys: list[tuple], at: float):
        self.keys, self.at = keys, at


class LoginRateLimiter:
    """Password checks are counted per (username, client IP), per client IP and per username (any
    IP). Before every check an attempt is reserved atomically: if any of its counts has reached
    its limit within the last `window` seconds the check is refused (429), even with the right
    password (otherwise guessing could go on until it succeeds); otherwise the attempt is counted
    at once, before the slow hash, so a concurrent burst gets no more checks through than the same
    requests one after another. A right password releases its attempt and clears its
    (username, IP) count; a wrong one leaves it counted.

    Usernames are keyed case-insensitively (as they log in); IPv6 clients by their /64 network,
    the block a single host is usually given. Each kind of key is kept in its own table, so no
    volume of one kind can push out another: per-user keys are never evicted, only expired (their
    number is bounded by the password checks the server can run in a window, and past
    `max_user_keys` new usernames are refused rather than old ones forgotten); per-IP and per-pair
    keys keep at most `max_keys` each, least recently used dropped first.

    Kept in memory: the app runs as one server process, and a restart forgetting recent failures
    costs an attacker nothing they could not get by waiting a minute."""

    KINDS = ("user_ip", "ip", "user")

    def __init__(self, per_user_ip: int = 5, per_ip: int = 20, per_user: int = 20, window: float = 60.0,
                 max_keys: int = 10_000, max_user_keys: int = 100_000):
        self.limits = {"user_ip": per_user_ip, "ip": per_ip, "user": per_user}
        self.caps = {"user_ip": max_keys, "ip": max_keys, "user": max_user_keys}
        self.window = window
        # one table per kind: key -> times of its counted attempts, least recently used first
        self._tables: dict[str, OrderedDict[tuple, deque[float]]] = {kind: OrderedDict() for kind in self.KINDS}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(username: str | None, ip: str) -> list[tuple]:
        ip = client_key(ip)
        if username is None:  # input refused unread (too long): counts against the IP only
            return [("ip", ip)]
        username = canonical_username(username[:MAX_USERNAME])
        return [("user_ip", username, ip), ("ip", ip), ("user", username)]

    def _live(self, key: tuple, now: float) -> deque[float] | None:
        """The key's attempts within the window (expired ones dropped, an empty key removed)."""
        table = self._tables[key[0]]
        times = table.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del table[key]
            return None
        return times

    def _expire(self, now: float) -> None:
        """Drop keys whose attempts are all older than the window. Each table is ordered by last
        use, so the expired keys are at its front."""
        for table in self._tables.values():
            while table:
                key, times = next(iter(table.items()))
                if times and times[-1] > now - self.window:
                    break
                table.popitem(last=False)

    def _make_room(self, kind: str) -> bool:
        """Room for one more key of `kind` (called after _expire, so every key left is live):
        the least recently used pair or IP key is dropped; a live per-user key never is."""
        table = self._tables[kind]
        while len(table) >= self.caps[kind]:
            if kind == "user":
                return False
            table.popitem(last=False)
        return True

    def reserve(self, username: str | None, ip: str) -> Attempt | None:
        """Count one password check now; None (refuse it, 429) if a limit is already reached."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            keys = self._keys(username, ip)
            for key in keys:
                times = self._live(key, now)
                if times is not None and len(times) >= self.limits[key[0]]:
                    return None
            for key in keys:
                if key not in self._tables[key[0]] and not self._make_room(key[0]):
                    return None
            for key in keys:
                table = self._tables[key[0]]
                table.setdefault(key, deque()).append(now)
                table.move_to_end(key)
            return Attempt(keys, now)

    def release(self, attempt: Attempt, succeeded: bool = True) -> None:
        """Un-count an attempt whose password was right (which also clears its (username, IP)
        count) or that never reached a password check (succeeded=False: e.g. no hashing slot)."""
        with self._lock:
            for key in attempt.keys:
                table = self._tables[key[0]]
                times = table.get(key)
                if times is not None and attempt.at in times:
                    times.remove(attempt.at)
                if times is not None and (not times or (succeeded and key[0] == "user_ip")):
                    del table[key]

    def key_count(self, kind: str | None = None) -> int:
        """Keys with failures inside the window (of one kind, or all)."""
        with self._lock:
            now = time.monotonic()
            kinds = self.KINDS if kind is None else (kind,)
            return sum(self._live(key, now) is not None for k in kinds for key in list(self._tables[k]))
