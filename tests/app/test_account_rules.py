"""Issue 26, the smaller leaks, through the app (TestClient on a SQLite file, PostgreSQL where the
database decides): limiter keys that other keys cannot push out, disabled accounts answering like
a wrong password, import errors that do not tell which server paths exist, case-insensitive
usernames, the active-admin rule, HTML 404 pages, and task-id lengths."""
from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app_support import PASSWORD, login, seed, write_jsonl
from rlhf.errors import RLHFError
from rlhf.feedback.app import create_app
from rlhf.feedback.app.accounts import LoginRateLimiter, create_user, set_disabled
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.app.models import Task, User
from rlhf.feedback.app.projects import create_project
from rlhf.feedback.label_cli import label_app

HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy")


@pytest.fixture
def seeded(app, tmp_path):
    return seed(app.state.sessions, tmp_path)


def attempt(app, ip: str, username: str, password: str = "wrong password"):
    client = TestClient(app, client=(ip, 5000))
    client.get("/login")
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": client.cookies["rlhf_login_csrf"]}, follow_redirects=False)
    client.close()
    return response


def test_a_flood_of_other_keys_never_unlocks_a_user(app, seeded):
    # a small table, so a small flood fills it; a long window, so a slow machine cannot let it expire
    app.state.login_limiter = LoginRateLimiter(max_keys=50, window=3600)
    for i in range(20):  # ann1 guessed from 4 addresses: the per-user limit (20) is reached
        assert attempt(app, f"10.0.0.{i // 5}", "ann1").status_code == 401
    assert attempt(app, "10.0.1.1", "ann1", PASSWORD).status_code == 429
    # 80 addresses each send an over-long username (no hash, one IP key each) and 20 made-up names
    for i in range(80):
        assert attempt(app, f"10.3.0.{i}", "x" * 101).status_code == 401
    for i in range(20):
        assert attempt(app, f"10.4.0.{i}", f"made-up-{i}").status_code == 401
    assert attempt(app, "10.0.1.2", "ann1", PASSWORD).status_code == 429  # still locked


def test_limiter_counts_ipv6_clients_by_their_64_network():
    limiter = LoginRateLimiter()
    for i in range(5):
        assert limiter.reserve("ann1", f"2001:db8:1:2::{i + 1:x}") is not None
    assert limiter.reserve("ann1", "2001:db8:1:2:ffff::9") is None  # same /64, another address
    assert limiter.reserve("ann1", "2001:db8:1:3::1") is not None  # another /64
    for i in range(5):
        assert limiter.reserve("ann2", "::ffff:192.0.2.1") is not None
    assert limiter.reserve("ann2", "192.0.2.1") is None  # an IPv4-mapped address is that IPv4 address


