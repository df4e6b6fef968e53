"""Many annotators at once against a real uvicorn server on loopback, and a crash in the middle."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select

from app_support import count_labels, seed
from rlhf.feedback.app.accounts import start_session
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.models import Assignment, Label, User

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


def test_labels_acknowledged_before_a_kill_9_survive(db_path, tmp_path, start_server):
    sessions = seed_load(db_path, tmp_path)
    server = start_server(db_path)
    acked: list[int] = []
    stop = threading.Event()
    with ThreadPoolExecutor(N_ANNOTATORS) as pool:
        for client, csrf in logged_in_clients(sessions, server.url):
            pool.submit(annotate, client, csrf, acked, stop)
        deadline = time.monotonic() + 60
        while len(set(acked)) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # mid-load: requests are in flight
        stop.set()
    restarted = start_server(db_path)
    assert httpx.get(f"{restarted.url}/login").status_code == 200
    restarted.stop()
    stored = set(open_database(db_path)().scalars(select(Label.assignment_id)).all())
    assert set(acked) <= stored
    assert 60 <= len(stored) < 2 * len(TASKS) and count_labels(open_database(db_path)) == len(stored)
