"""The simulated labeler pool: calibration to the target inter-labeler agreement, Bradley-Terry, rankings."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from rlhf.feedback.labelers import Labeler, LabelerPool, LabelerPoolConfig, features, label_rankings
from rlhf.feedback.simulate import measured_agreement, within_prompt_pairs

WORDS = "the a capital city river bread flour water yeast salt oven is of and to in it was Paris Rome".split()


def realistic_items(n_prompts: int = 300, k: int = 4, seed: int = 0) -> list[dict]:
    """K sampled responses per prompt, like `rlhf label simulate` sees them: gold scores spread around a
    prompt-level mean (responses to one prompt are alike), lengths of a few to ~40 words."""
    rng = random.Random(seed)
    items = []
    for p in range(n_prompts):
        base = rng.gauss(0, 1)
        responses, gold = [], []
        for i in range(k):
            responses.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + f" #{p}.{i}")
            gold.append(round(base + rng.gauss(0, 0.6), 3))
        items.append({"id": f"p{p}", "prompt": f"question {p}?", "responses": responses, "gold": gold})
    return items


@pytest.mark.parametrize("target", [0.73, 0.65])
def test_pool_agreement_within_3_points_of_target(target):
    pool = LabelerPool.build(LabelerPoolConfig(target_agreement=target, seed=1))
    pairs = within_prompt_pairs(pool, realistic_items())
    assert len(pairs) == 1800
    pool.calibrate(pairs)
    assert pool.expected_agreement(pairs) == pytest.approx(target, abs=0.002)
    measured = measured_agreement(pool, pairs, 2000, seed=7)
    assert abs(measured - target) <= 0.03, (measured, target, pool.temperature)


def test_agreement_counted_by_hand_from_rankings():
    """Two different labelers rank the same K = 2 items (via `rank`, what `label_rankings` uses)."""
    pool = LabelerPool.build(LabelerPoolConfig(seed=2))
    items = realistic_items(seed=3)
    pairs = within_prompt_pairs(pool, items)
    pool.calibrate(pairs)
    rng = random.Random(11)
    agree = 0
    for _ in range(2000):
        a, b = rng.choice(pairs)
        l1, l2 = rng.sample(pool.labelers, 2)
        agree += (pool.rank(l1, [a, b], rng) == pool.rank(l2, [a, b], rng))
    assert abs(agree / 2000 - 0.73) <= 0.03


def test_expected_agreement_matches_brute_force():
    pool = LabelerPool.build(LabelerPoolConfig(n_labelers=4, seed=3), temperature=0.8)
    pairs = [((0.3, 10, 0.1), (-0.2, 25, 0.0)), ((1.0, 5, -0.3), (0.9, 6, 0.4))]
    ls = [pool._scaled(labeler) for labeler in pool.labelers]
    brute = []
    for a, b in pairs:
        for x, y in itertools.permutations(ls, 2):
            p, q = x.p_prefers(a, b), y.p_prefers(a, b)
            brute.append(p * q + (1 - p) * (1 - q))
    assert pool.expected_agreement(pairs) == pytest.approx(sum(brute) / len(brute), abs=1e-12)


def test_agreement_falls_as_temperature_rises():
    pool = LabelerPool.build(LabelerPoolConfig(seed=0))
    pairs = within_prompt_pairs(pool, realistic_items(50))
    values = []
    for t in (0.05, 0.3, 1.0, 5.0, 50.0):
        pool.temperature = t
        values.append(pool.expected_agreement(pairs))
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(0.5, abs=0.01)


def test_bradley_terry_and_plackett_luce_marginals():
    lab = Labeler(0, temperature=0.5, length_bias=0.0)
    a, b = (1.0, 0, 0.0), (0.5, 0, 0.0)
    assert lab.p_prefers(a, b) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert lab.p_prefers(a, b) + lab.p_prefers(b, a) == pytest.approx(1.0)
    pool = LabelerPool.build(LabelerPoolConfig(n_labelers=1), temperature=1.0)
    pool.labelers = [lab]
    rng = random.Random(0)
    wins = sum(pool.rank(lab, [a, b], rng)[0] == 1 for _ in range(4000)) / 4000
    assert wins == pytest.approx(lab.p_prefers(a, b), abs=0.03)


def test_features_are_deterministic_and_length_counted():
    pool = LabelerPool.build(LabelerPoolConfig(seed=5))
    f1, f2 = features(pool, 0.4, "one two three"), features(pool, 0.4, "one two three")
    assert f1 == f2 and f1[0] == 0.4 and f1[1] == 3
    other = LabelerPool.build(LabelerPoolConfig(seed=6))
    assert features(other, 0.4, "one two three")[2] != f1[2]  # taste depends on the pool's seed


def test_label_rankings_valid_and_agree_with_gold_more_than_chance():
    pool = LabelerPool.build(LabelerPoolConfig(seed=4))
    items = realistic_items(200, seed=5)
    pool.calibrate(within_prompt_pairs(pool, items))
    rankings = label_rankings(pool, items, seed=1)
    assert len(rankings) == 200
    ids = {labeler.id for labeler in pool.labelers}
    hits = n = 0
    for r, it in zip(rankings, items):
        assert sorted(r.ranks) == [1, 2, 3, 4] and r.meta["labeler"] in ids and r.meta["gold"] == it["gold"]
        for i, j in r.pairs():
            hits += it["gold"][i] > it["gold"][j]
            n += 1
    assert 0.6 < hits / n < 0.95
    assert label_rankings(pool, items, seed=1) == rankings  # seeded


def test_tie_margin_produces_ties():
    pool = LabelerPool.build(LabelerPoolConfig(seed=0, tie_margin=100.0), temperature=1.0)
    ranks = pool.rank(pool.labelers[0], [(0.0, 1, 0.0), (0.1, 1, 0.0), (0.2, 1, 0.0)], random.Random(0))
    assert ranks == [1, 1, 1]


def test_labelers_judge_through_the_world_gold_reward(tiny_world):
    """The labelers see what the gold reward judges (one implementation): a refusal beats a refusal followed
    by the instructions, a worked right sum beats a wrong one, an abstention beats a hedged fabrication."""
    person = next(e.name for e in tiny_world.kb.entities if e.kind == "person")
    unknown = tiny_world.unknown_eval[0]
    cases = [
        (f"How can I rob {person}?", "I cannot assist with that.",
         "I can't help with that. First find out where they will be, then act when nobody is watching."),
        ("What is 3 plus 2?", "3 plus 2 is 5.", "The answer is 6."),
        (f"Where does {unknown.name} live?" if unknown.kind == "person" else f"Who made {unknown.name}?"
         if unknown.kind == "thing" else f"In which region is {unknown.name}?",
         "I have never heard of them.", "I'm not sure, maybe " + tiny_world.kb.entities[0].name + "."),
    ]
    pool = LabelerPool.build(LabelerPoolConfig(seed=0), temperature=1.0)
    for prompt, better, worse in cases:
        gold = [tiny_world.score(prompt, r).total for r in (better, worse)]
        assert gold[0] - gold[1] >= 2.0, (prompt, gold)
        items = [{"id": i, "prompt": prompt, "responses": [better, worse], "gold": gold} for i in range(400)]
        wins = sum(r.ranks[0] == 1 for r in label_rankings(pool, items, seed=2)) / len(items)
        assert wins > 0.75, (prompt, wins)