def test_a_disabled_account_answers_like_a_wrong_password(app, make_client, seeded):
    admin = make_client()
    csrf = login(admin, "admin")
    with app.state.sessions() as db:
        ann2 = db.scalar(select(User).where(User.username == "ann2"))
    assert admin.post(f"/admin/users/{ann2.id}/disable", data={"csrf_token": csrf}).status_code == 200
    probe = make_client()
    probe.get("/login")
    form = {"username": "ann2", "csrf_token": probe.cookies["rlhf_login_csrf"]}
    right = probe.post("/login", data={**form, "password": PASSWORD})
    wrong = probe.post("/login", data={**form, "password": "wrong password"})
    assert (right.status_code, wrong.status_code) == (401, 401) and right.text == wrong.text
    # and the right password is counted like a wrong one: the limiter tells nothing either
    codes = [probe.post("/login", data={**form, "password": PASSWORD}).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_import_errors_do_not_tell_which_server_paths_exist(app, make_client, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(b"\x89PNG")
    (media / "b.png").write_bytes(b"\x89PNG")
    (media / "link.png").symlink_to("/etc/passwd")
    (media / "dangling.png").symlink_to("/no/such/file.png")
    seed(app.state.sessions, tmp_path, media_root=media)
    client = make_client()
    csrf = login(client, "admin")
    refs = ["/etc/passwd", "/etc/no-such-file.png", "../../etc/hostname", "../no-such-dir/x.png",
            "link.png", "dangling.png", "missing/../../../etc/passwd"]
    rows = [{"id": f"m{i}", "kind": "image", "prompt": "p", "responses": ["a.png", ref]} for i, ref in enumerate(refs)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    refused = client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files={"tasks": ("t.jsonl", body)})
    assert refused.status_code == 400
    for i, ref in enumerate(refs, 1):
        assert f"t.jsonl:{i}: response 2: media path {json.dumps(ref)[1:-1]!r} leads outside the media root" \
            in refused.text.replace("&#39;", "'"), ref
    inside = client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files={"tasks": (
        "u.jsonl", json.dumps({"id": "n", "kind": "image", "prompt": "p", "responses": ["a.png", "c.png"]}))})
    assert inside.status_code == 400 and "media file 'c.png' not found under the media root" in \
        inside.text.replace("&#39;", "'")


def test_usernames_are_unique_and_log_in_ignoring_case(client, seeded):
    csrf = login(client, "admin")
    made = client.post("/admin/users", data={"username": "Alice", "password": PASSWORD, "csrf_token": csrf},
                       follow_redirects=False)
    assert made.status_code == 303
    for name in ("alice", "ALICE", "aLiCe"):
        again = client.post("/admin/users", data={"username": name, "password": PASSWORD, "csrf_token": csrf})
        assert again.status_code == 400 and "already exists as &#39;Alice&#39; (usernames ignore case)" in again.text
    with client.app.state.sessions() as db:
        assert sorted(db.scalars(select(User.username))) == ["Alice", "admin", "ann1", "ann2"]
    with TestClient(client.app) as other:
        login(other, "ALICE")
        assert other.get("/api/session").json()["username"] == "Alice"
    # the limiter counts the user, not the spelling; and no non-ASCII letter is an alias (the Kelvin sign)
    for name in ("ANN1", "Ann1", "ann1", "aNN1", "ANN1"):
        assert attempt(client.app, "10.7.0.1", name).status_code == 401
    assert attempt(client.app, "10.7.0.1", "ann1", PASSWORD).status_code == 429
    with TestClient(client.app) as other:
        other.get("/login")
        kelvin = other.post("/login", data={"username": "\u212aim", "password": PASSWORD,
                                            "csrf_token": other.cookies["rlhf_login_csrf"]})
        assert kelvin.status_code == 401


def test_the_database_refuses_usernames_differing_in_case(db_path):
    sessions = open_database(db_path)
    with sessions() as db:
        create_user(db, "bob", PASSWORD)
        db.add(User(username="BOB", password_hash="x", role="annotator", disabled=False))  # around the check
        with pytest.raises(Exception, match="(?i)unique"):
            db.commit()


def test_there_is_always_an_active_admin(app, make_client, seeded):
    with app.state.sessions() as db:
        create_user(db, "admin2", PASSWORD, "admin")
        ids = {u.username: u.id for u in db.scalars(select(User))}
    first, second = make_client(), make_client()
    csrf1, csrf2 = login(first, "admin"), login(second, "admin2")
    # both admins disable each other at the same moment: one wins, the other finds no admin left
    gate = threading.Barrier(2)
    codes = {}

    def disable(client, csrf, target):
        gate.wait()
        codes[target] = client.post(f"/admin/users/{ids[target]}/disable", data={"csrf_token": csrf}).status_code
    threads = [threading.Thread(target=disable, args=(first, csrf1, "admin2")),
               threading.Thread(target=disable, args=(second, csrf2, "admin"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes.values()) in ([200, 400], [200, 401]), codes
    with app.state.sessions() as db:
        active = db.scalars(select(User.username).where(User.role == "admin", User.disabled.is_(False))).all()
        assert len(active) == 1
        last = db.scalar(select(User).where(User.username == active[0]))
        with pytest.raises(RLHFError, match="last active admin"):
            set_disabled(db, last, True)
        assert db.get(User, last.id).disabled is False


def test_unknown_routes_get_the_html_error_page(client, seeded):
    for path in ("/no-such-page", "/admin/nothing/here", "/static/missing.css"):
        page = client.get(path)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), path
        assert "Error 404" in page.text and all(h in page.headers for h in HEADERS)
    wrong_method = client.get("/logout")
    assert wrong_method.status_code == 405 and "Error 405" in wrong_method.text
    api = client.get("/api/no-such-thing")
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}


def long_id_rows(n: int) -> list[dict]:
    return [{"id": "i" * n, "prompt": "p", "responses": ["a", "b"]}]


def check_task_id_lengths(sessions, tmp_path) -> None:
    with sessions() as db:
        create_project(db, "ids", 1, 0.0, 10)
        with pytest.raises(RLHFError) as refused:
            import_tasks(db, "ids", write_jsonl(tmp_path / "long.jsonl", long_id_rows(201)))
        where = f"{tmp_path / 'long.jsonl'}:1"
        assert f"{where}: 'id' is 201 characters long; at most 200 are allowed" in str(refused.value)
        nul = write_jsonl(tmp_path / "nul.jsonl", [{"id": "a\u0000b", "prompt": "p", "responses": ["a", "b"]}])
        with pytest.raises(RLHFError, match="'id' contains a NUL character"):
            import_tasks(db, "ids", nul)
        rows = long_id_rows(200) + [{"id": "plain", "prompt": "p\u0000", "responses": ["a\u0000", "b"]}]
        assert import_tasks(db, "ids", write_jsonl(tmp_path / "ok.jsonl", rows)) == (2, 0)
        assert sorted(len(i) for i in db.scalars(select(Task.external_id))) == [5, 200]


def test_task_id_length_is_checked_at_import_on_postgresql(postgres_url, tmp_path):
    check_task_id_lengths(open_database(postgres_url), tmp_path)


def test_task_id_length_is_checked_at_import_on_sqlite(db_path, tmp_path):
    check_task_id_lengths(open_database(db_path), tmp_path)


def test_usernames_ignore_case_on_postgresql(postgres_url):
    sessions = open_database(postgres_url)
    with sessions() as db:
        create_user(db, "Carol", PASSWORD)
        with pytest.raises(RLHFError, match="already exists as 'Carol'"):
            create_user(db, "CAROL", PASSWORD)
        db.add(User(username="carol", password_hash="x", role="annotator", disabled=False))
        with pytest.raises(Exception, match="(?i)unique"):
            db.commit()


def test_serve_refuses_a_malformed_proxy_list(db_path):
    result = CliRunner().invoke(label_app, ["serve", "--db", db_path, "--forwarded-allow-ips", "127.0.0.1,nginx"])
    text = " ".join(result.output.replace("│", " ").split())  # the message as typer's box wraps it
    assert result.exit_code == 2 and "'nginx' is not an IP address or network" in text


def test_secure_cookies_flag_marks_every_cookie(db_path):
    with TestClient(create_app(db_path, secure_cookies=True)) as client:
        assert "secure" in client.get("/login").headers["set-cookie"].lower()
    with TestClient(create_app(db_path)) as client:
        assert "secure" not in client.get("/login").headers["set-cookie"].lower()
