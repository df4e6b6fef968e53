"""Control environments through gymnasium, at a fixed episode length.

Termination is a reward channel: an agent rewarded +1 per step that may end its episode learns from the episode's
length what the reward never said (Christiano et al. 2017, appendix A; the `seals` package). Every episode here
runs exactly `episode_len` steps; what the original environment would have ended on is scored by the reward
instead (CartPole: 1 while the pole is up and the cart on the track, else 0; Acrobot: -1 per step below the line,
0 above it; MountainCarContinuous: +100 for each step at the goal, less the action cost).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlhf.errors import RLHFError


@dataclass(frozen=True)
class EnvSpec:
    gym_id: str
    episode_len: int  # default fixed horizon
    kwargs: tuple = ()  # extra gym.make keyword arguments, as (key, value) pairs
    absorb: bool = False  # default for make_env's `absorb` (what happens after the original env would have ended)


ENVS: dict[str, EnvSpec] = {
    "CartPole": EnvSpec("CartPole-v1", 500, absorb=True),
    "Pendulum": EnvSpec("Pendulum-v1", 200),
    "MountainCarContinuous": EnvSpec("MountainCarContinuous-v0", 999),
    "Acrobot": EnvSpec("Acrobot-v1", 500),
    "Highway": EnvSpec("rlhf/HighwaySafety-v0", 30),  # highway-fast-v0 with a safety teacher (highway.py)
    # MuJoCo locomotion (the `mujoco` package): Hopper never ends when it falls, so the episode length says nothing
    # about the reward (Christiano et al. 2017 removed such terminations too); HalfCheetah never terminates
    "Hopper": EnvSpec("Hopper-v5", 1000, kwargs=(("terminate_when_unhealthy", False),)),
    "HalfCheetah": EnvSpec("HalfCheetah-v5", 1000),
}
_ALIASES = {spec.gym_id: name for name, spec in ENVS.items()}


def resolve(env: str) -> tuple[str, EnvSpec]:
    """Short name or gymnasium id -> (short name, spec); an unknown id is one line naming the known ones."""
    name = _ALIASES.get(env, env)
    if name not in ENVS:
        known = list(ENVS) + list(_ALIASES)
        close = difflib.get_close_matches(env, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RLHFError(f"env: unknown environment id '{env}'{hint}; known: {', '.join(ENVS)}")
    return name, ENVS[name]


class FixedLength(gym.Wrapper):
    """Never terminates; truncates after exactly `episode_len` steps. `info["true_reward"]` is the env's reward
    under the fixed-length rule, so the learned-reward wrapper above this one can still report it.

    `absorb`: once the original environment would have ended, the episode stays in that end state (an absorbing
    state: the same observation, the same reward, every remaining step) instead of simulating on, and the
    observation gets one more entry, 1.0 in the absorbing state and 0.0 before it (the absorbing-state indicator
    of Kostrikov et al. 2019). CartPole needs both: simulated on, a fallen pole swings below the cart and the cart
    runs off with ever larger position and speed, states no label ever scores, where the learned reward
    extrapolates and the agent exploits it (seed 1 of the first CartPole runs fell at once, every episode); frozen
    without the indicator, the end state (pole just past 12 degrees) looks to the reward model like the upright
    states next to it. The indicator says where the episode is, not what it is worth: the reward model learns that
    from the teacher like anything else. The episode still runs its full length, so its length still says
    nothing; the return is the number of steps before the first fall, as in CartPole-v1."""

    def __init__(self, env: gym.Env, episode_len: int, name: str, absorb: bool = False):
        super().__init__(env)
        self.episode_len, self.name, self.t, self.absorb = episode_len, name, 0, absorb
        self._end = None  # (obs, reward, info) of the absorbing state
        if absorb:
            box = env.observation_space
            self.observation_space = gym.spaces.Box(np.append(box.low, 0.0).astype(box.dtype),
                                                    np.append(box.high, 1.0).astype(box.dtype), dtype=box.dtype)

    def _flag(self, obs, ended: bool):
        return np.append(obs, np.float32(ended)).astype(self.observation_space.dtype) if self.absorb else obs

    def reset(self, **kwargs):
        self.t, self._end = 0, None
        obs, info = self.env.reset(**kwargs)
        return self._flag(obs, False), info

    def step(self, action):
        if self._end is not None:
            self.t += 1
            obs, reward, info = self._end
            return obs.copy(), reward, False, self.t >= self.episode_len, dict(info)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.name == "CartPole":
            # gymnasium's CartPole warns and pays 0 after its terminal step; it recomputes `terminated` from the
            # state every step, so "out of bounds" is known here without the warning machinery.
            self.env.unwrapped.steps_beyond_terminated = None
            reward = 0.0 if terminated else 1.0
        # the teacher's signal; an environment may give the teacher its own (highway.py: a safety score)
        info = dict(info, true_reward=float(info.get("teacher_reward", reward)), ended=bool(terminated))
        obs = self._flag(obs, terminated)
        if self.absorb and terminated:
            self._end = (np.array(obs, copy=True), float(reward), info)
        return obs, float(reward), False, self.t >= self.episode_len, info


def make_env(env: str, episode_len: int = 0, seed: int | None = None, render: bool = False,
             absorb: bool | None = None) -> gym.Env:
    """One fixed-length environment. episode_len 0 = the environment's default horizon; absorb None = the
    environment's default (see FixedLength)."""
    name, spec = resolve(env)
    length = episode_len or spec.episode_len
    if length < 1:
        raise RLHFError(f"episode_len: must be >= 1, got {episode_len}")
    kwargs = dict(spec.kwargs)
    if render:
        kwargs["render_mode"] = "rgb_array"
    if name == "Highway" and spec.gym_id not in gym.registry:  # by name: highway.py imports this module
        gym.register(spec.gym_id, entry_point="rlhf.control.highway:make_highway_env")
    # TimeLimit from gym.make would truncate at the registered horizon; ours replaces it.
    try:
        e = gym.make(spec.gym_id, max_episode_steps=10**9, disable_env_checker=True, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        raise RLHFError(f"env: {name} needs a package that is not installed ({exc}); "
                        f"pip install -e '.[control]'") from None
    e = FixedLength(e, length, name, spec.absorb if absorb is None else absorb)
    if seed is not None:
        e.reset(seed=seed)
        e.action_space.seed(seed)
    return e


def episode_len_of(env: str, episode_len: int = 0) -> int:
    return episode_len or resolve(env)[1].episode_len


def policy_return(env: str, episode_len: int, act, episodes: int, seed: int) -> float:
    """Mean true return of `act(obs) -> action` over `episodes` fixed-length episodes (reset seeds seed + i).
    True = what the teacher judges by, `info["true_reward"]`: the environment's reward, except where the
    environment gives the teacher its own score (Highway: the safety score, not highway-env's reward)."""
    e = make_env(env, episode_len)
    total = 0.0
    for i in range(episodes):
        obs, _ = e.reset(seed=seed + i)
        done = False
        while not done:
            obs, _, term, trunc, info = e.step(act(obs))
            total += info["true_reward"]
            done = term or trunc
    e.close()
    return total / episodes


def random_return(env: str, episode_len: int, episodes: int, seed: int) -> float:
    """Mean true return of uniform random actions (the floor of the normalized score)."""
    probe = make_env(env, episode_len)
    space = probe.action_space
    probe.close()
    space.seed(seed)
    return policy_return(env, episode_len, lambda obs: space.sample(), episodes, seed)


def action_features(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """Actions as reward-model inputs: one-hot for Discrete, scaled to [-1, 1] for Box."""
    actions = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(space.n, dtype=np.float32)[actions.astype(int).reshape(-1)]
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    a = actions.reshape(len(actions), -1).astype(np.float32)
    return np.clip(2 * (a - low) / (high - low) - 1, -1, 1)


def action_dim(space: gym.Space) -> int:
    return space.n if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))
