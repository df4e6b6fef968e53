"""Experts and demonstrations (Ibarz et al. 2018): a hand-written expert controller per task, expert episodes, and
behavioural cloning, used three ways: DAgger's expert relabels the learner's states (`dagger.py`), the scalar-
feedback trainer judges the agent's actions by the expert's (`scalar.py`), and `rlhf control` can pretrain the
agent's policy by cloning demonstrations and the reward model from demonstration-vs-agent comparisons (`pbrl.py`).

The experts are linear state-feedback controllers, clearly experts: the CartPole one keeps the pole up and the cart
on the track for all 500 steps of every fixed-length episode tried, and still averages about 490 with a fifth of its
actions replaced at random; the Pendulum one swings up by energy shaping and balances with a PD law (return -0 to
-240 over 200 steps, mean about -120 on 8 starts; PPO on the true reward reaches -118 to -189 here).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rlhf.control.envs import make_env, resolve
from rlhf.errors import RLHFError

# CartPole: push right when k . (x, x_dot, theta, theta_dot) > 0 (an LQR-like gain, chosen by trying a few)
CARTPOLE_GAIN = np.array([0.5, 1.0, 10.0, 3.0])


def _cartpole(obs: np.ndarray) -> int:
    return int(np.dot(CARTPOLE_GAIN, np.asarray(obs, np.float64).reshape(-1)[:4]) > 0)


def _pendulum(obs: np.ndarray) -> np.ndarray:
    # theta'' = 15 sin(theta) + 3 u (g = 10, m = l = 1), so E = theta'^2 / 2 + 15 cos(theta) is 15 upright at rest
    cos, sin, vel = np.asarray(obs, np.float64).reshape(-1)[:3]
    if cos > 0.95:  # near the top (3 u can beat 15 sin(theta) there): PD balance
        u = -(10.0 * np.arctan2(sin, cos) + 2.0 * vel)
    else:  # energy shaping: pump energy in (or out) along the swing until E = 15
        u = (15.0 - (0.5 * vel ** 2 + 15.0 * cos)) * np.sign(vel if abs(vel) > 1e-3 else 1.0)
    return np.array([np.clip(u, -2.0, 2.0)], np.float32)


EXPERTS: dict[str, Callable[[np.ndarray], object]] = {"CartPole": _cartpole, "Pendulum": _pendulum}


def expert_for(env: str) -> Callable[[np.ndarray], object]:
    """The hand-written expert for `env`; an environment without one is one line naming those that have one."""
    name, _ = resolve(env)
    if name not in EXPERTS:
        raise RLHFError(f"env: no expert controller for '{name}'; experts exist for {', '.join(EXPERTS)}")
    return EXPERTS[name]


def check_expert_task(env: str, episode_len: int, seeds: list[int], continuous: str) -> None:
    """What DAgger and TAMER / COACH need of their task: a hand-written expert, a valid episode length (make_env
    checks it) and discrete actions; `continuous` is the error for a continuous action space ({name} filled in)."""
    import gymnasium as gym

    name, _ = resolve(env)
    expert_for(name)
    probe = make_env(name, episode_len)
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    probe.close()
    if not discrete:
        raise RLHFError("env: " + continuous.format(name=name))
    if not seeds:
        raise RLHFError("seeds: give at least one seed")


def rollout(env: str, episode_len: int, act: Callable[[np.ndarray], object], episodes: int, seed: int):
    """Run `act` for `episodes` fixed-length episodes.

    Returns (observations (N, obs), actions (N, ...), returns per episode)."""
    e = make_env(env, episode_len)
    obs_list, act_list, returns = [], [], []
    for i in range(episodes):
        obs, _ = e.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            a = act(obs)
            obs_list.append(np.asarray(obs, np.float32))
            act_list.append(a)
            obs, r, term, trunc, _ = e.step(a)
            total += r
            done = term or trunc
        returns.append(total)
    e.close()
    return np.stack(obs_list), np.asarray(act_list), returns


def behaviour_clone(log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], parameters, obs: np.ndarray,
                    actions: np.ndarray, epochs: int, lr: float = 1e-3, batch_size: int = 64,
                    rng: np.random.Generator | None = None) -> float:
    """Maximize log pi(expert action | state) over (obs, actions) for `epochs` passes; returns the last epoch's
    mean negative log-likelihood. `log_prob(obs, actions)` is any policy's (an MLP's, an SB3 policy's)."""
    if len(obs) == 0:
        raise RLHFError("behaviour cloning: no demonstration steps to clone")
    rng = rng or np.random.default_rng(0)
    opt = torch.optim.Adam(list(parameters), lr=lr)
    x = torch.as_tensor(np.asarray(obs, np.float32))
    y = torch.as_tensor(np.asarray(actions))
    last = float("nan")
    for _ in range(epochs):
        perm = torch.as_tensor(rng.permutation(len(x)))
        total, n = 0.0, 0
        for s in range(0, len(x), batch_size):
            b = perm[s:s + batch_size]
            loss = -log_prob(x[b], y[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(b), n + len(b)
        last = total / n
    return last


def clone_into_sb3(model, obs: np.ndarray, actions: np.ndarray, epochs: int, lr: float = 1e-3,
                   seed: int = 0) -> float:
    """Pretrain a stable-baselines3 policy's actor by behavioural cloning on demonstrations (Ibarz et al. 2018)."""
    policy = model.policy

    def log_prob(x, a):
        return policy.get_distribution(x).log_prob(a.float() if a.dtype.is_floating_point else a)

    policy.set_training_mode(True)
    nll = behaviour_clone(log_prob, policy.parameters(), obs, actions, epochs, lr, rng=np.random.default_rng(seed))
    policy.set_training_mode(False)
    return nll
