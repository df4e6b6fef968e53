"""Trajectories the agent visited, cut into fixed-length clips, and the choice of clip pairs to show a teacher."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rlhf.errors import RLHFError


@dataclass
class Episode:
    features: np.ndarray  # (T, obs + action features): the reward model's inputs
    rewards: np.ndarray  # (T,) the true reward, seen only by the simulated teacher and the evaluation


@dataclass
class ClipPair:
    episode_a: int
    start_a: int
    episode_b: int
    start_b: int


class TrajectoryBuffer:
    """The most recent `capacity` complete episodes."""

    def __init__(self, capacity: int = 200):
        self.episodes: deque[Episode] = deque(maxlen=capacity)
        self.total = 0  # episodes ever added

    def add(self, features: np.ndarray, rewards: np.ndarray) -> None:
        self.episodes.append(Episode(np.asarray(features, np.float32), np.asarray(rewards, np.float64)))
        self.total += 1

    def __len__(self) -> int:
        return len(self.episodes)

    def all_features(self) -> np.ndarray:
        return np.concatenate([e.features for e in self.episodes])

    def clip(self, episode: int, start: int, length: int) -> Episode:
        e = self.episodes[episode]
        return Episode(e.features[start:start + length], e.rewards[start:start + length])

    def sample_pairs(self, n: int, clip_len: int, rng: np.random.Generator) -> list[ClipPair]:
        """n pairs of clips, each from a uniformly chosen episode at a uniformly chosen start."""
        if not self.episodes:
            raise RLHFError("no trajectories collected yet")
        shortest = min(len(e.rewards) for e in self.episodes)
        if clip_len > shortest:
            raise RLHFError(f"clip_len: {clip_len} is longer than the episode ({shortest} steps)")
        pairs = []
        for _ in range(n):
            ea, eb = rng.integers(0, len(self.episodes), size=2)
            sa = rng.integers(0, len(self.episodes[ea].rewards) - clip_len + 1)
            sb = rng.integers(0, len(self.episodes[eb].rewards) - clip_len + 1)
            pairs.append(ClipPair(int(ea), int(sa), int(eb), int(sb)))
        return pairs

    def stack(self, pairs: list[ClipPair], clip_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(pairs, L, features) arrays for the a-clips and the b-clips."""
        xa = np.stack([self.clip(p.episode_a, p.start_a, clip_len).features for p in pairs])
        xb = np.stack([self.clip(p.episode_b, p.start_b, clip_len).features for p in pairs])
        return xa, xb


def select_pairs(buffer: TrajectoryBuffer, n: int, clip_len: int, rng: np.random.Generator, mode: str = "uniform",
                 ensemble=None, oversample: int = 10) -> list[ClipPair]:
    """`uniform`: n random pairs. `disagreement`: the n of n * oversample random pairs on which the ensemble's
    members disagree most about which clip is better (std of P(a > b))."""
    if mode == "uniform" or ensemble is None:
        return buffer.sample_pairs(n, clip_len, rng)
    candidates = buffer.sample_pairs(n * oversample, clip_len, rng)
    xa, xb = buffer.stack(candidates, clip_len)
    top = np.argsort(-ensemble.disagreement(xa, xb), kind="stable")[:n]
    return [candidates[i] for i in top]


def label_schedule(budget: int, rounds: int, initial_frac: float, decay: float) -> list[int]:
    """Labels asked before training (index 0) and after each of `rounds` training rounds: a share
    `initial_frac` first, the rest in proportion to 1 / (1 + decay * k) (fewer as training goes on).
    Sums to exactly `budget` (largest remainders); with no later rounds, all of it comes first."""
    if rounds == 0:
        return [budget]
    first = int(round(budget * initial_frac))
    weights = np.array([1 / (1 + decay * k) for k in range(rounds)], np.float64)
    raw = (budget - first) * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[:budget - first - counts.sum()]:
        counts[i] += 1
    return [first] + counts.tolist()
