"""The `label` CLI end to end, consensus and export rules, and the agreement metrics."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app_support import GOLD, PASSWORD, TASKS, seed, write_jsonl
from rlhf.errors import RLHFError
from rlhf.feedback.app.accounts import authenticate
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.export import average_ranks, consensus, consensus_rankings
from rlhf.feedback.app.models import Project, User
from rlhf.feedback.app.projects import next_assignment, submit
from rlhf.feedback.app.quality import gold_hits, krippendorff_alpha_interval, quality_report
from rlhf.feedback.label_cli import label_app

runner = CliRunner()


def cli(*args):
    return runner.invoke(label_app, [str(a) for a in args])


def test_cli_init_users_projects_import_export(db_path, tmp_path):
    assert cli("init", "--db", db_path).exit_code == 0
    assert "created admin boss" in cli("create-user", "boss", "--admin", "--password", PASSWORD, "--db", db_path).output
    assert cli("create-user", "ann1", "--password", PASSWORD, "--db", db_path).exit_code == 0
    duplicate = cli("create-user", "ann1", "--password", PASSWORD, "--db", db_path)
    assert isinstance(duplicate.exception, RLHFError)
    assert cli("create-project", "demo", "--overlap", 2, "--gold-fraction", 0.2, "--db", db_path).exit_code == 0
    assert isinstance(cli("create-project", "bad", "--gold-fraction", 1.5, "--db", db_path).exception, RLHFError)
    tasks, gold = write_jsonl(tmp_path / "t.jsonl", TASKS), write_jsonl(tmp_path / "g.jsonl", GOLD)
    imported = cli("import", tasks, "--project", "demo", "--gold", gold, "--db", db_path)
    assert "imported 3 tasks and 1 gold tasks" in imported.output
    bad = cli("import", write_jsonl(tmp_path / "bad.jsonl", ['{"id": 1}']), "--project", "demo", "--db", db_path)
    assert isinstance(bad.exception, RLHFError) and "bad.jsonl:1:" in str(bad.exception)
    sessions = open_database(db_path)
    with sessions() as db:
        assert authenticate(db, "ann1", PASSWORD).role == "annotator"
        user = db.query(User).filter_by(username="ann1").one()
        project = db.query(Project).filter_by(name="demo").one()
        while (assignment := next_assignment(db, project, user)) is not None:
            k = len(assignment.task.responses)
            submit(db, assignment, ranks=list(range(1, k + 1)), ratings=[5] * k)
    out = tmp_path / "out.jsonl"
    result = cli("export", "--project", "demo", "--out", out, "--db", db_path)
    assert "wrote 3 rows from 3 tasks" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"t1", "t2", "t3"}  # the gold task is not exported
    dropped = cli("export", "--project", "demo", "--out", out, "--min-gold-accuracy", 0.8, "--db", db_path)
    assert "wrote 3 rows" in dropped.output and "dropped" not in dropped.output  # ann1 got the gold task right
    assert isinstance(cli("export", "--project", "demo", "--out", out, "--format", "csv", "--db", db_path).exception,
                      RLHFError)
    assert isinstance(cli("export", "--project", "nope", "--out", out, "--db", db_path).exception, RLHFError)


def test_bad_database_urls_are_user_errors(tmp_path):
    assert isinstance(cli("init", "--db", tmp_path / "missing" / "x.db").exception, RLHFError)
    assert isinstance(cli("init", "--db", "nosuchdialect://x").exception, RLHFError)


def test_consensus_uses_mean_average_rank_and_keeps_ties():
    assert average_ranks([1, 1, 2]) == [1.5, 1.5, 3.0] and average_ranks([1, 1, 3]) == [1.5, 1.5, 3.0]
    assert consensus([[1, 2, 3], [2, 1, 3]]) == [1, 1, 2]  # disagreement on the top two is a tie
    assert consensus([[1, 2, 3], [1, 3, 2], [1, 2, 3]]) == [1, 2, 3]


def test_gold_hits_and_krippendorff_alpha():
    assert gold_hits([1, 2, 2], [1, 2, 3]) == (2, 3)  # tie where gold orders: wrong
    assert gold_hits([1, 2], [1, 1]) == (0, 0)
    assert krippendorff_alpha_interval([[1, 1], [4, 4], [7, 7]]) == 1.0
    # by hand: D_o = 2 / 8 (one unit differs by 1, counted both ways); values 1,2,3,3,5,5,1,1 have
    # sum of squared deviations 19.875, so D_e = 2 * 8 * 19.875 / (8 * 7)
    assert krippendorff_alpha_interval([[1, 2], [3, 3], [5, 5], [1, 1]]) == pytest.approx(1 - 0.25 / (2 * 19.875 / 7))
    assert krippendorff_alpha_interval([[3]]) is None and krippendorff_alpha_interval([[2, 2], [2, 2]]) is None


def test_quality_report_and_gold_threshold_export(db_path, tmp_path):
    sessions = open_database(db_path)
    seed(sessions, tmp_path, annotators=("good", "bad"), overlap=2, gold_fraction=0.5, gold=GOLD,
         tasks=TASKS[:1])
    answers = {"good": ([1, 2, 3], [7, 4, 1], [1, 2]), "bad": ([3, 2, 1], [1, 4, 7], [2, 1])}
    with sessions() as db:
        project = db.query(Project).one()
        for name, (ranks, ratings, gold_ranks) in answers.items():
            user = db.query(User).filter_by(username=name).one()
            while (a := next_assignment(db, project, user)) is not None:
                if a.task.is_gold:
                    submit(db, a, ranks=gold_ranks, ratings=[4, 4])
                else:
                    submit(db, a, ranks=ranks, ratings=ratings)
        report = quality_report(db, project)
        assert report.annotators["good"].gold_accuracy == 1.0 and report.annotators["bad"].gold_accuracy == 0.0
        assert report.agreement == pytest.approx(0.0) and report.alpha < 0
        assert report.rating_counts == [2, 0, 0, 2, 0, 0, 2]
        everyone, _, _ = consensus_rankings(db, project)
        assert everyone[0].ranks == (1, 1, 1)  # exact opposites cancel out
        trusted, kept, dropped = consensus_rankings(db, project, min_gold_accuracy=0.8)
        assert trusted[0].ranks == (1, 2, 3) and kept == ["good"] and dropped == ["bad"]
