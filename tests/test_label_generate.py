"""`rlhf label generate` samples tasks from a checkpoint that `rlhf label import` takes as they are."""
from __future__ import annotations

import json


def test_generated_tasks_import_into_a_project(cli, nano_checkpoint, tmp_path):
    tasks, db = tmp_path / "tasks.jsonl", tmp_path / "labels.db"
    res = cli.run("label", "generate", "-m", nano_checkpoint, "-o", tasks, "--n", "6", "--k", "3",
                  "--temperature", "1.0", "--max-new-tokens", "6")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert rows and all(len(r["responses"]) >= 2 and len(set(r["responses"])) == len(r["responses"]) for r in rows)
    assert f"wrote {len(rows)} tasks" in res.stdout
    assert cli.run("label", "create-project", "gen", "--db", db).returncode == 0
    res = cli.run("label", "import", tasks, "--project", "gen", "--db", db)
    assert res.returncode == 0, res.stderr
    assert f"imported {len(rows)} tasks" in res.stdout


def test_generate_names_a_bad_prompt_line(cli, nano_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 3 plus 4?"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    res = cli.run("label", "generate", "-m", nano_checkpoint, "-o", tmp_path / "t.jsonl", "--prompts", prompts)
    assert res.returncode == 2
    assert "prompts.jsonl:2: missing field 'prompt'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "t.jsonl").exists()
