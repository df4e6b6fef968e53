"""Reward-model ensemble for preferences over clips (Christiano et al. 2017, section 2.2.3).

Each member is a small MLP r(o, a). A clip's predicted return is the sum of r over its steps, and
P(a > b) = 0.1 * 0.5 + 0.9 * sigmoid(R_a - R_b): the teacher is assumed to answer at random 10% of the time.
Labels are 1 (a better), 0 (b better) or 0.5 (equally preferable); the loss is the cross-entropy against them.
Each member trains on its own bootstrap resample of the labels. With the tanh output each step's reward is
bounded, so a clip pair decided by the teacher pulls the steps that decided it to opposite ends of [-1, 1]
(PEBBLE, Lee et al. 2021) instead of leaving a small margin inside the spread of the undecided steps.
The agent sees the ensemble's mean, normalized to zero mean and unit standard deviation over recently visited steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class RewardModelConfig:
    members: int = 3
    hidden: int = 64
    layers: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32  # clip pairs per step
    epochs: int = 20  # passes over the labels after each labeling round
    random_answer: float = 0.1  # probability the teacher answers at random (ties the output to [0.05, 0.95])
    l2_reward: float = 0.0  # penalty on the mean squared per-step reward: steps no decided label constrains drift to 0
    output: str = "linear"  # linear | tanh: per-step reward in [-1, 1] (PEBBLE, B-Pref)
    pessimism: float = 0.0  # the agent's reward is mean - pessimism * std over members (before normalization)
    normalize_inputs: bool = True  # standardize inputs by the first episodes' mean and std


def preference_loss(returns_a: torch.Tensor, returns_b: torch.Tensor, labels: torch.Tensor,
                    random_answer: float = 0.1) -> torch.Tensor:
    """Mean Bradley-Terry cross-entropy; labels in {0, 0.5, 1} are P(a is better)."""
    p = random_answer * 0.5 + (1 - random_answer) * torch.sigmoid(returns_a - returns_b)
    return -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()


def _mlp(inp: int, hidden: int, layers: int, output: str) -> nn.Module:
    mods, width = [], inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LeakyReLU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    if output == "tanh":
        mods.append(nn.Tanh())
    return nn.Sequential(*mods)


class RewardEnsemble:
    def __init__(self, obs_dim: int, act_dim: int, config: RewardModelConfig, seed: int = 0):
        self.config = config
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.members = [_mlp(obs_dim + act_dim, config.hidden, config.layers,
                             config.output) for _ in range(config.members)]
        self.opts = [torch.optim.Adam(m.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                     for m in self.members]
        self.in_mean = np.zeros(obs_dim + act_dim, np.float32)
        self.in_std = np.ones(obs_dim + act_dim, np.float32)
        self.out_mean, self.out_std = 0.0, 1.0

    def set_input_stats(self, x: np.ndarray) -> None:
        if not self.config.normalize_inputs:
            return
        self.in_mean = x.mean(0).astype(np.float32)
        self.in_std = (x.std(0) + 1e-3).astype(np.float32)

    def _inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.clip((x - self.in_mean) / self.in_std, -10, 10), dtype=torch.float32)

    @torch.no_grad()
    def member_rewards(self, x: np.ndarray) -> np.ndarray:
        """(members, N) raw per-step rewards for inputs x of shape (N, obs+act)."""
        t = self._inputs(x)
        return np.stack([m(t).squeeze(-1).numpy() for m in self.members])

    def _combined(self, x: np.ndarray) -> np.ndarray:
        r = self.member_rewards(x)
        return r.mean(0) - self.config.pessimism * r.std(0) if self.config.pessimism else r.mean(0)

    def reward(self, x: np.ndarray) -> np.ndarray:
        """The agent's reward: ensemble mean (less `pessimism` times the members' spread), normalized."""
        return (self._combined(x) - self.out_mean) / self.out_std

    def set_output_stats(self, x: np.ndarray) -> None:
        r = self._combined(x)
        self.out_mean, self.out_std = float(r.mean()), float(r.std() + 1e-8)

    def disagreement(self, clips_a: np.ndarray, clips_b: np.ndarray) -> np.ndarray:
        """Std over members of P(a > b) for pairs of clips shaped (pairs, L, features)."""
        n, length, f = clips_a.shape
        ra = self.member_rewards(clips_a.reshape(-1, f)).reshape(-1, n, length).sum(-1)
        rb = self.member_rewards(clips_b.reshape(-1, f)).reshape(-1, n, length).sum(-1)
        return (1 / (1 + np.exp(-np.clip(ra - rb, -50, 50)))).std(0)

    def fit(self, clips_a: np.ndarray, clips_b: np.ndarray, labels: np.ndarray) -> dict:
        """Train every member on its own bootstrap of the labeled pairs; returns loss and accuracy on all pairs."""
        c = self.config
        n = len(labels)
        xa, xb = self._inputs(clips_a), self._inputs(clips_b)
        y = torch.as_tensor(labels, dtype=torch.float32)
        for member, opt in zip(self.members, self.opts):
            idx = self.rng.integers(0, n, size=n)
            for _ in range(c.epochs):
                perm = self.rng.permutation(idx)
                for s in range(0, n, c.batch_size):
                    b = torch.as_tensor(perm[s:s + c.batch_size])
                    step_a, step_b = member(xa[b]).squeeze(-1), member(xb[b]).squeeze(-1)
                    loss = preference_loss(step_a.sum(-1), step_b.sum(-1), y[b], c.random_answer)
                    if c.l2_reward:
                        loss = loss + c.l2_reward * 0.5 * (step_a.pow(2).mean() + step_b.pow(2).mean())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            ra = torch.stack([m(xa).squeeze(-1).sum(-1) for m in self.members]).mean(0)
            rb = torch.stack([m(xb).squeeze(-1).sum(-1) for m in self.members]).mean(0)
            loss = float(preference_loss(ra, rb, y, c.random_answer))
            decided = y != 0.5
            acc = float(((ra > rb).float() == y)[decided].float().mean()) if bool(decided.any()) else float("nan")
        return {"rm_loss": loss, "rm_acc": acc}
