"""Every route through FastAPI's TestClient: happy paths, auth failures, CSRF, other people's tasks."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app_support import GOLD, PASSWORD, answer, api_flow, count_labels, login, next_task, seed
from rlhf.feedback.app.models import Assignment, Label, Task


@pytest.fixture
def seeded(app, tmp_path):
    return seed(app.state.sessions, tmp_path)


def test_core_flow_on_sqlite(app, make_client, tmp_path):
    api_flow(make_client, app.state.sessions, tmp_path)


def test_login_page_sets_csrf_cookie_and_login_redirects_by_role(client, seeded):
    page = client.get("/login")
    token = client.cookies["rlhf_login_csrf"]
    assert token in page.text and "HttpOnly" in page.headers["set-cookie"]
    response = client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token},
                           follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "rlhf_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert client.get("/", follow_redirects=False).headers["location"] == "/admin"
    annotator = login(client, "ann1")
    assert annotator and client.get("/", follow_redirects=False).headers["location"] == "/projects"


def test_login_failures(client, seeded):
    client.get("/login")
    token = client.cookies["rlhf_login_csrf"]
    bad = client.post("/login", data={"username": "ann1", "password": "wrong password", "csrf_token": token})
    assert bad.status_code == 401 and "Wrong username or password" in bad.text
    assert client.post("/login", data={"username": "nobody", "password": "x", "csrf_token": token}).status_code == 401
    no_csrf = client.post("/login", data={"username": "ann1", "password": PASSWORD, "csrf_token": "forged"})
    assert no_csrf.status_code == 403


def test_failed_logins_are_rate_limited_per_username_and_ip(client, seeded):
    client.get("/login")
    form = {"username": "ann1", "password": "wrong password", "csrf_token": client.cookies["rlhf_login_csrf"]}
    assert [client.post("/login", data=form).status_code for _ in range(5)] == [401] * 5
    assert client.post("/login", data=form).status_code == 429
    assert client.post("/login", data={**form, "password": PASSWORD}).status_code == 429  # even the right one
    other_user = client.post("/login", data={**form, "username": "ann2", "password": PASSWORD},
                             follow_redirects=False)
    assert other_user.status_code == 303


@pytest.mark.parametrize("method,path", [
    ("get", "/api/session"), ("post", "/api/projects/demo/next"), ("post", "/api/assignments/1/label"),
    ("post", "/api/assignments/1/skip"), ("post", "/logout"), ("post", "/projects/demo/next"),
    ("post", "/admin/users"), ("post", "/admin/projects"), ("post", "/admin/projects/demo/import"),
])
def test_anonymous_requests_get_401(client, seeded, method, path):
    assert getattr(client, method)(path).status_code == 401


@pytest.mark.parametrize("path", ["/", "/projects", "/assignments/1", "/admin", "/admin/projects/demo",
                                  "/admin/projects/demo/export", "/media/1/0"])
def test_anonymous_pages_redirect_to_login(client, seeded, path):
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


def test_annotator_cannot_use_admin_routes(client, seeded, tmp_path):
    csrf = login(client, "ann1")
    assert client.get("/admin").status_code == 403
    assert client.get("/admin/projects/demo").status_code == 403
    assert client.get("/admin/projects/demo/export").status_code == 403
    assert client.post("/admin/projects", data={"name": "x", "csrf_token": csrf}).status_code == 403
    assert client.post("/admin/users", data={"username": "x", "password": PASSWORD,
                                             "csrf_token": csrf}).status_code == 403
    files = {"tasks": ("t.jsonl", b'{"prompt": "p", "responses": ["a", "b"]}\n')}
    assert client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files=files).status_code == 403


def test_state_changing_requests_need_the_session_csrf_token(client, make_client, seeded):
    csrf = login(client, "ann1")
    assert client.post("/api/projects/demo/next").status_code == 403
    assert client.post("/api/projects/demo/next", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/projects/demo/next", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    task = next_task(client, csrf)
    body = {"ranks": [1, 2, 3], "ratings": [4, 4, 4]}
    assert client.post(task["url"].replace("/assignments", "/api/assignments") + "/label", json=body).status_code == 403
    other = make_client()
    other_csrf = login(other, "ann2")  # a valid token, but of another session
    assert client.post("/api/projects/demo/next", headers={"X-CSRF-Token": other_csrf}).status_code == 403
    assert count_labels(client.app.state.sessions) == 0


def test_annotator_cannot_see_or_answer_another_annotators_task(client, make_client, seeded):
    csrf = login(client, "ann1")
    mine = next_task(client, csrf)["assignment_id"]
    intruder = make_client()
    intruder_csrf = login(intruder, "ann2")
    assert intruder.get(f"/assignments/{mine}").status_code == 403
    assert answer(intruder, intruder_csrf, mine, 3).status_code == 403
    assert intruder.post(f"/api/assignments/{mine}/skip", json={"reason": "x"},
                         headers={"X-CSRF-Token": intruder_csrf}).status_code == 403
    assert intruder.get("/assignments/99999").status_code == 404
    assert count_labels(client.app.state.sessions) == 0


def test_labeling_page_shows_stored_random_order_and_progress(client, seeded):
    csrf = login(client, "ann1")
    task = next_task(client, csrf)
    with client.app.state.sessions() as db:
        assignment = db.get(Assignment, task["assignment_id"])
        order, responses = assignment.shown_order, assignment.task.responses
    page = client.get(task["url"]).text
    positions = [page.index(f'data-index="{i}" data-pos') for i in order]
    assert positions == sorted(positions) and sorted(order) == list(range(len(responses)))
    assert "0 done / 3 assigned" in page
    assert client.get("/projects").text.count("0 done / 3 assigned") == 1


def test_submit_validates_and_is_idempotent(client, seeded):
    csrf = login(client, "ann1")
    task = next_task(client, csrf)
    with client.app.state.sessions() as db:
        k = len(db.get(Assignment, task["assignment_id"]).task.responses)
    assert answer(client, csrf, task["assignment_id"], k, ranks=[1] * (k + 1)).status_code == 422
    assert answer(client, csrf, task["assignment_id"], k, ratings=[8] * k).status_code == 422
    assert answer(client, csrf, task["assignment_id"], k, flags=[{"nope": True}] * k).status_code == 422
    flags = [{"harmful": True, "other": "rude"}] + [{}] * (k - 1)
    first = answer(client, csrf, task["assignment_id"], k, ranks=[1] * k, flags=flags)
    assert first.json() == {"stored": True, "status": "done", "project": "demo"}
    again = answer(client, csrf, task["assignment_id"], k, ranks=list(range(1, k + 1)))
    assert again.status_code == 200 and again.json()["stored"] is False
    with client.app.state.sessions() as db:
        label = db.scalar(select(Label))
        assert label.ranks == [1] * k and label.flags[0] == {"harmful": True, "made_up_facts": False,
                                                             "ignores_instructions": False, "other": "rude"}
    assert count_labels(client.app.state.sessions) == 1
    assert "already answered" in client.get(task["url"]).text


def test_skip_needs_a_reason_and_counts_as_done(client, seeded):
    csrf = login(client, "ann1")
    task = next_task(client, csrf)
    url = f"/api/assignments/{task['assignment_id']}/skip"
    assert client.post(url, json={"reason": " "}, headers={"X-CSRF-Token": csrf}).status_code == 422
    skipped = client.post(url, json={"reason": "not my topic"}, headers={"X-CSRF-Token": csrf})
    assert skipped.json()["status"] == "skipped"
    assert next_task(client, csrf)["done"] == 1


def test_page_routes_next_and_logout(client, seeded):
    csrf = login(client, "ann1")
    response = client.post("/projects/demo/next", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/assignments/")
    assert client.post("/projects/nope/next", data={"csrf_token": csrf}).status_code == 404
    while (task := next_task(client, csrf))["assignment_id"]:
        answer(client, csrf, task["assignment_id"], client.get(task["url"]).text.count('class="card response"'))
    assert "All done" in client.post("/projects/demo/next", data={"csrf_token": csrf}).text
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/api/session").status_code == 401


def test_overlap_gives_each_task_to_m_distinct_annotators(app, make_client, tmp_path):
    seed(app.state.sessions, tmp_path, annotators=("a1", "a2", "a3"), overlap=2)
    got = {}
    for name in ("a1", "a2", "a3"):
        c = make_client()
        csrf = login(c, name)
        got[name] = next_task(c, csrf)["assigned"]
    assert got == {"a1": 3, "a2": 3, "a3": 0}
    with app.state.sessions() as db:
        per_task = [len(db.scalars(select(Assignment).where(Assignment.task_id == t.id)).all())
                    for t in db.scalars(select(Task))]
    assert per_task == [2, 2, 2]


def test_gold_tasks_are_mixed_in_and_scored(app, make_client, tmp_path):
    seed(app.state.sessions, tmp_path, gold_fraction=0.25, gold=GOLD)
    c = make_client()
    csrf = login(c, "ann1")
    assert next_task(c, csrf)["assigned"] == 4  # 3 regular + round(3 * 0.25 / 0.75) = 1 gold
    with app.state.sessions() as db:
        gold_assignment = db.scalar(select(Assignment).join(Task).where(Task.is_gold.is_(True)))
    page = c.get(f"/assignments/{gold_assignment.id}").text
    assert "gold" not in page.lower()
    assert answer(c, csrf, gold_assignment.id, 2, ranks=[2, 1]).json()["stored"]  # wrong: gold says [1, 2]
    admin = make_client()
    login(admin, "admin")
    dashboard = admin.get("/admin/projects/demo").text
    assert dashboard.count("<svg") == 4
    row = dashboard.split("<td>ann1</td>")[1].split("</tr>")[0]
    assert "<td>0%</td>" in row  # gold accuracy of the wrong answer


def test_admin_pages_create_users_and_projects(client, seeded):
    csrf = login(client, "admin")
    assert "demo" in client.get("/admin").text
    made = client.post("/admin/users", data={"username": "ann9", "password": PASSWORD, "role": "annotator",
                                             "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303
    again = client.post("/admin/users", data={"username": "ann9", "password": PASSWORD, "csrf_token": csrf})
    assert again.status_code == 400 and "already exists" in again.text
    project = client.post("/admin/projects", data={"name": "second", "overlap": 3, "gold_fraction": 0.1,
                                                   "csrf_token": csrf}, follow_redirects=False)
    assert project.status_code == 303 and project.headers["location"] == "/admin/projects/second"
    bad = client.post("/admin/projects", data={"name": "third", "overlap": 0, "csrf_token": csrf})
    assert bad.status_code == 400 and "overlap" in bad.text
    assert client.get("/admin/projects/nope").status_code == 404


def test_admin_import_upload_all_or_nothing(client, seeded):
    csrf = login(client, "admin")
    good = {"tasks": ("more.jsonl", b'{"id": "n1", "prompt": "p", "responses": ["a", "b"]}\n'),
            "gold": ("gold.jsonl", json.dumps(GOLD[0]).encode() + b"\n")}
    ok = client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files=good)
    assert ok.status_code == 200 and "Imported 1 tasks and 1 gold tasks" in ok.text
    bad = {"tasks": ("bad.jsonl", b'{"id": "n2", "prompt": "p", "responses": ["a", "b"]}\n{"id": "n3"}\nnot json\n')}
    failed = client.post("/admin/projects/demo/import", data={"csrf_token": csrf}, files=bad)
    assert failed.status_code == 400 and "bad.jsonl:2: missing field" in failed.text and "bad.jsonl:3:" in failed.text
    with client.app.state.sessions() as db:
        assert db.scalar(select(Task).where(Task.external_id == "n2")) is None


def test_admin_export_download(client, make_client, seeded):
    annotator = make_client()
    csrf = login(annotator, "ann1")
    task = next_task(annotator, csrf)
    with client.app.state.sessions() as db:
        k = len(db.get(Assignment, task["assignment_id"]).task.responses)
    answer(annotator, csrf, task["assignment_id"], k)
    login(client, "admin")
    rankings = client.get("/admin/projects/demo/export", params={"format": "rankings", "min_gold_accuracy": ""})
    assert rankings.status_code == 200 and len(rankings.text.splitlines()) == 1
    pairs = client.get("/admin/projects/demo/export", params={"format": "pairs"})
    assert len(pairs.text.splitlines()) == k * (k - 1) // 2
    assert client.get("/admin/projects/demo/export", params={"format": "csv"}).status_code == 400
    assert client.get("/admin/projects/demo/export", params={"min_gold_accuracy": "high"}).status_code == 400
    # nobody has gold answers, so a threshold drops everyone
    assert client.get("/admin/projects/demo/export", params={"min_gold_accuracy": "0.5"}).text == ""


def test_media_tasks_render_and_serve_only_to_their_annotator(app, make_client, tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "clip.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    tasks = [{"id": "m1", "kind": "image", "prompt": "Which clip reaches the goal?",
              "responses": ["clip.gif", "https://example.org/b.gif"]}]
    seed(app.state.sessions, tmp_path, tasks=tasks, media_root=tmp_path / "media")
    owner, other, admin = make_client(), make_client(), make_client()
    csrf = login(owner, "ann1")
    task = next_task(owner, csrf)
    page = owner.get(task["url"]).text
    with app.state.sessions() as db:
        task_id = db.get(Assignment, task["assignment_id"]).task_id
    assert f'src="/media/{task_id}/0"' in page and 'src="https://example.org/b.gif"' in page
    assert owner.get(f"/media/{task_id}/0").content.startswith(b"GIF89a")
    assert owner.get(f"/media/{task_id}/7").status_code == 404
    login(other, "ann2")
    assert other.get(f"/media/{task_id}/0").status_code == 403
    login(admin, "admin")
    assert admin.get(f"/media/{task_id}/0").status_code == 200


def test_script_tags_render_escaped(app, make_client, tmp_path):
    evil = "<script>alert('x')</script>"
    seed(app.state.sessions, tmp_path, tasks=[{"id": evil, "prompt": evil, "responses": [evil, "fine"]}])
    c = make_client()
    csrf = login(c, "ann1")
    page = c.get(next_task(c, csrf)["url"]).text
    assert evil not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


SQLI = ["'; DROP TABLE labels; --", "\" OR 1=1 --", "x'); DELETE FROM users; --", "1 UNION SELECT * FROM sessions"]


def test_sql_injection_strings_are_stored_literally(app, make_client, tmp_path):
    tasks = [{"id": s, "prompt": s, "responses": [s, s + " (2)"]} for s in SQLI]
    seed(app.state.sessions, tmp_path, project="sqli", tasks=tasks)  # project names are restricted
    c = make_client()
    csrf = login(c, "ann1")
    failed = c.post("/login", data={"username": SQLI[1], "password": SQLI[0],
                                    "csrf_token": c.cookies["rlhf_login_csrf"]})
    assert failed.status_code == 401
    answered = 0
    while (task := c.post("/api/projects/sqli/next", headers={"X-CSRF-Token": csrf}).json())["assignment_id"]:
        flags = [{"other": SQLI[answered]}, {}]
        if answered % 2:
            c.post(f"/api/assignments/{task['assignment_id']}/skip", json={"reason": SQLI[answered]},
                   headers={"X-CSRF-Token": csrf})
        else:
            answer(c, csrf, task["assignment_id"], 2, flags=flags)
        answered += 1
    assert answered == len(SQLI)
    with app.state.sessions() as db:
        assert sorted(db.scalars(select(Task.external_id))) == sorted(SQLI)
        assert {t.prompt[0]["content"] for t in db.scalars(select(Task))} == set(SQLI)
        texts = {label.skip_reason or label.flags[0]["other"] for label in db.scalars(select(Label))}
        assert texts == set(SQLI)
    assert count_labels(app.state.sessions) == len(SQLI)
    admin = make_client()
    login(admin, "admin")
    assert admin.get("/admin/projects/sqli").status_code == 200
    admin_csrf = admin.get("/api/session").json()["csrf_token"]
    refused = admin.post("/admin/projects", data={"name": SQLI[0], "csrf_token": admin_csrf})
    assert refused.status_code == 400 and "bad project name" in refused.text
