"""Importing tasks: every bad line is reported, and a file with any bad line imports nothing."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app_support import write_jsonl
from rlhf.errors import RLHFError
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.app.models import Task
from rlhf.feedback.app.projects import create_project


@pytest.fixture
def sessions(db_path):
    sessions = open_database(db_path)
    with sessions() as db:
        create_project(db, "demo")
    return sessions


def n_tasks(sessions) -> int:
    with sessions() as db:
        return db.scalar(select(func.count()).select_from(Task))


def test_every_bad_line_is_reported_and_nothing_is_imported(sessions, tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "ok1", "prompt": "p", "responses": ["a", "b"]},
        '{"id": "broken", "prompt": ',
        {"id": "nores", "prompt": "p"},
        {"id": "k1", "prompt": "p", "responses": ["only one"]},
        {"id": "ok1", "prompt": "q", "responses": ["c", "d"]},
        {"prompt": "p", "chosen": "yes"},
        {"id": "bad-kind", "kind": "audio", "prompt": "p", "responses": ["a", "b"]},
        '["a list"]',
        {"id": "ok2", "prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b", "c"]},
    ])
    with sessions() as db, pytest.raises(RLHFError) as err:
        import_tasks(db, "demo", path)
    report = str(err.value)
    assert report.startswith("nothing imported; 7 problem(s)")
    for line, problem in [(2, "malformed JSON"), (3, "missing field 'responses'"), (4, "K >= 2"),
                          (5, "duplicate id 'ok1' (first at"), (6, "'rejected'"), (7, "'kind'"),
                          (8, "expected a JSON object")]:
        assert f"{path}:{line}: " in report and problem in report.split(f"{path}:{line}: ")[1].split("\n")[0]
    assert f"{path}:1:" not in report and f"{path}:9:" not in report
    assert n_tasks(sessions) == 0


def test_ids_already_in_the_project_and_gold_problems_are_reported(sessions, tmp_path):
    with sessions() as db:
        assert import_tasks(db, "demo", write_jsonl(tmp_path / "a.jsonl", [
            {"id": "x", "prompt": "p", "responses": ["a", "b"]}])) == (1, 0)
    tasks = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "prompt": "p", "responses": ["c", "d"]},
                                               {"id": "y", "prompt": "p", "responses": ["c", "d"]}])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "y", "prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]},
                                                 {"id": "g", "prompt": "p", "responses": ["a", "b"]},
                                                 {"id": "h", "prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]},
                                                 {"id": "i", "prompt": "p", "responses": ["a", "b"], "ranks": [1, 5]}])
    with sessions() as db, pytest.raises(RLHFError) as err:
        import_tasks(db, "demo", tasks, gold)
    report = str(err.value)
    assert f"{tasks}:1: id 'x' is already in project 'demo'" in report
    assert f"{gold}:1: duplicate id 'y' (first at {tasks}:2)" in report
    assert f"{gold}:2: missing field 'ranks'" in report and f"{gold}:3: gold 'ranks' are all tied" in report
    assert f"{gold}:4: 'ranks' must be 2 integers" in report
    assert n_tasks(sessions) == 1


def test_good_files_import_tasks_and_gold(sessions, tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"\0\0\0\x18ftypmp42")
    tasks = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"},
                                               {"id": 7, "kind": "video", "prompt": "pick",
                                                "responses": ["a.mp4", "b.mp4"]}])
    gold = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "chosen": "right", "rejected": "wrong"}])
    with sessions() as db:
        assert import_tasks(db, "demo", tasks, gold, media_root=str(tmp_path / "clips")) == (2, 1)
        rows = {t.external_id: t for t in db.scalars(select(Task))}
    assert rows["7"].kind == "video" and not rows["7"].is_gold
    gold_task = next(t for t in rows.values() if t.is_gold)
    assert gold_task.gold_ranks == [1, 2] and gold_task.responses == ["right", "wrong"]
    plain = next(t for t in rows.values() if t.responses == ["good", "bad"])
    assert plain.external_id.startswith("h") and plain.gold_ranks is None
    with sessions() as db, pytest.raises(RLHFError, match="already in project"):
        import_tasks(db, "demo", tasks)  # content-derived ids make a reimport a duplicate


def test_missing_project_and_files(sessions, tmp_path):
    with sessions() as db:
        with pytest.raises(RLHFError, match="no project named 'nope'"):
            import_tasks(db, "nope", tmp_path / "x.jsonl")
        with pytest.raises(RLHFError, match="file not found"):
            import_tasks(db, "demo", tmp_path / "missing.jsonl")
        with pytest.raises(RLHFError, match="no tasks"):
            import_tasks(db, "demo", write_jsonl(tmp_path / "empty.jsonl", []))
    assert n_tasks(sessions) == 0
