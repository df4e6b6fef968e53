"""The agent's RL algorithm comes from stable-baselines3 (PPO or SAC); this file only builds it and the
vectorized, fixed-length environments it trains on, and wraps them so the agent sees the learned reward."""
from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

from rlhf.control.clips import TrajectoryBuffer
from rlhf.control.envs import action_features, make_env, policy_return
from rlhf.errors import RLHFError


@dataclass
class AgentConfig:
    algo: str = "ppo"  # ppo | sac (stable-baselines3)
    timesteps: int = 200_000  # agent steps (the true-reward baseline gets the same)
    n_envs: int = 8
    learning_rate: float = 3e-4
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh | relu
    gamma: float = 0.99
    batch_size: int = 64
    # PPO
    n_steps: int = 256  # per environment, per rollout
    n_epochs: int = 10
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    clip_range: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    use_sde: bool = False
    sde_sample_freq: int = -1
    # SAC
    buffer_size: int = 100_000
    learning_starts: int = 1000
    tau: float = 0.005
    train_freq: int = 1
    gradient_steps: int = 1

    def check(self, action_space: gym.Space) -> None:
        if self.algo not in ("ppo", "sac"):
            raise RLHFError(f"agent.algo: expected 'ppo' or 'sac', got '{self.algo}'")
        if self.algo == "sac" and not isinstance(action_space, gym.spaces.Box):
            raise RLHFError("agent.algo: 'sac' needs a continuous action space; use 'ppo' for this environment")
        if self.timesteps < 1 or self.n_envs < 1:
            raise RLHFError(f"agent.timesteps and agent.n_envs must be >= 1, got {self.timesteps}, {self.n_envs}")
        if self.activation not in ("tanh", "relu"):
            raise RLHFError(f"agent.activation: expected 'tanh' or 'relu', got '{self.activation}'")


def make_venv(env: str, episode_len: int, n_envs: int, seed: int) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: make_env(env, episode_len) for _ in range(n_envs)])
    venv.seed(seed)
    return venv


def make_agent(cfg: AgentConfig, venv, seed: int):
    import torch
    from stable_baselines3 import PPO, SAC

    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.activation]
    if cfg.algo == "ppo":
        return PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, learning_rate=cfg.learning_rate,
                   n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, gamma=cfg.gamma,
                   gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef, clip_range=cfg.clip_range, vf_coef=cfg.vf_coef,
                   max_grad_norm=cfg.max_grad_norm, use_sde=cfg.use_sde, sde_sample_freq=cfg.sde_sample_freq,
                   policy_kwargs=dict(net_arch=dict(pi=list(cfg.net_arch), vf=list(cfg.net_arch)), activation_fn=act))
    return SAC("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, learning_rate=cfg.learning_rate,
               buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts, batch_size=cfg.batch_size,
               tau=cfg.tau, gamma=cfg.gamma, train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps,
               use_sde=cfg.use_sde, policy_kwargs=dict(net_arch=list(cfg.net_arch), activation_fn=act))


def _flat(obs: np.ndarray) -> np.ndarray:
    return np.asarray(obs, np.float32).reshape(len(obs), -1)


class LearnedRewardVecEnv(VecEnvWrapper):
    """SB3 VecEnv wrapper: replaces the reward with `reward_fn(features)` (the normalized ensemble mean) and
    records every finished episode (reward-model features and true rewards) into `buffer`."""

    def __init__(self, venv, buffer: TrajectoryBuffer, reward_fn=None):
        super().__init__(venv)
        self.buffer, self.reward_fn = buffer, reward_fn
        self.true_returns: list[float] = []  # per finished episode
        self._reset_tracks()

    def _reset_tracks(self) -> None:
        self._feats = [[] for _ in range(self.num_envs)]
        self._true = [[] for _ in range(self.num_envs)]

    def reset(self):
        obs = self.venv.reset()
        self._last_obs = obs
        self._reset_tracks()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, _, dones, infos = self.venv.step_wait()
        x = np.concatenate([_flat(self._last_obs), action_features(self.action_space, self._actions)], 1)
        for i in range(self.num_envs):
            self._feats[i].append(x[i])
            self._true[i].append(infos[i]["true_reward"])
            if dones[i]:
                self.buffer.add(np.stack(self._feats[i]), np.asarray(self._true[i]))
                self.true_returns.append(float(np.sum(self._true[i])))
                self._feats[i], self._true[i] = [], []
        rewards = self.reward_fn(x) if self.reward_fn is not None else np.zeros(self.num_envs)
        self._last_obs = obs
        return obs, rewards.astype(np.float32), dones, infos


def relabel_replay(model, reward_fn) -> None:
    """SAC keeps old rewards in its replay buffer; after the reward model changes they are recomputed
    (PEBBLE, Lee et al. 2021). SAC stores Box actions already scaled to [-1, 1], as the reward model sees them."""
    rb = getattr(model, "replay_buffer", None)
    if rb is None:
        return
    upto = rb.buffer_size if rb.full else rb.pos
    if upto == 0:
        return
    obs = rb.observations[:upto].reshape(upto * rb.n_envs, -1).astype(np.float32)
    acts = rb.actions[:upto].reshape(upto * rb.n_envs, -1).astype(np.float32)
    if isinstance(model.action_space, gym.spaces.Discrete):
        acts = action_features(model.action_space, acts)
    r = reward_fn(np.concatenate([obs, acts], 1))
    rb.rewards[:upto] = r.reshape(upto, rb.n_envs)


def evaluate(model, env: str, episode_len: int, episodes: int, seed: int) -> float:
    """Mean true return of the deterministic policy over `episodes` fixed-length episodes."""
    return policy_return(env, episode_len, lambda obs: model.predict(obs, deterministic=True)[0], episodes, seed)


class ProgressCallback(BaseCallback):
    def __init__(self, bar, every: int = 2048):
        super().__init__()
        self.bar, self.every, self.pending = bar, every, 0

    def _on_step(self) -> bool:
        self.pending += self.training_env.num_envs
        if self.pending >= self.every:
            self.bar.advance(self.pending)
            self.pending = 0
        return True

    def _on_training_end(self) -> None:
        if self.pending:
            self.bar.advance(self.pending)
            self.pending = 0
