"""Clips as pictures for people: a recorded clip is redrawn by putting each stored observation back into the
environment's state and rendering it (classic control draws offscreen with pygame), then written with imageio as a
GIF or MP4; a pair is shown side by side, left and right, as a person compares them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf.control.envs import make_env, resolve
from rlhf.errors import RLHFError


REDRAWN = ("CartPole", "MountainCarContinuous", "Pendulum", "Acrobot")  # what _state can restore


def _state(name: str, obs: np.ndarray) -> np.ndarray:
    if name == "CartPole":
        return np.asarray(obs, np.float64)[:4]  # without the absorbing-state indicator
    if name == "MountainCarContinuous":
        return np.asarray(obs, np.float64)
    if name == "Pendulum":
        return np.array([np.arctan2(obs[1], obs[0]), obs[2]])
    if name == "Acrobot":
        return np.array([np.arctan2(obs[1], obs[0]), np.arctan2(obs[3], obs[2]), obs[4], obs[5]])
    raise RLHFError(f"env: no clip renderer for '{name}'")


def render_clip(env: str, observations: np.ndarray) -> np.ndarray:
    """(T, obs_dim) observations -> (T, H, W, 3) uint8 frames."""
    name, _ = resolve(env)
    e = make_env(name, render=True)
    e.reset(seed=0)
    frames = []
    for obs in observations:
        e.unwrapped.state = _state(name, obs)
        frames.append(e.render())
    e.close()
    return np.stack(frames)


def write_pair(env: str, obs_a: np.ndarray, obs_b: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """Left clip | right clip, side by side, to `path` (.gif or .mp4)."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix not in (".gif", ".mp4"):
        raise RLHFError(f"{path}: clip files are .gif or .mp4")
    a, b = render_clip(env, obs_a), render_clip(env, obs_b)
    gap = np.full((a.shape[0], a.shape[1], 8, 3), 255, np.uint8)
    frames = np.concatenate([a, gap, b], axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1)
    return path
