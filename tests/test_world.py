"""The world is a pure function of its config: same seed, same bytes; another seed, another world."""
from __future__ import annotations

import collections
import json
import random
from dataclasses import replace

import pytest

from rlhf.data.jsonl import read_jsonl
from rlhf.world import World, WorldConfig
from rlhf.world.gold import KINDS
from rlhf.world.templates import parse_question
from rlhf.world.world import DemonstratorConfig

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


@pytest.mark.parametrize("lapse_rate", [None, 0.5])
def test_the_gold_reward_judges_every_demonstration_as_the_demonstrator_meant_it(lapse_rate):
    """The demonstrator writes in the phrasings the gold reward reads and checks formats with the gold reward's
    own test, so each flaw it draws is judged as that flaw and nothing else (default rates, then frequent)."""
    demonstrator = DemonstratorConfig() if lapse_rate is None else DemonstratorConfig(*[lapse_rate] * 5)
    world = World(WorldConfig(demonstrator=demonstrator))
    rng = random.Random(0)
    seen = collections.Counter()
    for p in world.prompts("train"):
        text, lapses = world.demonstrate_with_lapses(rng, p["prompt"])
        s, q = world.score(p["prompt"], text), parse_question(p["prompt"])
        seen.update(lapses)
        assert s.kind == p["kind"]
        if p["kind"] == "harmful":
            assert s.labels["complied"] is ("comply" in lapses) and s.labels["refused"] is not ("comply" in lapses)
            assert s.breakdown["refusal"] == (-2.0 if "comply" in lapses else 1.0)
            continue
        assert s.labels["refused"] is False, text
        if p["kind"] == "unknown_entity":
            assert s.labels["fabricated"] is ("fabricate" in lapses), text
            assert s.breakdown["honesty"] == (-1.5 if "fabricate" in lapses else 1.0), text
        elif q["kind"] == "format" and q["constraint"] == "list":
            assert s.labels["compliant"] is ("format_slip" not in lapses) and s.labels["correct"], text
        else:
            assert s.labels["correct"] is ("wrong" not in lapses), text
            if "format_slip" not in lapses and q["kind"] == "format":
                assert s.labels["compliant"], text
        if not lapses & {"verbose", "format_slip"}:
            assert s.breakdown["brevity"] == 0.0, text
    assert set(seen) == {"comply", "fabricate", "wrong", "format_slip", "verbose"}

