"""Many annotators at once against a real uvicorn server on loopback, and a crash in the middle;
and the label count a separate SQLite connection sees after any sequence of requests."""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from app_support import count_labels, seed
from rlhf.feedback.app.accounts import start_session
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.models import Assignment, Label, Project, Task, User

N_ANNOTATORS = 50
TASKS = [{"id": f"q{i}", "prompt": f"Question {i}?", "responses": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(100)]
MAX_STEPS = 100  # per annotator: bounds the loop even if the server misbehaves


def logged_in_clients(sessions, base_url: str) -> list[tuple[httpx.Client, str]]:
    """Sessions are made directly in the database: this test is about submitting, not argon2."""
    clients = []
    with sessions() as db:
        for user in db.scalars(select(User).where(User.role == "annotator").order_by(User.id)):
            session = start_session(db, user)
            client = httpx.Client(base_url=base_url, cookies={"rlhf_session": session.token}, timeout=30)
            clients.append((client, session.csrf_token))
    return clients


def annotate(client: httpx.Client, csrf: str, acked: list, stop: threading.Event) -> None:
    """Answer tasks until none are left; every third one is submitted twice (a double click)."""
    headers = {"X-CSRF-Token": csrf}
    try:
        for step in range(MAX_STEPS):
            if stop.is_set():
                return
            task = client.post("/api/projects/demo/next", headers=headers).json()
            if task["assignment_id"] is None:
                return
            body = {"ranks": [1, 2, 2], "ratings": [6, 3, 3], "flags": [{}, {}, {"other": "dup?"}]}
            for _ in range(2 if step % 3 == 0 else 1):
                response = client.post(f"/api/assignments/{task['assignment_id']}/label", json=body, headers=headers)
                if response.status_code == 200:
                    acked.append(task["assignment_id"])
    except httpx.TransportError:
        return  # the server was killed
    finally:
        client.close()


def seed_load(db_path: str, tmp_path):
    sessions = open_database(db_path)
    seed(sessions, tmp_path, annotators=[f"ann{i:02d}" for i in range(N_ANNOTATORS)], overlap=2, tasks=TASKS,
         batch_size=2)
    return sessions


def test_fifty_concurrent_annotators_lose_and_duplicate_nothing(db_path, tmp_path, start_server):
    sessions = seed_load(db_path, tmp_path)
    server = start_server(db_path)
    acked: list[int] = []
    stop = threading.Event()
    with ThreadPoolExecutor(N_ANNOTATORS) as pool:
        for client, csrf in logged_in_clients(sessions, server.url):
            pool.submit(annotate, client, csrf, acked, stop)
    with sessions() as db:
        labels = db.scalars(select(Label.assignment_id)).all()
        answered = db.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "done"))
        per_task = db.execute(select(Assignment.task_id, func.count()).group_by(Assignment.task_id)).all()
    assert len(labels) == len(set(labels)) == len(set(acked)) == answered
    assert set(labels) == set(acked)
    assert len(acked) > len(set(acked))  # double submits happened and were absorbed
    assert max(n for _, n in per_task) <= 2  # overlap never exceeded under contention
    assert len(labels) == 2 * len(TASKS)  # every task answered by its two annotators


def add_database_media_task(sessions, db_path: str) -> int:
    """A media task naming the database's own files (written straight into the database, as an
    older version's import accepted it): what an attacker would like /media to serve."""
    with sessions() as db:
        task = Task(project_id=db.scalar(select(Project.id)), external_id="db-files", kind="image",
                    prompt=[{"role": "user", "content": "p"}], is_gold=False,
                    responses=[db_path, db_path + "-wal", db_path + "-shm", os.path.relpath(db_path)])
        db.add(task)
        db.commit()
        return task.id


def admin_client(sessions, base_url: str) -> httpx.Client:
    with sessions() as db:
        session = start_session(db, db.scalar(select(User).where(User.role == "admin")))
    return httpx.Client(base_url=base_url, cookies={"rlhf_session": session.token}, timeout=30)


