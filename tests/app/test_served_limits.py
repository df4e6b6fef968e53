"""Issue 26, through a real `rlhf label serve` subprocess on loopback: the login limiter under
concurrent bursts (login and password change), forwarding headers only from a named proxy, the
Secure cookie flag, and anonymous uploads refused before their body is read.

The server hashes with argon2's production cost (its DUMMY_HASH for unknown users) and the users
below are created with it too, so a password check takes as long as in a real deployment: the
window in which a check-then-count limiter let a burst through. A login that waits more than
HASH_WAIT (10 s) for one of the 2 hashing slots is answered 503 and not counted (no password was
checked); on a loaded machine a burst can see some, so the bursts below check the invariant, at
most `limit` password checks (401s), rather than exact counts."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest
from argon2 import PasswordHasher

from rlhf.feedback.app import accounts
from rlhf.feedback.app.accounts import create_user
from rlhf.feedback.app.db import open_database

PASSWORD = "correct horse battery"
WRONG = "wrong password"


@pytest.fixture
def real_cost_db(db_path, monkeypatch):
    """admin and ann1, hashed with argon2's production parameters."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher())
    with open_database(db_path)() as db:
        create_user(db, "admin", PASSWORD, "admin")
        create_user(db, "ann1", PASSWORD)
    return db_path


def login_client(url: str) -> httpx.Client:
    """A client holding the login page's CSRF cookie."""
    client = httpx.Client(base_url=url, timeout=60)
    assert client.get("/login").status_code == 200
    return client


def post_login(client: httpx.Client, username: str, password: str, headers: dict | None = None) -> httpx.Response:
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": client.cookies["rlhf_login_csrf"]}, headers=headers or {})


def burst(requests: list) -> list[int]:
    """Run the callables at the same moment (one thread each, released together); their status codes."""
    gate = threading.Barrier(len(requests))
    codes: list[int | None] = [None] * len(requests)

    def run(i: int) -> None:
        gate.wait()
        codes[i] = requests[i]().status_code
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return codes


def check_burst(codes: list[int], limit: int) -> None:
    """No more password checks (401/400) than the limit, every other request refused (429) or, having
    waited too long for a hashing slot, turned away uncounted (503)."""
    checked = codes.count(401) + codes.count(400)
    busy = codes.count(503)
    assert checked + codes.count(429) + busy == len(codes), codes
    assert checked <= limit and checked + busy >= limit, codes


def until_refused(send) -> None:
    """send(i) for i = 0, 1, ... until the limiter refuses (tops up what 503s left uncounted)."""
    for i in range(25):
        if send(i).status_code == 429:
            return
    raise AssertionError("never refused")


def test_a_concurrent_burst_gets_no_more_guesses_than_the_limits(real_cost_db, start_server):
    server = start_server(real_cost_db)
    clients = [login_client(server.url) for _ in range(50)]
    # 30 guesses for one user from one address at once: the (user, IP) limit is 5
    codes = burst([lambda c=c: post_login(c, "ann1", WRONG) for c in clients[:30]])
    check_burst(codes, 5)
    until_refused(lambda i: post_login(clients[0], "ann1", WRONG))
    assert post_login(clients[0], "ann1", PASSWORD).status_code == 429  # locked, right password or not
    # 50 different usernames from the same address at once: the IP has 15 of its 20 failures left
    codes = burst([lambda c=c, i=i: post_login(c, f"user{i}", WRONG) for i, c in enumerate(clients)])
    check_burst(codes, 15)
    until_refused(lambda i: post_login(clients[1], f"someone{i}", WRONG))
    assert post_login(clients[1], "admin", PASSWORD).status_code == 429  # the address is locked
    for client in clients:
        client.close()


def test_a_burst_of_wrong_current_passwords_is_limited(real_cost_db, start_server):
    server = start_server(real_cost_db)
    first = login_client(server.url)
    assert post_login(first, "ann1", PASSWORD).status_code == 303
    csrf = first.get("/api/session").json()["csrf_token"]
    cookies = {"rlhf_session": first.cookies["rlhf_session"]}
    clients = [httpx.Client(base_url=server.url, cookies=cookies, timeout=60) for _ in range(12)]
    form = {"current": WRONG, "new": "a new passphrase", "confirm": "a new passphrase", "csrf_token": csrf}
    codes = burst([lambda c=c: c.post("/account/password", data=form) for c in clients])
    check_burst(codes, 5)
    until_refused(lambda i: first.post("/account/password", data=form))
    assert first.post("/account/password", data={**form, "current": PASSWORD}).status_code == 429
    for client in (first, *clients):
        client.close()


