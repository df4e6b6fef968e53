"""The same API flow against a real PostgreSQL server (started by the session fixture)."""
from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import select

from app_support import answer, api_flow, login, next_task, seed
from rlhf.feedback.app import create_app
from rlhf.feedback.app.models import Assignment


def test_core_flow_on_postgresql(postgres_url, tmp_path):
    app = create_app(postgres_url)
    clients = []

    def make_client():
        clients.append(TestClient(app))
        return clients[-1]
    try:
        api_flow(make_client, app.state.sessions, tmp_path)
    finally:
        for c in clients:
            c.close()


def test_concurrent_allocation_respects_overlap_on_postgresql(postgres_url, tmp_path):
    """Row locks on the project serialize allocation: no task gets more than `overlap` annotators."""
    app = create_app(postgres_url)
    names = [f"a{i}" for i in range(8)]
    tasks = [{"id": f"t{i}", "prompt": f"p{i}", "responses": ["x", "y"]} for i in range(6)]
    seed(app.state.sessions, tmp_path, annotators=names, overlap=2, tasks=tasks, batch_size=3)
    clients = {name: TestClient(app) for name in names}
    tokens = {name: login(c, name) for name, c in clients.items()}
    threads = [threading.Thread(target=next_task, args=(clients[n], tokens[n])) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with app.state.sessions() as db:
        task_ids = db.scalars(select(Assignment.task_id)).all()
    assert len(task_ids) == 12 and all(task_ids.count(t) == 2 for t in set(task_ids))
    first = next_task(clients["a0"], tokens["a0"])
    if first["assignment_id"]:
        assert answer(clients["a0"], tokens["a0"], first["assignment_id"], 2).json()["stored"] is True
    for c in clients.values():
        c.close()
