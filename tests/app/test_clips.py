"""Clip pairs in the labeling app: real rendered clips (Pendulum GIFs from control/render.py) imported as a project
of 'clip' pairs, answered left / right / equal / can't tell by keyboard in a real browser, exported, and read back
as labels by the control reward model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app_support import PASSWORD, login, next_task, write_jsonl
from rlhf.control.app_clips import fit_answers, make_pairs, read_answers
from rlhf.errors import RLHFError
from rlhf.feedback.app.accounts import create_user
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.export import export_project
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.app.models import Assignment, Label, Task
from rlhf.feedback.app.projects import create_project, get_project
from rlhf.feedback.label_cli import label_app
from test_browser import ARTIFACTS, login_in_browser


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """3 Pendulum clip pairs and 1 gold pair, 8 steps each, from 2 random-action episodes, written as GIFs."""
    out = tmp_path_factory.mktemp("clips")
    made = make_pairs("Pendulum", out, pairs=3, clip_len=8, episodes=2, gold=1, seed=0)
    assert (made["pairs"], made["gold"]) == (3, 1)
    return out


def clip_project(sessions, clip_dir, annotators=("ann1",), overlap=1, gold=False) -> str:
    with sessions() as db:
        create_user(db, "admin", PASSWORD, "admin")
        for name in annotators:
            create_user(db, name, PASSWORD)
        create_project(db, "pend", overlap, 0.2 if gold else 0.0, media_root=str(clip_dir))
        import_tasks(db, "pend", clip_dir / "tasks.jsonl", clip_dir / "gold.jsonl" if gold else None)
    return "pend"


def test_clip_pair_in_the_browser_records_left_right_equal_and_cant_tell(db_path, tmp_path, clip_dir,
                                                                          browser,
                                                                          start_server):
    sessions = open_database(db_path)
    clip_project(sessions, clip_dir)
    server = start_server(db_path)
    page = browser.new_page(viewport={"width": 1300, "height": 800})
    login_in_browser(page, server.url, "ann1")
    page.click("button.primary:has-text('Label')")
    keys = ["ArrowLeft", "e", "c"]  # left better, equal, can't tell
    chosen = {}
    for key in keys:
        page.wait_for_selector("#clip-labeler")
        here = page.url
        assert page.locator("figure.clip img.media").count() == 2  # the pair, side by side
        page.wait_for_function("[...document.querySelectorAll('img.media')].every(i => i.complete && i.naturalWidth)")
        width = page.evaluate("[...document.querySelectorAll('img.media')].map(i => i.naturalWidth)")
        assert width == [500, 500]  # Pendulum's 500x500 frames, served from the media root
        if key == keys[0]:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "clip-pair-page.png"))
        left = int(page.locator("#clip-left").get_attribute("data-index"))
        with sessions() as db:
            assignment = db.get(Assignment, int(here.rsplit("/", 1)[1]))
            chosen[assignment.task.external_id] = (key, left)
        page.keyboard.press(key)
        page.wait_for_url(lambda url: url != here)
    page.wait_for_url(f"{server.url}/projects")
    assert "3 done / 3 assigned" in page.content()

    with sessions() as db:
        labels = {a.task.external_id: a.label for a in db.scalars(select(Assignment)).all()}
    for task_id, (key, left) in chosen.items():
        label = labels[task_id]
        if key == "ArrowLeft":  # the shown left clip (original index `left`) got rank 1, the other rank 2
            assert not label.skipped and label.ranks[left] == 1 and label.ranks[1 - left] == 2
        elif key == "e":
            assert label.ranks == [1, 1]
        else:
            assert label.skipped and label.skip_reason == "can't tell"

    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(label_app, ["export", "--db", db_path, "--project", "pend", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(t for t, (k, _) in chosen.items() if k != "c")  # no skips
    got = read_answers(clip_dir, out)
    for pid, y in zip(got["ids"], got["y"]):
        key, left = chosen[pid]
        assert y == (0.5 if key == "e" else (1.0 if left == 0 else 0.0))  # 1.0 = clip a (response 0) better
    assert got["xa"].shape == (2, 8, 3 + 1)  # Pendulum: 3 observation features + 1 action


def test_clip_pairs_take_no_ratings_and_only_left_right_or_equal(db_path, tmp_path, clip_dir, make_client):
    sessions = open_database(db_path)
    clip_project(sessions, clip_dir)
    client = make_client()
    csrf = login(client, "ann1")
    task = next_task(client, csrf, "pend")
    page = client.get(task["url"])
    assert page.status_code == 200 and 'id="clip-labeler"' in page.text
    url = f"/api/assignments/{task['assignment_id']}/label"
    headers = {"X-CSRF-Token": csrf}
    for body in ({"ranks": [2, 2]}, {"ranks": [1, 2], "ratings": [4, 4]}, {"ranks": [1, 2, 3]}, {}):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 422, body
    response = client.post(url, json={"ranks": [2, 1]}, headers=headers)
    assert response.json()["stored"] is True
    with sessions() as db:
        (label,) = db.scalars(select(Label)).all()
        assert (label.ranks, label.ratings, label.flags) == ([2, 1], None, None)


def test_clip_pairs_share_overlap_gold_and_the_quality_report(db_path, tmp_path, clip_dir, make_client):
    from rlhf.feedback.app.quality import quality_report

    sessions = open_database(db_path)
    clip_project(sessions, clip_dir, annotators=("ann1", "ann2"), overlap=2, gold=True)
    with sessions() as db:
        gold = db.scalar(select(Task).where(Task.is_gold.is_(True)))
        assert gold.kind == "clip" and gold.gold_ranks in ([1, 2], [2, 1])
    for name in ("ann1", "ann2"):
        client = make_client()
        csrf = login(client, name)
        while (task := next_task(client, csrf, "pend"))["assignment_id"] is not None:
            with sessions() as db:
                t = db.get(Assignment, task["assignment_id"]).task
                ranks = t.gold_ranks if t.is_gold else [1, 2]  # both annotators: clip a every time
            assert client.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": ranks},
                               headers={"X-CSRF-Token": csrf}).json()["stored"]
    with sessions() as db:
        report = quality_report(db, get_project(db, "pend"))
        assert report.agreement == 1.0 and all(s.gold_accuracy == 1.0 for s in report.annotators.values())
        summary = export_project(db, get_project(db, "pend"), tmp_path / "out.jsonl")
    assert summary.tasks == 3  # gold never reaches the export
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(r["ranks"] == [1, 2] and r["meta"]["annotators"] == ["ann1", "ann2"] for r in rows)
    fitted = fit_answers(clip_dir, tmp_path / "out.jsonl", seed=0)
    assert fitted["labels"] == 3 and fitted["rm_acc"] == 1.0  # the ensemble fits three consistent answers
    xa, xb = read_answers(clip_dir, tmp_path / "out.jsonl")["xa"], read_answers(clip_dir, tmp_path / "out.jsonl")["xb"]
    ens = fitted["ensemble"]
    ra = ens.member_rewards(xa.reshape(-1, xa.shape[-1])).mean(0).reshape(3, -1).sum(1)
    rb = ens.member_rewards(xb.reshape(-1, xb.shape[-1])).mean(0).reshape(3, -1).sum(1)
    assert np.all(ra > rb)


def test_bad_clip_tasks_are_one_clear_line(db_path, tmp_path, clip_dir):
    sessions = open_database(db_path)
    with sessions() as db:
        create_project(db, "pend", media_root=str(clip_dir))
        bad = write_jsonl(tmp_path / "bad.jsonl", [
            {"id": "three", "kind": "clip", "prompt": "p", "responses": ["clips/p0000-a.gif", "clips/p0000-b.gif",
                                                                         "clips/p0001-a.gif"]},
            {"id": "text", "kind": "clip", "prompt": "p", "responses": ["left", "right"]}])
        with pytest.raises(RLHFError) as err:
            import_tasks(db, "pend", bad)
    assert "bad.jsonl:1: a 'clip' task is a pair: 2 responses" in str(err.value)
    assert "bad.jsonl:2: a 'clip' task's responses must be clip files" in str(err.value)
    with pytest.raises(RLHFError, match="unknown environment id 'Pendulm'.*did you mean 'Pendulum'"):
        make_pairs("Pendulm", tmp_path / "x", pairs=1)
    with pytest.raises(RLHFError, match="clip_len: 500 is longer than the episode"):
        make_pairs("Pendulum", tmp_path / "x", pairs=1, clip_len=500, episodes=1)
    with pytest.raises(RLHFError, match="not found"):
        read_answers(tmp_path, tmp_path / "none.jsonl")


def test_people_teach_the_live_control_loop_through_the_app(db_path, tmp_path):
    """`rlhf control` with people.db: each round's clip pairs appear in the app; an annotator answers them through
    the app's own API (left, right, equal, can't tell in turn) while the loop waits; the run's labels are
    exactly those answers (can't tell = skipped) and its GIFs are served by the app."""
    import os
    import subprocess
    import sys
    import time

    from fastapi.testclient import TestClient

    from rlhf.feedback.app import create_app

    sessions = open_database(db_path)
    with sessions() as db:
        create_user(db, "ann1", PASSWORD)
    out = tmp_path / "run"
    sets = ["env=Pendulum", "episode_len=20", "clip_len=5", "labels=8", "rounds=2", "initial_frac=0.5",
            "init_episodes=1", "eval_episodes=1", "baseline=false", "agent.timesteps=256", "agent.n_envs=1",
            "agent.n_steps=128", "agent.batch_size=64", "reward.epochs=1", f"people.db={db_path}",
            "people.project=live", "people.poll_s=0.1", "people.timeout_s=300"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "control", "-q", "-o", str(out),
                             *[x for s in sets for x in ("--set", s)]], env=env, stderr=subprocess.PIPE, text=True)
    given = []  # the ranks answered, None = can't tell
    try:
        with TestClient(create_app(db_path)) as client:
            csrf = login(client, "ann1")
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                response = client.post("/api/projects/live/next", headers={"X-CSRF-Token": csrf})
                if response.status_code == 404 or response.json()["assignment_id"] is None:
                    time.sleep(0.1)  # the loop has not asked (yet)
                    continue
                task = response.json()
                page = client.get(task["url"])
                assert page.status_code == 200 and 'id="clip-labeler"' in page.text
                with sessions() as db:
                    t = db.get(Assignment, task["assignment_id"]).task
                    task_id = t.id
                for i in (0, 1):  # both clips are real GIFs the app serves
                    media = client.get(f"/media/{task_id}/{i}")
                    assert media.status_code == 200 and media.content[:4] == b"GIF8"
                choice = [[1, 2], [2, 1], [1, 1], None][len(given) % 4]
                url = f"/api/assignments/{task['assignment_id']}/" + ("label" if choice else "skip")
                body = {"ranks": choice} if choice else {"reason": "can't tell"}
                assert client.post(url, json=body, headers={"X-CSRF-Token": csrf}).json()["stored"]
                given.append(choice)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    (seed,) = json.loads((out / "summary.json").read_text())["per_seed"]
    assert seed["labels"] == len(given) == 8
    assert seed["skipped"] == given.count(None) and seed["equal"] == given.count([1, 1])
    stored = [json.loads(line)["ranks"] for line in (out / "labels_seed0.jsonl").read_text().splitlines()]
    assert sorted(stored) == sorted(c for c in given if c)
    assert len(list((tmp_path / "run-people" / "clips").glob("*.gif"))) == 16
