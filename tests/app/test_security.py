"""The hostile-user findings of issue 11, each through the real app (TestClient on a SQLite file):
the /media file-read hole, plain-text session tokens, unbounded hashing and limiter memory, integer
overflows, 500 pages without headers, export file names, import robustness, usernames with a
newline, string flags, and account management (password change, revocation, disabling)."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from alembic import command
from alembic.config import Config
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app_support import PASSWORD, answer, login, next_task, seed, write_jsonl
from rlhf.errors import RLHFError
from rlhf.feedback.app import accounts, create_app
from rlhf.feedback.app.accounts import LoginRateLimiter
from rlhf.feedback.app.db import MIGRATIONS, make_engine, open_database
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.label_cli import label_app
from rlhf.feedback.app.models import Assignment, Project, Task, User

HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy")
BIG = "9" * 20  # overflows a 64-bit integer


@pytest.fixture
def seeded(app, tmp_path):
    return seed(app.state.sessions, tmp_path)


def csrf_of(client) -> str:
    return client.get("/api/session").json()["csrf_token"]


def add_media_task(sessions, project: str, responses: list[str], external_id: str = "m1") -> int:
    """A media task written straight into the database, as an older version's import or a hand edit
    could have left it: serving must apply the media-root rule by itself."""
    with sessions() as db:
        project_id = db.scalar(select(Project.id).where(Project.name == project))
        task = Task(project_id=project_id, external_id=external_id, kind="image",
                    prompt=[{"role": "user", "content": "Which is better?"}], responses=responses, is_gold=False)
        db.add(task)
        db.commit()
        return task.id


# ---- 1 and 2: /media reads only files inside the project's media root -------------------------------


def test_media_outside_a_media_root_is_never_served(app, make_client, db_path, tmp_path):
    seed(app.state.sessions, tmp_path, tasks=[{"id": "t", "prompt": "p", "responses": ["a", "b"]}])
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    page = tmp_path / "evil.html"
    page.write_text("<script src='/media/1/1'></script>")
    task_id = add_media_task(app.state.sessions, "demo", [
        str(secret), os.path.relpath(db_path, Path.cwd()), db_path, db_path + "-wal", str(page), "/etc/passwd",
        "../" * 20 + "etc/passwd"])
    ann = make_client()
    csrf = login(ann, "ann1")
    next_task(ann, csrf)  # both tasks are now assigned to ann1
    served = {i: ann.get(f"/media/{task_id}/{i}") for i in range(7)}
    assert {i: r.status_code for i, r in served.items()} == {i: 404 for i in range(7)}
    assert not any(b"root:x" in r.content or b"SQLite format" in r.content for r in served.values())
    assert all(r.headers["cache-control"] == "no-store" for r in served.values())


def test_media_root_rule_at_serve_time(app, make_client, db_path, tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "clip.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (root / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    (root / "sub").mkdir()
    (root / "sub" / "voice.ogg").write_bytes(b"OggS")
    (tmp_path / "outside.png").write_bytes(b"\x89PNG outside")
    seed(app.state.sessions, tmp_path, media_root=root,
         tasks=[{"id": "m", "kind": "image", "prompt": "p", "responses": ["clip.png", "clip.mp4", "sub/voice.ogg"]}])
    # after the import the files change under the app: a symlink out, an SVG, a hard link to the database
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    (root / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    os.link(db_path, root / "db.png")
    task_id = add_media_task(app.state.sessions, "demo", [
        "../outside.png", "escape.png", "drawing.svg", "db.png", str(tmp_path / "outside.png"), "sub/../clip.png"],
        external_id="hostile")
    ann = make_client()
    login(ann, "ann1")
    next_task(ann, csrf_of(ann))
    with app.state.sessions() as db:
        good_id = db.scalar(select(Task.id).where(Task.external_id == "m"))
    for index, (ctype, name) in enumerate([("image/png", "clip.png"), ("video/mp4", "clip.mp4"),
                                           ("audio/ogg", "voice.ogg")]):
        response = ann.get(f"/media/{good_id}/{index}")
        assert response.status_code == 200 and response.headers["content-type"] == ctype
        assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"
    statuses = [ann.get(f"/media/{task_id}/{i}").status_code for i in range(6)]
    assert statuses == [404, 404, 404, 404, 404, 200]  # only the path that resolves inside the root


def test_import_refuses_media_outside_the_root_and_active_types(app, make_client, db_path, tmp_path):
    seed(app.state.sessions, tmp_path)
    admin = make_client()
    csrf = login(admin, "admin")
    rows = b"".join(json.dumps(row).encode() + b"\n" for row in [
        {"id": "abs", "kind": "image", "prompt": "p", "responses": ["/etc/passwd", "https://example.org/a.png"]},
        {"id": "db", "kind": "image", "prompt": "p", "responses": [db_path, "../labels.db"]},
    ])
    refused = admin.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files={"tasks": ("m.jsonl", rows)})
    assert refused.status_code == 400
    assert "m.jsonl:1: response 1: local media files need a media root" in refused.text
    with app.state.sessions() as db:
        assert db.scalar(select(Task).where(Task.external_id.in_(["abs", "db"]))) is None
    # with a media root (set by whoever runs the server), paths must stay inside it and be media
    root = tmp_path / "media"
    root.mkdir()
    for name in ("ok.gif", "page.html", "code.js", "pic.svg"):
        (root / name).write_bytes(b"GIF89a" if name.endswith("gif") else b"<script></script>")
    (tmp_path / "outside.gif").write_bytes(b"GIF89a")
    (root / "link.gif").symlink_to(tmp_path / "outside.gif")
    tasks = write_jsonl(tmp_path / "media.jsonl", [
        {"id": "a", "kind": "image", "prompt": "p", "responses": ["ok.gif", "../outside.gif"]},
        {"id": "b", "kind": "image", "prompt": "p", "responses": ["ok.gif", "link.gif"]},
        {"id": "c", "kind": "image", "prompt": "p", "responses": ["page.html", "code.js", "pic.svg"]},
        {"id": "d", "kind": "image", "prompt": "p", "responses": ["ok.gif", "missing.gif"]},
        {"id": "e", "kind": "video", "prompt": "p", "responses": ["ok.gif", "https://example.org/v.mp4"]},
    ])
    with app.state.sessions() as db, pytest.raises(RLHFError) as err:
        import_tasks(db, "demo", tasks, media_root=str(root), guard=app.state.database_files)
    report = str(err.value)
    assert report.startswith("nothing imported; 6 problem(s)")
    for where, problem in [(":1: response 2", "leads outside the media root"),
                           (":2: response 2", "leads outside the media root"),
                           (":3: response 1", "not an allowed type"), (":3: response 2", "not an allowed type"),
                           (":3: response 3", "not an allowed type"), (":4: response 2", "not found")]:
        assert f"{tasks}{where}: " in report and problem in report.split(f"{tasks}{where}: ")[1].split("\n")[0]
    with app.state.sessions() as db:
        assert db.scalar(select(Project.media_root)) is None  # a failed import sets nothing
        good = write_jsonl(tmp_path / "good.jsonl", [
            {"id": "e", "kind": "video", "prompt": "p", "responses": ["ok.gif", "https://example.org/v.mp4"]}])
        assert import_tasks(db, "demo", good, media_root=str(root)) == (1, 0)
        assert db.scalar(select(Project.media_root)) == str(root.resolve())
        with pytest.raises(RLHFError, match="already has the media root"):
            import_tasks(db, "demo", good, media_root=str(tmp_path))


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """`rlhf ARGS` through the real entry point (errors: one line, exit 2); (exit code, stderr)."""
    from rlhf import cli

    monkeypatch.setattr(sys, "argv", ["rlhf", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


def test_cli_import_never_opens_the_database_as_a_task_file(db_path, tmp_path, capsys, monkeypatch):
    seed(open_database(db_path), tmp_path)
    os.link(db_path, tmp_path / "tasks.jsonl")  # the database under another name
    for target in (db_path, str(tmp_path / "tasks.jsonl")):
        code, err = run_cli(["label", "import", target, "--project", "demo", "--db", db_path], capsys, monkeypatch)
        assert code == 2 and "labeling database itself" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 2


# ---- session tokens are stored hashed ---------------------------------------------------------------


def test_session_tokens_are_stored_only_as_hashes(client, make_client, seeded, db_path):
    login(client, "admin")
    token = client.cookies["rlhf_session"]
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT * FROM sessions").fetchall()
    stored = [str(value) for row in rows for value in row]
    assert rows and not any(token in value for value in stored)
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    thief = make_client()
    for value in stored:  # nothing copied out of the database logs anyone in
        thief.cookies.set("rlhf_session", value)
        assert thief.get("/api/session").status_code == 401


# ---- 3 and 4: bounded hashing, per-IP limits, eviction, username caps -------------------------------


class CountingHasher(PasswordHasher):
    """The tests' cheap argon2, counting how many verifications run at once."""

    def __init__(self):
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.lock, self.running, self.peak = threading.Lock(), 0, 0

    def verify(self, hash, password):  # noqa: A002 (argon2's name)
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.05)  # a production hash takes ~0.1 s: long enough for requests to overlap
            return super().verify(hash, password)
        finally:
            with self.lock:
                self.running -= 1


