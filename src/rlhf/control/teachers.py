"""Simulated teachers that compare two clips from the environment's true reward: the B-Pref family
(Lee et al. 2021): oracle, stochastic (Bradley-Terry with a temperature), myopic, mistaken, skipping, and
"equally preferable" answers, alone or combined. And the scalar-feedback trainer of Deep TAMER / COACH
(`ScalarTeacher`): +1 / -1 on the agent's recent actions, given on a share of the steps, with mistakes, and late.

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
        if flipped(self.rng, c.mistake):
            answer = 1.0 - answer
        return answer

    def compare_all(self, clips: list) -> list:
        """[(clip a, clip b)] -> answers, one `compare` of their true rewards each (PeopleTeacher's interface)."""
        return [self.compare(a.rewards, b.rewards) for a, b in clips]

    def stats(self) -> dict:
        return {"asked": self.asked, "skipped": self.skipped, "equal": self.equal}


def flipped(rng: np.random.Generator, mistake: float) -> bool:
    """The mistake model both teachers share: the answer is reversed with probability `mistake`."""
    return mistake > 0 and rng.random() < mistake


@dataclass
class ScalarTeacherConfig:
    """A simulated trainer who watches the agent and presses +1 ("good") or -1 ("bad") about the action it just
    saw: +1 when it is the expert's action there. People press on some steps only, sometimes press the wrong key,
    and press late: the feedback about step t arrives at step t + d, d uniform in [delay_min, delay_max]."""
    rate: float = 1.0  # share of the agent's steps that get feedback
    mistake: float = 0.0  # probability the sign is reversed
    delay_min: int = 0  # steps
    delay_max: int = 0
    seed: int = 0

    def check(self) -> None:
        if not 0 < self.rate <= 1:
            raise RLHFError(f"trainer.rate: must be in (0, 1], got {self.rate}")
        if not 0 <= self.mistake <= 1:
            raise RLHFError(f"trainer.mistake: must be in [0, 1], got {self.mistake}")
        if not 0 <= self.delay_min <= self.delay_max:
            raise RLHFError("trainer.delay_min/delay_max: need 0 <= min <= max, "
                            f"got {self.delay_min}, {self.delay_max}")


class ScalarTeacher:
    def __init__(self, config: ScalarTeacherConfig):
        config.check()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.pending: list[tuple[int, float]] = []  # (arrival step, feedback)
        self.given = self.wrong = 0

    def watch(self, t: int, action, expert_action) -> None:
        """The trainer sees the agent take `action` at step t; maybe schedules feedback about it."""
        c = self.config
        if self.rng.random() >= c.rate:
            return
        good = bool(np.all(np.asarray(action) == np.asarray(expert_action)))
        if flipped(self.rng, c.mistake):
            good = not good
            self.wrong += 1
        delay = int(self.rng.integers(c.delay_min, c.delay_max + 1))
        self.pending.append((t + delay, 1.0 if good else -1.0))
        self.given += 1

    def arrivals(self, t: int) -> list[float]:
        """Feedback that arrives at step t (and any overdue), in order; removed from the pending list."""
        due = [f for when, f in self.pending if when <= t]
        self.pending = [(when, f) for when, f in self.pending if when > t]
        return due

    def reset(self) -> None:
        """A new episode: feedback still in flight about the old one is dropped."""
        self.pending = []