def test_forwarding_headers_are_ignored_unless_the_proxy_is_named(real_cost_db, start_server):
    server = start_server(real_cost_db)
    client = login_client(server.url)
    forged = [{"X-Forwarded-For": f"198.51.100.{i}"} for i in range(40)]
    # a fresh forged address per guess changes nothing: all count against the real peer
    assert [post_login(client, "ann1", WRONG, forged[i]).status_code for i in range(6)] == [401] * 5 + [429]
    assert post_login(client, "ann1", PASSWORD, forged[6]).status_code == 429
    # a password spray: the address has 15 failures left, whatever it claims to be
    spray = [post_login(client, f"user{i}", WRONG, forged[10 + i]).status_code for i in range(17)]
    assert spray == [401] * 15 + [429] * 2
    # nor does a forged X-Forwarded-Proto make the cookie Secure (or a forged address get logged in)
    fresh = httpx.Client(base_url=server.url, timeout=60)
    page = fresh.get("/login", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert page.status_code == 200 and "secure" not in page.headers["set-cookie"].lower()
    for c in (client, fresh):
        c.close()


def test_a_named_proxy_is_trusted_and_cannot_be_spoofed_through(real_cost_db, start_server):
    """The test plays the proxy on 127.0.0.1: it appends the peer address it saw, as nginx's
    $proxy_add_x_forwarded_for does, and the app counts that address, not one the client wrote."""
    server = start_server(real_cost_db, "--forwarded-allow-ips", "127.0.0.1")
    client = login_client(server.url)
    seen_by_proxy = "203.0.113.7"
    spoofed = [{"X-Forwarded-For": f"198.51.100.{i}, {seen_by_proxy}"} for i in range(6)]
    assert [post_login(client, "ann1", WRONG, h).status_code for h in spoofed] == [401] * 5 + [429]
    other = {"X-Forwarded-For": "203.0.113.8"}  # another real client is not affected by that pair
    assert post_login(client, "ann1", PASSWORD, other).status_code == 303
    # one user guessed from 40 addresses at once: at most 20 failures in all (the per-user limit)
    clients = [login_client(server.url) for _ in range(40)]
    codes = burst([lambda c=c, i=i: post_login(c, "admin", WRONG, {"X-Forwarded-For": f"192.0.2.{i}"})
                   for i, c in enumerate(clients)])
    check_burst(codes, 20)
    until_refused(lambda i: post_login(client, "admin", WRONG, {"X-Forwarded-For": f"192.0.2.{100 + i}"}))
    assert post_login(client, "admin", PASSWORD, {"X-Forwarded-For": "192.0.2.201"}).status_code == 429
    # behind a TLS proxy (X-Forwarded-Proto: https from it) the cookies are Secure
    page = client.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in page.headers["set-cookie"].lower()
    for c in (client, *clients):
        c.close()


def raw_post(port: int, head: str, first_bytes: bytes) -> bytes:
    """Send a request's headers and the first bytes of its body, then read what comes back (the
    rest of the body is never sent: only a server answering before reading it can reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode() + first_bytes)
        try:
            return sock.recv(4096)
        except socket.timeout:
            return b""


def test_uploads_are_refused_before_their_body_is_read(real_cost_db, start_server):
    server = start_server(real_cost_db)
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"tasks\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * 65536

    def head(cookie: str = "") -> str:
        return (f"POST /admin/projects/demo/import HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {30 * 2**20}\r\n"
                f"{cookie}\r\n")
    anonymous = raw_post(server.port, head(), part)
    assert anonymous.startswith(b"HTTP/1.1 401"), anonymous[:200]
    annotator = login_client(server.url)
    assert post_login(annotator, "ann1", PASSWORD).status_code == 303
    cookie = f"Cookie: rlhf_session={annotator.cookies['rlhf_session']}\r\n"
    assert raw_post(server.port, head(cookie), part).startswith(b"HTTP/1.1 403")  # not an admin
    annotator.close()