def test_labels_acknowledged_before_a_kill_9_survive(db_path, tmp_path, start_server):
    sessions = seed_load(db_path, tmp_path)
    media_id = add_database_media_task(sessions, db_path)
    server = start_server(db_path)
    admin = admin_client(sessions, server.url)
    acked: list[int] = []
    stop = threading.Event()

    def media_and_external_reads() -> None:
        """Meanwhile: /media requests for the database files, and separate connections opened and closed."""
        try:
            while not stop.is_set():
                for index in range(4):
                    admin.get(f"/media/{media_id}/{index}")
                external_count(db_path)
        except httpx.TransportError:
            return  # the server was killed
    with ThreadPoolExecutor(N_ANNOTATORS + 1) as pool:
        clients = logged_in_clients(sessions, server.url)
        sessions.kw["bind"].dispose()  # this process keeps no connection open: only the server's remain
        pool.submit(media_and_external_reads)
        for client, csrf in clients:
            pool.submit(annotate, client, csrf, acked, stop)
        deadline = time.monotonic() + 60
        while len(set(acked)) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # mid-load: requests are in flight
        stop.set()
    admin.close()
    stored = external_count(db_path)
    restarted = start_server(db_path)
    assert httpx.get(f"{restarted.url}/login").status_code == 200
    restarted.stop()
    stored_ids = set(open_database(db_path)().scalars(select(Label.assignment_id)).all())
    assert set(acked) <= stored_ids and len(stored_ids) == stored
    assert 60 <= stored < 2 * len(TASKS) and count_labels(open_database(db_path)) == stored


def external_count(db_path: str) -> int:
    """The label count through an ordinary SQLite connection of another process, closed at once
    (closing is what deleted the live WAL when the server had dropped its locks)."""
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        return connection.execute("SELECT count(*) FROM labels").fetchone()[0]
    finally:
        connection.close()


@pytest.mark.parametrize("seed_", [0, 1, 2])
def test_external_label_count_equals_acknowledged_after_any_requests_and_kill_9(db_path, tmp_path, start_server,
                                                                               seed_):
    """A random sequence of labels, double submits, skips, page views and /media requests naming the
    database's own files; a separate connection counts the labels along the way; then kill -9."""
    sessions = open_database(db_path)
    seed(sessions, tmp_path, annotators=[f"ann{i}" for i in range(4)], overlap=2, tasks=TASKS[:24], batch_size=3)
    media_id = add_database_media_task(sessions, db_path)
    server = start_server(db_path)
    clients = logged_in_clients(sessions, server.url)
    admin = admin_client(sessions, server.url)
    sessions.kw["bind"].dispose()  # this process keeps no connection open: only the server's remain
    rng = random.Random(seed_)
    acked: set[int] = set()
    for step in range(150):
        action = rng.choices(["label", "skip", "page", "media", "count"], weights=[5, 1, 1, 3, 2])[0]
        client, csrf = rng.choice(clients)
        headers = {"X-CSRF-Token": csrf}
        if action == "media":
            admin.get(f"/media/{media_id}/{rng.randrange(4)}")
            continue
        if action == "count":
            assert external_count(db_path) == len(acked), f"step {step}"
            continue
        task = client.post("/api/projects/demo/next", headers=headers).json()
        if task["assignment_id"] is None:
            continue
        if action == "page":
            assert client.get(task["url"]).status_code == 200
            continue
        url = f"/api/assignments/{task['assignment_id']}/" + ("skip" if action == "skip" else "label")
        body = {"reason": "unsure"} if action == "skip" else {"ranks": [1, 2, 3], "ratings": [5, 4, 3]}
        for _ in range(rng.choice([1, 1, 2])):
            response = client.post(url, json=body, headers=headers)
            if response.status_code == 200 and response.json()["stored"]:
                acked.add(task["assignment_id"])
    for client, _ in clients:
        client.close()
    admin.close()
    assert len(acked) >= 20
    server.kill()
    assert external_count(db_path) == len(acked)


def peak_rss_mib(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_concurrent_failed_logins_keep_server_memory_bounded(db_path, tmp_path, start_server):
    """Production argon2 (64 MiB a hash) in a real server: 12 simultaneous failed logins used to
    take it from ~85 to ~780 MiB; with at most 2 hashes at once it grows by about 2 x 64 MiB."""
    seed(open_database(db_path), tmp_path, annotators=["ann1"])
    server = start_server(db_path)
    before = peak_rss_mib(server.proc.pid)

    def failed_login(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            client.get("/login")
            return client.post("/login", data={"username": f"guess{i}", "password": "wrong password",
                                               "csrf_token": client.cookies["rlhf_login_csrf"]}).status_code
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(failed_login, range(12)))
    # 503 (no hashing slot within HASH_WAIT seconds) is allowed: on a loaded machine a hash takes seconds
    assert set(codes) <= {401, 503} and codes.count(401) >= 2, codes
    growth = peak_rss_mib(server.proc.pid) - before
    assert growth < 4 * 64, f"peak memory grew by {growth:.0f} MiB"