def test_concurrent_logins_hash_at_most_two_passwords_at_once(app, seeded, monkeypatch):
    hasher = CountingHasher()
    monkeypatch.setattr(accounts, "_hasher", hasher)
    clients = [TestClient(app) for _ in range(12)]

    def failed_login(i: int) -> int:
        c = clients[i]
        c.get("/login")
        return c.post("/login", data={"username": f"user{i}", "password": "wrong password",
                                      "csrf_token": c.cookies["rlhf_login_csrf"]}).status_code
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(failed_login, range(12)))
    for c in clients:
        c.close()
    assert set(codes) <= {401, 503} and codes.count(401) >= 2, codes  # 503: no slot within HASH_WAIT
    assert 1 <= hasher.peak <= 2 and accounts.HASH_SLOTS == 2, hasher.peak


def failed(client, username: str, password: str = "wrong password"):
    if "rlhf_login_csrf" not in client.cookies:
        client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": client.cookies["rlhf_login_csrf"]})


def test_failed_logins_are_limited_per_ip_and_per_username(app, seeded):
    a, b, c = (TestClient(app, client=(ip, 5000)) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    assert [failed(a, f"nobody{i}").status_code for i in range(20)] == [401] * 20
    assert failed(a, "someone-else").status_code == 429  # the IP has spent its 20 failures
    assert failed(a, "ann1", PASSWORD).status_code == 429
    assert failed(b, "ann1", PASSWORD).status_code == 200  # another IP is not affected
    # one username guessed from many IPs: at most 20 failures a minute in all
    guessers = [TestClient(app, client=(f"10.1.0.{i}", 5000)) for i in range(10)]
    assert [failed(g, "ann2").status_code for g in guessers for _ in range(2)] == [401] * 20
    assert failed(c, "ann2", PASSWORD).status_code == 429
    for client in (a, b, c, *guessers):
        client.close()


def test_limiter_evicts_old_keys_and_long_usernames_cost_nothing(app, seeded):
    limiter = app.state.login_limiter = LoginRateLimiter(window=6.0)
    client = TestClient(app)
    for name in ("ann1", "ann2", "admin"):  # real users: the tests' cheap hash keeps these fast
        assert failed(client, name).status_code == 401
    assert limiter.key_count() == 3 + 3 + 1  # a (user, ip) and a user key per name, one ip key
    time.sleep(6.1)
    assert failed(client, "ann1").status_code == 401
    assert limiter.key_count() == 3  # the keys of failures older than the window are gone
    long_name = failed(client, "x" * 10_000)
    assert long_name.status_code == 401 and limiter.key_count() == 3  # counted against the IP only
    huge = failed(client, "y" * 1_000_000)
    assert huge.status_code == 413 and "request too large" in huge.text
    assert failed(client, "x" * 101, PASSWORD).status_code == 401
    client.close()
    capped = app.state.login_limiter = LoginRateLimiter(max_keys=10)
    with TestClient(app) as client:
        for i in range(15):
            assert failed(client, f"made-up-{i}").status_code == 401
    # each kind is capped on its own: the newest 10 (user, IP) keys; per-user keys are never dropped
    assert (capped.key_count("user_ip"), capped.key_count("ip"), capped.key_count("user")) == (10, 1, 15)


# ---- 5: integer bounds and 500 pages ----------------------------------------------------------------


def test_out_of_range_integers_are_refused_with_headers(app, seeded):
    with TestClient(app, raise_server_exceptions=False) as c:
        csrf = login(c, "admin")
        for method, path in [("get", f"/assignments/{BIG}"), ("get", f"/media/{BIG}/0"), ("get", f"/media/1/{BIG}"),
                             ("post", f"/api/assignments/{BIG}/label"), ("post", f"/api/assignments/{BIG}/skip"),
                             ("post", f"/admin/users/{BIG}/disable")]:
            if method == "get":
                response = c.get(path)
            else:
                response = c.post(path, headers={"X-CSRF-Token": csrf}, json={"reason": "x"})
            assert response.status_code == 422, (path, response.status_code)
            assert all(h in response.headers for h in HEADERS)
        for field in ("overlap", "batch_size"):
            made = c.post("/admin/projects", data={"name": f"big-{field}", field: BIG, "csrf_token": csrf})
            assert made.status_code == 400 and field.replace("_", " ").split()[0] in made.text
        with app.state.sessions() as db:
            assert db.scalar(select(Project).where(Project.name.like("big-%"))) is None


def test_a_500_page_carries_the_security_headers(app, seeded, db_path):
    with TestClient(app, raise_server_exceptions=False) as c:
        login(c, "admin")
        with sqlite3.connect(db_path) as raw:  # a broken database: the dashboard's query fails
            raw.execute("DROP TABLE labels")
        response = c.get("/admin/projects/demo")
        assert response.status_code == 500
        assert all(h in response.headers for h in HEADERS) and response.headers["cache-control"] == "no-store"
        assert "Internal server error" in response.text and "Traceback" not in response.text


# ---- 6: project names and export file names ---------------------------------------------------------


def test_export_file_names_follow_rfc_6266_and_names_are_restricted(app, make_client, tmp_path):
    seed(app.state.sessions, tmp_path, annotators=["ann1"], tasks=[{"id": "t", "prompt": "p", "responses": ["a", "b"]}])
    admin = make_client()
    csrf = login(admin, "admin")
    for bad in ("a\r\nb", "x\ny", 'q"uote', "../up", "", "z" * 101):
        refused = admin.post("/admin/projects", data={"name": bad, "csrf_token": csrf})
        assert refused.status_code in (400, 422) and refused.status_code != 500, bad
    made = admin.post("/admin/projects", data={"name": "проект", "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303
    with app.state.sessions() as db:  # a name from before the rule, with a quote and a line break
        db.add(Project(name='old "one"\r\nx', overlap=1, gold_fraction=0.0, batch_size=10, allocations=0))
        db.commit()
    for name in ("проект", 'old "one"\r\nx'):
        admin.post(f"/admin/projects/{quote(name)}/import", data={"csrf_token": csrf},
                   files={"tasks": ("t.jsonl", b'{"id": "t", "prompt": "p", "responses": ["a", "b"]}\n')})
        ann = make_client()
        ann_csrf = login(ann, "ann1")
        task = ann.post(f"/api/projects/{quote(name)}/next", headers={"X-CSRF-Token": ann_csrf}).json()
        assert answer(ann, ann_csrf, task["assignment_id"], 2).json()["stored"] is True
        exported = admin.get(f"/admin/projects/{quote(name)}/export")
        assert exported.status_code == 200 and len(exported.text.splitlines()) == 1
        disposition = exported.headers["content-disposition"]
        assert "\r" not in disposition and "\n" not in disposition and disposition.isascii()
        assert unquote(disposition.split("filename*=UTF-8''")[1]) == f"{name}-rankings.jsonl"


# ---- 7: import robustness ---------------------------------------------------------------------------


def test_import_upload_bounds(client, seeded):
    csrf = login(client, "admin")

    def upload(name: str, body: bytes):
        return client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files={"tasks": (name, body)})
    latin1 = upload("latin.jsonl", '{"id": "é", "prompt": "café", "responses": ["a", "b"]}\n'.encode("latin-1"))
    assert latin1.status_code == 400 and "latin.jsonl:1: not UTF-8 text (byte 0xe9" in latin1.text
    long_name = "n" * 300 + ".jsonl"
    ok = upload(long_name, b'{"id": "long", "prompt": "p", "responses": ["a", "b"]}\n')
    assert ok.status_code == 200 and "Imported 1 tasks" in ok.text
    bad_lines = upload("junk.jsonl", b"not json\n" * 100_000)
    assert bad_lines.status_code == 400 and len(bad_lines.content) < 100_000
    assert "100000 problem(s), the first 50 shown" in bad_lines.text
    assert "junk.jsonl:50: malformed JSON" in bad_lines.text and "junk.jsonl:51:" not in bad_lines.text
    too_big = upload("big.jsonl", b"x" * (16 * 2**20 + 1))
    assert too_big.status_code == 413 and "larger than the upload limit of 16 MiB" in too_big.text


def test_cli_import_of_a_non_utf8_file_is_one_line(db_path, tmp_path, capsys, monkeypatch):
    seed(open_database(db_path), tmp_path)
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes('{"prompt": "café", "responses": ["a", "b"]}\n'.encode("latin-1"))
    code, err = run_cli(["label", "import", str(bad), "--project", "demo", "--db", db_path], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert f"{bad}:1: not UTF-8 text" in err


# ---- 8 and 9: usernames with a newline, string flags ------------------------------------------------


def test_usernames_must_match_whole(client, seeded):
    csrf = login(client, "admin")
    for name in ("alice\n", "alice\r\n", "bob\nadmin", "x" * 101):
        made = client.post("/admin/users", data={"username": name, "password": PASSWORD, "csrf_token": csrf})
        assert made.status_code == 400 and "bad username" in made.text, repr(name)
    with client.app.state.sessions() as db:
        assert sorted(db.scalars(select(User.username))) == ["admin", "ann1", "ann2"]


def test_flags_accept_only_json_booleans(client, seeded):
    csrf = login(client, "ann1")
    task = next_task(client, csrf)
    with client.app.state.sessions() as db:
        k = len(db.get(Assignment, task["assignment_id"]).task.responses)
    for value in ("false", "true", 0, 1, None, [], {}):
        refused = answer(client, csrf, task["assignment_id"], k, flags=[{"harmful": value}] + [{}] * (k - 1))
        assert refused.status_code == 422 and "JSON boolean" in refused.text, value
    stored = answer(client, csrf, task["assignment_id"], k, flags=[{"harmful": False, "made_up_facts": True}] +
                    [{}] * (k - 1))
    assert stored.json()["stored"] is True
    with client.app.state.sessions() as db:
        assignment = db.get(Assignment, task["assignment_id"])
        assert assignment.label.flags[0]["harmful"] is False and assignment.label.flags[0]["made_up_facts"] is True


# ---- 10: password change, session revocation, disabling, no-store -----------------------------------


def test_password_change_ends_the_other_sessions(app, make_client, seeded):
    here, elsewhere = make_client(), make_client()
    csrf = login(here, "ann1")
    login(elsewhere, "ann1")
    form = {"current": "wrong password", "new": "a new passphrase", "confirm": "a new passphrase", "csrf_token": csrf}
    assert here.post("/account/password", data=form).status_code == 400
    assert here.post("/account/password", data={**form, "current": PASSWORD, "confirm": "typo"}).status_code == 400
    assert here.post("/account/password", data={**form, "current": PASSWORD, "csrf_token": "forged"}).status_code == 403
    assert elsewhere.get("/api/session").status_code == 200
    changed = here.post("/account/password", data={**form, "current": PASSWORD})
    assert changed.status_code == 200 and "1 other session(s) logged out" in changed.text
    assert elsewhere.get("/api/session").status_code == 401
    assert here.get("/api/session").status_code == 200
    fresh = make_client()
    fresh.get("/login")
    assert failed(fresh, "ann1", PASSWORD).status_code == 401
    login(fresh, "ann1", "a new passphrase")
    ended = here.post("/account/sessions/end-others", data={"csrf_token": csrf})
    assert ended.status_code == 200 and fresh.get("/api/session").status_code == 401


def test_logging_in_again_replaces_the_old_session(app, make_client, seeded):
    client = make_client()
    login(client, "ann1")
    old = client.cookies["rlhf_session"]
    login(client, "ann1")
    assert client.cookies["rlhf_session"] != old
    stale = make_client()
    stale.cookies.set("rlhf_session", old)
    assert stale.get("/api/session").status_code == 401


def test_admin_disables_users_and_ends_their_sessions(app, make_client, seeded):
    admin, ann, ann1 = make_client(), make_client(), make_client()
    csrf = login(admin, "admin")
    login(ann, "ann2")
    ann1_csrf = login(ann1, "ann1")
    with app.state.sessions() as db:
        ids = {u.username: u.id for u in db.scalars(select(User))}
    assert ann1.post(f"/admin/users/{ids['ann2']}/disable", data={"csrf_token": ann1_csrf}).status_code == 403
    assert admin.post(f"/admin/users/{ids['ann2']}/disable", data={}).status_code == 403  # no CSRF token
    disabled = admin.post(f"/admin/users/{ids['ann2']}/disable", data={"csrf_token": csrf})
    assert disabled.status_code == 200 and "disabled" in disabled.text
    assert ann.get("/api/session").status_code == 401
    relogin = failed(make_client(), "ann2", PASSWORD)
    assert relogin.status_code == 401 and "Wrong username or password" in relogin.text  # as a wrong password
    assert admin.post(f"/admin/users/{ids['admin']}/disable", data={"csrf_token": csrf}).status_code == 400
    assert admin.post(f"/admin/users/{ids['ann2']}/enable", data={"csrf_token": csrf}).status_code == 200
    login(make_client(), "ann2")
    assert admin.post(f"/admin/users/{ids['ann1']}/end-sessions", data={"csrf_token": csrf}).status_code == 200
    assert ann1.get("/api/session").status_code == 401
    assert admin.get("/api/session").status_code == 200


def test_authenticated_responses_are_not_cached(client, seeded):
    csrf = login(client, "admin")
    task = next_task(client, csrf)
    for path in ("/admin", "/projects", "/account", "/api/session", "/admin/projects/demo", task["url"],
                 "/admin/projects/demo/export"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers.get("cache-control") == "no-store", path


def test_migration_hashes_existing_session_tokens(db_path):
    """A database from before this change (revision 0001) keeps its users logged in, by hash."""
    engine = make_engine(db_path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    token = "an-old-plain-token"
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO users (id, username, password_hash, role, created_at) "
                    "VALUES (1, 'old', 'x', 'annotator', '2026-01-01 00:00:00')")
        raw.execute("INSERT INTO sessions (token, user_id, csrf_token, expires_at) "
                    "VALUES (?, 1, 'csrf', '2999-01-01 00:00:00')", (token,))
        raw.execute("INSERT INTO projects VALUES (1, 'p', 1, 0.0, 10, 0, '2026-01-01 00:00:00')")
        raw.execute("INSERT INTO tasks VALUES (1, 1, 't', 'text', '[]', '[\"a\", \"b\"]', 0, NULL)")
        raw.execute("INSERT INTO assignments VALUES (1, 1, 1, '[0, 1]', 'done', '2026-01-01 00:00:00')")
        raw.execute("INSERT INTO labels VALUES (1, 1, 0, NULL, '[1, 2]', '[4, 4]', NULL, '2026-01-01 00:00:00')")
    app = create_app(db_path)  # migrates to the newest revision
    with TestClient(app, cookies={"rlhf_session": token}) as client:
        assert client.get("/api/session").json()["username"] == "old"
    with sqlite3.connect(db_path) as raw:
        hashed = hashlib.sha256(token.encode()).hexdigest()
        assert raw.execute("SELECT token_hash FROM sessions").fetchall() == [(hashed,)]
        assert raw.execute("SELECT disabled FROM users").fetchall() == [(0,)]
        assert raw.execute("SELECT count(*) FROM labels").fetchone() == (1,)  # nothing cascaded away


def test_cli_sets_media_roots_and_bounds_project_numbers(db_path, tmp_path):
    def cli(*args):
        return CliRunner().invoke(label_app, [str(a) for a in args] + ["--db", db_path])
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    made = cli("create-project", "clips", "--media-root", tmp_path / "clips")
    assert made.exit_code == 0 and f"media root {(tmp_path / 'clips').resolve()}" in made.output
    missing = cli("create-project", "other", "--media-root", tmp_path / "nope")
    assert isinstance(missing.exception, RLHFError) and "does not exist" in str(missing.exception)
    huge = cli("create-project", "big", "--overlap", BIG)
    assert isinstance(huge.exception, RLHFError) and "--overlap must be in 1..100" in str(huge.exception)
    tasks = write_jsonl(tmp_path / "t.jsonl", [{"id": "v", "kind": "video", "prompt": "p",
                                                "responses": ["a.mp4", "https://example.org/b.mp4"]}])
    assert "imported 1 tasks" in cli("import", tasks, "--project", "clips").output
