"""Helpers shared by the app tests: seeding a database, logging in, answering tasks."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
from sqlalchemy import func, select

from rlhf.feedback.app.accounts import create_user
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.app.models import Label
from rlhf.feedback.app.projects import create_project

PASSWORD = "correct horse battery"
TASKS = [
    {"id": "t1", "prompt": "Name a prime number.", "responses": ["7", "8", "9"]},
    {"id": "t2", "prompt": [{"role": "user", "content": "Say hi."}], "responses": ["hi", "hello"]},
    {"id": "t3", "prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
GOLD = [{"id": "g1", "prompt": "2+2?", "responses": ["4", "5"], "ranks": [1, 2]}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def seed(sessions, tmp_path: Path, *, project: str = "demo", annotators=("ann1", "ann2"), overlap: int = 1,
         gold_fraction: float = 0.0, tasks=TASKS, gold=None, batch_size: int = 10, media_root=None) -> str:
    """An admin, some annotators and one project with tasks (and gold) imported."""
    with sessions() as db:
        create_user(db, "admin", PASSWORD, "admin")
        for name in annotators:
            create_user(db, name, PASSWORD)
        if media_root is None:
            create_project(db, project, overlap, gold_fraction, batch_size)
        else:
            create_project(db, project, overlap, gold_fraction, batch_size, media_root=str(media_root))
        import_tasks(db, project, write_jsonl(tmp_path / f"{project}-tasks.jsonl", tasks),
                     write_jsonl(tmp_path / f"{project}-gold.jsonl", gold) if gold else None)
    return project


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> str:
    """Log in through the real form (login CSRF cookie included); returns the session's CSRF token."""
    page = client.get("/login")
    assert page.status_code == 200
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": client.cookies["rlhf_login_csrf"]}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client.get("/api/session").json()["csrf_token"]


def next_task(client: httpx.Client, csrf: str, project: str = "demo") -> dict:
    response = client.post(f"/api/projects/{project}/next", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    return response.json()


def answer(client: httpx.Client, csrf: str, assignment_id: int, k: int, ranks=None, ratings=None,
           flags=None) -> httpx.Response:
    body = {"ranks": ranks or list(range(1, k + 1)), "ratings": ratings or [4] * k,
            "flags": flags or [{} for _ in range(k)]}
    return client.post(f"/api/assignments/{assignment_id}/label", json=body, headers={"X-CSRF-Token": csrf})


def count_labels(sessions) -> int:
    with sessions() as db:
        return db.scalar(select(func.count()).select_from(Label))


def api_flow(make_client, sessions, tmp_path: Path) -> None:
    """The core path on any backend: two annotators answer with overlap 2, the admin exports."""
    from rlhf.feedback.app.export import export_project
    from rlhf.feedback.app.projects import get_project

    seed(sessions, tmp_path, overlap=2)
    done = {}
    for name in ("ann1", "ann2"):
        client = make_client()
        csrf = login(client, name)
        while True:
            task = next_task(client, csrf)
            if task["assignment_id"] is None:
                break
            page = client.get(task["url"])
            assert page.status_code == 200
            k = page.text.count('class="card response"')
            assert answer(client, csrf, task["assignment_id"], k).json()["stored"] is True
            assert answer(client, csrf, task["assignment_id"], k).json()["stored"] is False  # idempotent
        done[name] = task
        assert (task["done"], task["assigned"]) == (3, 3)
    assert count_labels(sessions) == 6
    with sessions() as db:
        out = tmp_path / "export.jsonl"
        summary = export_project(db, get_project(db, "demo"), out, "rankings")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.tasks == 3 and [r["id"] for r in rows] == ["t1", "t2", "t3"]
    assert rows[0]["ranks"] == [1, 2, 3] and rows[0]["meta"]["annotators"] == ["ann1", "ann2"]
