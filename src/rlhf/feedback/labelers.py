"""Simulated labelers: comparisons and Likert ratings drawn from the world's gold reward.

Each labeler sees utility u = gold + length_bias * words + taste and prefers response i over j with
Bradley-Terry probability sigmoid((u_i - u_j) / temperature). `taste` is a quality all labelers share
but the gold reward does not see (a seeded function of the response text), which is why people agree
on pairs the gold reward calls a tie. A pool draws each labeler's temperature
and length bias around shared means; `calibrate` sets the shared temperature so that two different
labelers agree on a pair as often as the target (InstructGPT reports about 73%).

`gold` is the world's gold reward (`rlhf.world.gold.score`, via `World.score` in `label simulate`): the one
judgement of what a response finally asserts, which the demonstrator's lapses and every evaluation share.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

from rlhf.data.comparisons import Ranking


@dataclass
class LabelerPoolConfig:
    n_labelers: int = 10
    target_agreement: float = 0.73
    temperature: float | None = None  # None: calibrated to target_agreement on the data being labeled
    temperature_spread: float = 0.3  # lognormal sd of each labeler's temperature around the pool's
    length_bias: float = 0.02  # mean extra utility per word (labelers like longer answers a little)
    length_bias_spread: float = 0.02
    shared_taste: float = 0.2  # sd of the response-level quality every labeler sees and the gold reward does not
    tie_margin: float = 0.0  # utilities closer than this (after noise) are ranked as ties
    seed: int = 0


@dataclass
class Labeler:
    id: int
    temperature: float
    length_bias: float

    def utility(self, gold: float, words: int, taste: float = 0.0) -> float:
        return gold + self.length_bias * words + taste

    def p_prefers(self, a: tuple, b: tuple) -> float:
        """P(this labeler prefers a over b); a and b are (gold, words, taste) features."""
        x = (self.utility(*a) - self.utility(*b)) / self.temperature
        return 1 / (1 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass
class LabelerPool:
    config: LabelerPoolConfig
    labelers: list[Labeler] = field(default_factory=list)
    temperature: float = 1.0

    @classmethod
    def build(cls, config: LabelerPoolConfig, temperature: float = 1.0) -> "LabelerPool":
        rng = random.Random(config.seed)
        pool = cls(config, temperature=temperature)
        for i in range(config.n_labelers):
            jitter = math.exp(rng.gauss(0, config.temperature_spread))
            bias = rng.gauss(config.length_bias, config.length_bias_spread)
            pool.labelers.append(Labeler(i, jitter, bias))
        return pool

    def _scaled(self, labeler: Labeler) -> Labeler:
        return Labeler(labeler.id, labeler.temperature * self.temperature, labeler.length_bias)

    def expected_agreement(self, pairs: list[tuple[tuple, tuple]]) -> float:
        """Mean over pairs and over ordered pairs of distinct labelers of P(both choose the same)."""
        ls = [self._scaled(labeler) for labeler in self.labelers]
        total, n = 0.0, 0
        for a, b in pairs:
            ps = [labeler.p_prefers(a, b) for labeler in ls]
            s, s2 = sum(ps), sum(p * p for p in ps)
            m = len(ps)
            # sum over i != j of p_i p_j + (1-p_i)(1-p_j)
            same = (s * s - s2) + ((m - s) ** 2 - (m - 2 * s + s2))
            total += same / (m * (m - 1))
            n += 1
        return total / max(1, n)

    def calibrate(self, pairs: list[tuple[tuple, tuple]]) -> float:
        """Bisection on the pool temperature (agreement falls as temperature rises)."""
        lo, hi = 1e-3, 100.0
        for _ in range(40):  # the bracket shrinks to a ratio of 1 + 1e-11: far finer than needed
            mid = math.sqrt(lo * hi)
            self.temperature = mid
            if self.expected_agreement(pairs) > self.config.target_agreement:
                lo = mid
            else:
                hi = mid
        self.temperature = math.sqrt(lo * hi)
        return self.temperature

    def compare(self, labeler: Labeler, a: tuple, b: tuple, rng: random.Random) -> bool:
        """True when `labeler` picks a over b."""
        return rng.random() < self._scaled(labeler).p_prefers(a, b)

    def rank(self, labeler: Labeler, items: list[tuple], rng: random.Random) -> list[int]:
        """Ranks (1 = best) by Plackett-Luce: utilities / temperature plus Gumbel noise, sorted.
        Its pairwise marginals are exactly Bradley-Terry for K = 2."""
        lab = self._scaled(labeler)
        noisy = [lab.utility(*it) / lab.temperature - math.log(-math.log(rng.random() or 1e-12)) for it in items]
        order = sorted(range(len(items)), key=lambda i: -noisy[i])
        ranks = [0] * len(items)
        rank, prev = 0, None
        for pos, i in enumerate(order):
            if prev is None or prev - noisy[i] > self.config.tie_margin / lab.temperature:
                rank = pos + 1
            ranks[i] = rank
            prev = noisy[i]
        return ranks


def features(pool: LabelerPool, gold: float, response: str) -> tuple[float, int, float]:
    """(gold, words, taste): what a labeler's judgement of one response depends on."""
    seed = int.from_bytes(hashlib.sha256(f"{pool.config.seed}:{response}".encode()).digest()[:8], "little")
    return gold, len(response.split()), random.Random(seed).gauss(0, pool.config.shared_taste)


def label_rankings(pool: LabelerPool, items: list[dict], seed: int = 0) -> list[Ranking]:
    """items: [{"prompt", "responses", "gold": [..], "id"}] -> one Ranking per item from a random labeler;
    meta records who labeled it and the gold scores."""
    rng = random.Random(seed)
    out = []
    for it in items:
        labeler = rng.choice(pool.labelers)
        feats = [features(pool, g, r) for g, r in zip(it["gold"], it["responses"])]
        ranks = pool.rank(labeler, feats, rng)
        prompt = it["prompt"] if isinstance(it["prompt"], list) else [{"role": "user", "content": it["prompt"]}]
        out.append(Ranking(tuple(prompt), tuple(it["responses"]), tuple(ranks), it.get("id"),
                           {"labeler": labeler.id, "gold": list(it["gold"])}))
    return out
