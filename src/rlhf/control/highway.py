"""Driving safety from preferences: highway-env (`highway-fast-v0`) in the `rlhf control` loop, with a simulated
teacher that prefers collision-free, rule-keeping driving over raw speed.

The environment `Highway` (envs.py) is highway-fast-v0 at a fixed length: a crash does not end the episode (the
crashed car brakes to a stop and stays crashed), so ending early cannot leak the reward. Its reward, the one the
reference agent trains on, is the environment's own (normalized: collision -1, right lane 0.1, speed 0.4). The
teacher never sees that reward: every step carries `info["teacher_reward"]`, a safety score (SafetyScore below)
in which a collision outweighs everything, then keeping right and a safe time gap to the car ahead, and speed
counts least. The B-Pref teacher of teachers.py compares clips by the sum of this score.

`rlhf control highway -c configs/control_highway.yaml` runs the preference loop (pbrl.run) and the agent trained
on the environment's reward, then drives both for `safety_episodes` episodes and reports collisions per 100
episodes, mean speed and progress (metres driven), per seed and over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlhf.control.pbrl import ControlConfig
from rlhf.errors import RLHFError

@dataclass(frozen=True)
class SafetyScore:
    """Per-step score the simulated teacher judges by (higher is better)."""
    collision: float = -5.0  # every step the car is crashed (a crash early in a clip costs more than one late)
    right_lane: float = 0.3  # in the rightmost lane
    tailgating: float = -0.5  # time gap to the car ahead in the same lane below `safe_gap_s`
    safe_gap_s: float = 1.0
    speed: float = 0.1  # times the speed scaled from [20, 30] m/s to [0, 1]: raw speed counts least

    def __call__(self, crashed: bool, right_lane: bool, gap_s: float, speed: float) -> float:
        return (self.collision * crashed + self.right_lane * right_lane + self.tailgating * (gap_s < self.safe_gap_s)
                + self.speed * float(np.clip((speed - 20) / 10, 0, 1)))


class SafetyInfo(gym.Wrapper):
    """Adds to every step's info: teacher_reward (the safety score), crashed, speed, x (metres along the road),
    right_lane and gap_s (time gap to the car ahead in the same lane; inf when none)."""

    def __init__(self, env: gym.Env, score: SafetyScore = SafetyScore()):
        super().__init__(env)
        self.score = score

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        u = self.env.unwrapped
        v = u.vehicle
        front, _ = u.road.neighbour_vehicles(v, v.lane_index)
        gap = np.inf if front is None else (front.position[0] - v.position[0] - v.LENGTH) / max(v.speed, 1.0)
        right = v.lane_index[2] == u.config["lanes_count"] - 1
        speed = float(v.speed * np.cos(v.heading))
        info = dict(info, crashed=bool(v.crashed), speed=speed, x=float(v.position[0]), right_lane=bool(right),
                    gap_s=float(gap), teacher_reward=self.score(bool(v.crashed), right, float(gap), speed))
        return obs, reward, terminated, truncated, info


def make_highway_env(render_mode: str | None = None, **config) -> gym.Env:
    """highway-fast-v0 with the safety info; its own time limit is switched off (FixedLength sets the length).
    Frames are drawn offscreen (`offscreen_rendering`), which works without a display, unlike SDL's dummy driver."""
    import highway_env  # noqa: F401  (registers highway-fast-v0)

    cfg = {"duration": 10**6, "offscreen_rendering": True, **config}
    return SafetyInfo(gym.make("highway-fast-v0", render_mode=render_mode, config=cfg, disable_env_checker=True))


@dataclass
class HighwayConfig(ControlConfig):
    env: str = "Highway"
    clip_len: int = 10  # of the 30-step episodes
    labels: int = 200
    rounds: int = 4
    safety_episodes: int = 100  # episodes each trained agent drives for the safety table
    out: str = "runs/control-highway"

    def check(self) -> None:
        from rlhf.control.envs import resolve

        if resolve(self.env)[0] != "Highway":
            raise RLHFError(f"env: `rlhf control highway` drives the 'Highway' environment, got '{self.env}'")
        if self.safety_episodes < 1:
            raise RLHFError(f"safety_episodes: must be >= 1, got {self.safety_episodes}")
        super().check()


def drive(model, episode_len: int, episodes: int, seed: int) -> dict:
    """Deterministic policy for `episodes` fixed-length episodes: collisions per 100 episodes, mean speed (m/s)
    over the steps before any crash, progress (metres driven per episode), and the mean teacher score per step."""
    from rlhf.control.envs import make_env

    e = make_env("Highway", episode_len)
    crashes, speeds, progress, scores = 0, [], [], []
    for i in range(episodes):
        obs, _ = e.reset(seed=seed + i)
        x0 = float(e.unwrapped.vehicle.position[0])
        done, crashed, x = False, False, x0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, term, trunc, info = e.step(action)
            scores.append(info["teacher_reward"])
            if not crashed:
                speeds.append(info["speed"])
                x = info["x"]
            crashed = crashed or info["crashed"]
            done = term or trunc
        crashes += crashed
        progress.append(x - x0)
    e.close()
    return {"collisions_per_100": 100 * crashes / episodes, "mean_speed": float(np.mean(speeds)),
            "progress_m": float(np.mean(progress)), "teacher_score_per_step": float(np.mean(scores))}


METRICS = ("collisions_per_100", "mean_speed", "progress_m", "teacher_score_per_step")


def run(cfg: HighwayConfig, show_progress: bool = True):
    import json

    from rlhf.control import pbrl
    from rlhf.control.envs import episode_len_of
    from rlhf.rundir import markdown_table

    cfg.check()
    length = episode_len_of(cfg.env, cfg.episode_len)

    def on_agent(kind: str, model, seed: int) -> dict:
        stats = drive(model, length, cfg.safety_episodes, 20_000 + seed * 1000)
        return {f"{kind}_{k}": round(v, 3) for k, v in stats.items()}

    final = pbrl.run(cfg, show_progress, on_agent=on_agent)
    summary = json.loads((final / "summary.json").read_text())
    rows = summary["per_seed"]
    table = []
    for kind, name in (("pbrl", "preferences (safety teacher)"), ("true_reward", "environment's reward")):
        row = {"agent": name}
        for m in METRICS:
            vals = [r[f"{kind}_{m}"] for r in rows if f"{kind}_{m}" in r]
            if vals:
                row[m] = f"{np.mean(vals):.2f} ± {np.std(vals):.2f}"
        table.append(row)
    lines = [f"# Highway safety: {len(rows)} seed(s), {cfg.safety_episodes} episodes of {length} steps each, "
             f"{cfg.labels} labels, {cfg.agent.timesteps} agent steps", "",
             "mean ± population std over seeds", "", *markdown_table(table), "", "per seed:", "",
             *markdown_table([{k: r[k] for k in ["seed"] + [f"{a}_{m}" for a in ("pbrl", "true_reward")
                                                               for m in METRICS] if k in r} for r in rows])]
    (final / "safety.md").write_text("\n".join(lines) + "\n")
    (final / "safety.json").write_text(json.dumps({"table": table, "per_seed": rows}, indent=1))
    return final
