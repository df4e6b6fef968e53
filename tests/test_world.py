"""The world is a pure function of its config: same seed, same bytes; another seed, another world."""
from __future__ import annotations

import json
from dataclasses import replace

from rlhf.data.jsonl import read_jsonl
from rlhf.world import World
from rlhf.world.gold import KINDS
from rlhf.world.templates import parse_question

FILES = ["world.json", "corpus.jsonl", "demonstrations.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl"]


def _saved(cfg, directory):
    World(cfg).save(directory)
    return {name: (directory / name).read_bytes() for name in FILES}


def test_same_seed_gives_byte_identical_files(tmp_path, tiny_world_config):
    a = _saved(tiny_world_config, tmp_path / "a")
    b = _saved(tiny_world_config, tmp_path / "b")
    assert a == b
    assert all(a[name] for name in FILES)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(FILES)  # no temp files left


def test_different_seed_gives_a_different_world(tmp_path, tiny_world_config):
    a = _saved(tiny_world_config, tmp_path / "a")
    b = _saved(replace(tiny_world_config, seed=1), tmp_path / "b")
    for name in FILES:
        assert a[name] != b[name], name
    names_a = {e["name"] for e in json.loads(a["world.json"])["entities"]}
    names_b = {e["name"] for e in json.loads(b["world.json"])["entities"]}
    assert names_a != names_b


def test_saved_world_round_trips_and_is_consistent(tmp_path, tiny_world_config):
    World(tiny_world_config).save(tmp_path)
    loaded = World.load(tmp_path)
    assert loaded.config == tiny_world_config
    demos = [obj for _, obj in read_jsonl(tmp_path / "demonstrations.jsonl")]
    assert len(demos) == tiny_world_config.n_demonstrations
    for d in demos:
        roles = [m["role"] for m in d["messages"]]
        assert roles in (["user", "assistant"], ["user", "assistant"] * 2)
    prompts = [obj for _, obj in read_jsonl(tmp_path / "prompts_eval.jsonl")]
    assert {p["kind"] for p in prompts} == set(KINDS)
    # every prompt is in the world's language and the gold reward classifies it as its generator did
    for p in prompts + [obj for _, obj in read_jsonl(tmp_path / "prompts_train.jsonl")]:
        assert parse_question(p["prompt"]) is not None, p
        assert loaded.score(p["prompt"], "").kind == p["kind"], p


def test_eval_prompts_ask_about_entities_held_out_of_the_qa_data(tiny_world):
    a_names = {e.name.lower() for e in tiny_world.group_a}
    b_names = {e.name.lower() for e in tiny_world.group_b}
    assert a_names and b_names and not a_names & b_names
    for p in tiny_world.prompts("eval"):
        q = parse_question(p["prompt"])
        if p["kind"] == "known_fact":
            assert q["name"].lower() in b_names
    assert not set(tiny_world.arith_train) & set(tiny_world.arith_eval)
    assert not {e.name for e in tiny_world.unknown_train} & {e.name for e in tiny_world.unknown_eval}
