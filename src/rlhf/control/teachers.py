"""Simulated teachers that compare two clips from the environment's true reward: the B-Pref family
(Lee et al. 2021): oracle, stochastic (Bradley-Terry with a temperature), myopic, mistaken, skipping, and
"equally preferable" answers, alone or combined.

Order of one answer (as in B-Pref): skip when neither clip is worth a look; returns discounted toward the clip's
end (myopia); "equal" when the returns are within the margin; a Bradley-Terry draw (temperature > 0) or the exact
comparison (temperature 0); finally a flip with the mistake probability. The Bradley-Terry draw is the one the
language track's simulated labelers use (`rlhf.feedback.labelers.Labeler.p_prefers`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlhf.errors import RLHFError
from rlhf.feedback.labelers import Labeler

SKIP = None  # the answer "can't tell": no label, but the query was spent


@dataclass
class TeacherConfig:
    temperature: float = 0.0  # Bradley-Terry temperature on clip returns; 0 = always the higher return
    myopia: float = 1.0  # gamma: step t of an L-step clip weighs gamma^(L-1-t) (1 = not myopic)
    mistake: float = 0.0  # probability of flipping the answer
    skip_below: float | None = None  # skip when both clips' mean reward per step is below this
    equal_margin: float = 0.0  # answer "equal" (0.5) when the mean reward per step differs by less than this
    seed: int = 0

    def check(self) -> None:
        if self.temperature < 0:
            raise RLHFError(f"teacher.temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.myopia <= 1:
            raise RLHFError(f"teacher.myopia: must be in (0, 1], got {self.myopia}")
        if not 0 <= self.mistake <= 1:
            raise RLHFError(f"teacher.mistake: must be in [0, 1], got {self.mistake}")
        if self.equal_margin < 0:
            raise RLHFError(f"teacher.equal_margin: must be >= 0, got {self.equal_margin}")


class SimulatedTeacher:
    def __init__(self, config: TeacherConfig):
        config.check()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.asked = self.skipped = self.equal = 0

    def _value(self, rewards: np.ndarray) -> float:
        g = self.config.myopia
        weights = g ** np.arange(len(rewards) - 1, -1, -1, dtype=np.float64)
        return float(np.dot(weights, rewards))

    def compare(self, rewards_a: np.ndarray, rewards_b: np.ndarray) -> float | None:
        """P(a is better) as the teacher answers it: 1.0, 0.0, 0.5 (equally preferable) or SKIP."""
        c = self.config
        self.asked += 1
        ra, rb = np.asarray(rewards_a, np.float64), np.asarray(rewards_b, np.float64)
        length = len(ra)
        if c.skip_below is not None and max(ra.mean(), rb.mean()) < c.skip_below:
            self.skipped += 1
            return SKIP
        va, vb = self._value(ra), self._value(rb)
        if abs(va - vb) <= c.equal_margin * length and (c.equal_margin > 0 or va == vb):
            self.equal += 1
            return 0.5
        if c.temperature > 0:
            p = Labeler(0, c.temperature, 0.0).p_prefers((va, 0, 0.0), (vb, 0, 0.0))
            answer = 1.0 if self.rng.random() < p else 0.0
        else:
            answer = 1.0 if va > vb else 0.0
        if c.mistake > 0 and self.rng.random() < c.mistake:
            answer = 1.0 - answer
        return answer

    def stats(self) -> dict:
        return {"asked": self.asked, "skipped": self.skipped, "equal": self.equal}
