"""Driving safety from preferences (control/highway.py): the real highway-fast-v0 at fixed length, the safety score
the simulated teacher judges by, and bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("highway_env")

from rlhf.control.envs import make_env  # noqa: E402
from rlhf.control.highway import HighwayConfig, SafetyScore  # noqa: E402
from rlhf.control.teachers import SimulatedTeacher, TeacherConfig  # noqa: E402
from rlhf.errors import RLHFError  # noqa: E402

FASTER, SLOWER = 3, 4  # highway-env's DiscreteMetaAction


def drive(action: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    e = make_env("Highway", 30)
    e.reset(seed=seed)
    got = {k: [] for k in ("teacher", "env", "crashed", "speed", "truncated")}
    for _ in range(steps):
        _, reward, term, trunc, info = e.step(action)
        assert not term  # a crash never ends the fixed-length episode
        for key, value in (("teacher", info["true_reward"]), ("env", reward), ("crashed", info["crashed"]),
                           ("speed", info["speed"]), ("truncated", trunc)):
            got[key].append(value)
    e.close()
    return {k: np.asarray(v) for k, v in got.items()}


def test_safety_score_by_hand():
    s = SafetyScore()
    assert s(False, True, 2.0, 30.0) == pytest.approx(0.3 + 0.1)  # right lane, safe gap, top speed
    assert s(False, False, 0.5, 25.0) == pytest.approx(-0.5 + 0.05)  # tailgating at 25 m/s
    assert s(True, True, 0.0, 0.0) == pytest.approx(-5.0 + 0.3 - 0.5)  # crashed (gap 0 behind the wreck)


def test_teacher_prefers_a_collision_free_clip_over_a_faster_colliding_one():
    fast, slow = drive(FASTER, 10), drive(SLOWER, 10)
    assert fast["crashed"].any() and not slow["crashed"].any()  # seed 0: full speed ends in a crash
    before = int(np.argmax(fast["crashed"]))
    assert fast["speed"][:before].mean() > slow["speed"][:before].mean() + 5  # it was the faster clip
    teacher = SimulatedTeacher(TeacherConfig())
    assert teacher.compare(fast["teacher"], slow["teacher"]) == 0.0  # b, the slower collision-free clip
    assert teacher.compare(slow["teacher"], fast["teacher"]) == 1.0
    # the environment's own reward barely tells them apart (speed pays, the crash costs one reward scale)
    assert abs(fast["env"].sum() - slow["env"].sum()) < 1.0


def test_a_crash_does_not_end_the_episode_and_it_lasts_exactly_its_length():
    fast = drive(FASTER, 30)
    assert fast["crashed"][-1] and list(fast["truncated"]).index(True) == 29  # exactly 30 steps
    assert fast["speed"][-1] < 1.0  # the wreck has stopped


def test_bad_input_is_one_clear_line():
    cfg = HighwayConfig(env="CartPole")
    with pytest.raises(RLHFError, match="`rlhf control highway` drives the 'Highway' environment"):
        cfg.check()
    with pytest.raises(RLHFError, match="safety_episodes: must be >= 1"):
        HighwayConfig(safety_episodes=0).check()
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "control", "highway", "--set", "env=Highwy"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: env: unknown environment id 'Highwy' (did you mean 'Highway'?); "
                                   "known: CartPole, Pendulum, MountainCarContinuous, Acrobot, Highway, Hopper, "
                                   "HalfCheetah")
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "control", "highway", "--set", "labels=0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: labels: the label budget must be >= 1, got 0"


@pytest.mark.slow
def test_control_highway_end_to_end(tmp_path):
    """A tiny run of `rlhf control highway`: both agents driven, the safety table written."""
    from rlhf.control.highway import run

    cfg = HighwayConfig(seeds=[0], labels=20, rounds=2, clip_len=5, init_episodes=2, eval_episodes=1,
                        safety_episodes=2, out=str(tmp_path / "hw"))
    cfg.agent.timesteps, cfg.agent.n_envs, cfg.agent.n_steps, cfg.agent.batch_size = 128, 2, 32, 32
    final = run(cfg, show_progress=False)
    table = (final / "safety.md").read_text()
    assert "preferences (safety teacher)" in table and "environment's reward" in table
    import json

    (row,) = json.loads((final / "safety.json").read_text())["per_seed"]
    assert 0 <= row["pbrl_collisions_per_100"] <= 100 and row["true_reward_progress_m"] > 0


def test_highway_clips_for_people_are_drawn_offscreen(tmp_path):
    """Highway clips for the labeling app are recorded while driving, with offscreen rendering (not black)."""
    import imageio.v2 as imageio

    from rlhf.control.app_clips import make_pairs

    made = make_pairs("Highway", tmp_path, pairs=1, clip_len=5, episodes=1)
    assert made["pairs"] == 1
    frames = np.asarray(imageio.mimread(tmp_path / "clips" / "p0000-a.gif"))
    assert frames.shape[1:3] == (150, 600) and frames[..., :3].mean() > 50  # grey road, not a black screen
    pairs = np.load(tmp_path / "pairs.npz")
    assert pairs["xa"].shape == (1, 5, 25 + 5)  # 5 cars x 5 kinematics features, one-hot of 5 meta-actions


def test_returns_are_judged_by_the_teachers_score_not_the_environments_reward():
    """`policy_return` (every evaluation and the random baseline) sums what the teacher judges by; on Highway that
    is the safety score, so a driver that crashes at once gets the crash's -5 per step, not highway-env's reward."""
    from rlhf.control.envs import policy_return

    fast = drive(FASTER, 30)
    got = policy_return("Highway", 30, lambda obs: FASTER, 1, 0)
    assert got == pytest.approx(fast["teacher"].sum())
    assert got < fast["env"].sum() - 20  # the environment's reward would call the crash a fair drive
