"""The control track: reward-ensemble loss against hand-computed values, fixed-length episodes, clip sampling and
label schedules, every simulated-teacher noise model, the learned-reward wrapper, and the `rlhf control` CLI
(a tiny real run, and bad input -> one line, exit 2)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rlhf.control.agents import LearnedRewardVecEnv, make_venv
from rlhf.control.clips import TrajectoryBuffer, label_schedule, select_pairs
from rlhf.control.envs import ENVS, action_features, make_env
from rlhf.control.reward_model import RewardEnsemble, RewardModelConfig, preference_loss
from rlhf.control.teachers import SKIP, SimulatedTeacher, TeacherConfig
from rlhf.errors import RLHFError


# ---- reward-model loss and ensemble

def test_preference_loss_matches_hand_computed_values():
    # P(a > b) = 0.05 + 0.9 * sigmoid(R_a - R_b), cross-entropy against the label:
    #   R_a - R_b = 1, label 1:   p = 0.05 + 0.9 * 0.7310586 = 0.7079527, loss = -ln 0.7079527 = 0.3453780
    #   R_a - R_b = 0, label 0.5: p = 0.5, loss = ln 2 = 0.6931472
    #   R_a - R_b = 2, label 0:   p = 0.05 + 0.9 * 0.8807971 = 0.8427174, loss = -ln 0.1572826 = 1.8497109
    ra, rb = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    y = torch.tensor([1.0, 0.5, 0.0])
    assert float(preference_loss(ra[:1], rb[:1], y[:1])) == pytest.approx(0.3453780, abs=1e-6)
    assert float(preference_loss(ra[1:2], rb[1:2], y[1:2])) == pytest.approx(0.6931472, abs=1e-6)
    assert float(preference_loss(ra[2:], rb[2:], y[2:])) == pytest.approx(1.8497109, abs=1e-6)
    assert float(preference_loss(ra, rb, y)) == pytest.approx((0.3453780 + 0.6931472 + 1.8497109) / 3, abs=1e-6)
    # the 10% random-answer assumption bounds the loss of a confident mistake at -ln 0.05
    assert float(preference_loss(torch.tensor([100.0]), torch.tensor([0.0]), torch.tensor([0.0]))) == \
        pytest.approx(-math.log(0.05), abs=1e-5)
    # without it (random_answer 0) the same mistake costs 100
    assert float(preference_loss(torch.tensor([100.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.0)) > 50


def test_ensemble_learns_a_clip_reward_from_preferences():
    rng = np.random.default_rng(0)
    true_w = np.array([1.0, -0.5, 0.0], np.float32)

    def clips(n):
        return rng.normal(size=(n, 10, 3)).astype(np.float32)

    xa, xb = clips(300), clips(300)
    y = ((xa @ true_w).sum(1) > (xb @ true_w).sum(1)).astype(np.float32)
    ens = RewardEnsemble(2, 1, RewardModelConfig(members=3, epochs=15), seed=0)
    ens.set_input_stats(xa.reshape(-1, 3))
    stats = ens.fit(xa, xb, y)
    ta, tb = clips(200), clips(200)
    ty = (ta @ true_w).sum(1) > (tb @ true_w).sum(1)
    pred = ens.reward(ta.reshape(-1, 3)).reshape(200, 10).sum(1) > ens.reward(tb.reshape(-1, 3)).reshape(200, 10).sum(1)
    assert stats["rm_acc"] > 0.9
    assert (pred == ty).mean() > 0.85  # held-out pairs
    assert ens.disagreement(ta, tb).shape == (200,)


def test_output_normalization_zero_mean_unit_std():
    ens = RewardEnsemble(3, 2, RewardModelConfig(), seed=1)
    x = np.random.default_rng(1).normal(size=(500, 5)).astype(np.float32)
    ens.set_output_stats(x)
    r = ens.reward(x)
    assert abs(r.mean()) < 1e-4 and abs(r.std() - 1) < 1e-3


# ---- environments

@pytest.mark.parametrize("name", list(ENVS))
def test_fixed_length_episodes_never_terminate(name):
    env = make_env(name, 60)
    env.action_space.seed(0)
    for ep in range(2):
        env.reset(seed=ep)
        for t in range(60):
            _, r, term, trunc, info = env.step(env.action_space.sample())
            assert not term
            assert trunc == (t == 59)
            assert info["true_reward"] == info.get("teacher_reward", r)  # Highway: the safety score


def test_cartpole_pays_zero_after_the_pole_falls():
    env = make_env("CartPole")  # default horizon 500
    env.reset(seed=0)
    rewards = [env.step(0)[1] for _ in range(500)]  # always push left: falls within a few dozen steps
    assert len(rewards) == 500
    assert rewards[0] == 1.0 and rewards[-1] == 0.0
    assert 5 < sum(rewards) < 100


def test_action_features():
    import gymnasium as gym

    assert action_features(gym.spaces.Discrete(3), np.array([2, 0])).tolist() == [[0, 0, 1], [1, 0, 0]]
    box = gym.spaces.Box(-2.0, 2.0, (1,))
    assert action_features(box, np.array([[-2.0], [0.0], [2.0]])).ravel().tolist() == [-1.0, 0.0, 1.0]


def test_learned_reward_wrapper_records_whole_episodes():
    buffer = TrajectoryBuffer(10)
    venv = LearnedRewardVecEnv(make_venv("CartPole", 40, 2, seed=0), buffer, reward_fn=lambda x: x[:, 0] * 0 + 7.0)
    venv.reset()
    for _ in range(40):
        _, rew, dones, infos = venv.step(np.array([0, 1]))
        assert (rew == 7.0).all()
    assert dones.all() and len(buffer) == 2
    for e, ret in zip(buffer.episodes, venv.true_returns):
        assert e.features.shape == (40, 4 + 1 + 2) and e.rewards.shape == (40,)  # + the absorbing-state flag
        assert e.rewards.sum() == ret


# ---- clips and label schedule

def _buffer(n=5, length=30):
    b = TrajectoryBuffer(100)
    for i in range(n):
        b.add(np.full((length, 2), i, np.float32), np.arange(length, dtype=float))
    return b


def test_clip_sampling_stays_inside_episodes():
    b = _buffer()
    rng = np.random.default_rng(0)
    pairs = b.sample_pairs(200, 10, rng)
    assert all(0 <= p.start_a <= 20 and 0 <= p.start_b <= 20 for p in pairs)
    assert {p.start_a for p in pairs} >= {0, 20}  # both ends reachable
    xa, xb = b.stack(pairs, 10)
    assert xa.shape == xb.shape == (200, 10, 2)
    c = b.clip(pairs[0].episode_a, pairs[0].start_a, 10)
    assert c.rewards.tolist() == list(range(pairs[0].start_a, pairs[0].start_a + 10))
    with pytest.raises(RLHFError, match="clip_len: 31 is longer than the episode"):
        b.sample_pairs(1, 31, rng)


def test_disagreement_sampling_picks_the_most_disputed_pairs():
    class Fake:
        def disagreement(self, xa, xb):  # members disagree most on pairs whose a-clip comes from episode 3
            return (xa[:, 0, 0] == 3).astype(float) + 0.01 * xb[:, 0, 0]

    b = _buffer()
    chosen = select_pairs(b, 5, 10, np.random.default_rng(0), "disagreement", Fake(), oversample=20)
    assert len(chosen) == 5 and all(p.episode_a == 3 for p in chosen)
    uniform = select_pairs(b, 50, 10, np.random.default_rng(0), "uniform", Fake())
    assert len({p.episode_a for p in uniform}) == 5


@pytest.mark.parametrize("budget,rounds", [(1000, 9), (7, 3), (1, 9), (100, 0)])
def test_label_schedule_sums_to_budget_and_decays(budget, rounds):
    s = label_schedule(budget, rounds, 0.25, 1.0)
    assert sum(s) == budget and len(s) == rounds + 1 and min(s) >= 0
    later = s[1:]
    assert all(a >= b - 1 for a, b in zip(later, later[1:]))  # non-increasing up to rounding
    if budget == 1000:
        assert s[0] == 250 and later[0] > 2 * later[-1]


# ---- simulated teachers (B-Pref family)

def test_oracle_prefers_higher_return_and_ties():
    t = SimulatedTeacher(TeacherConfig())
    assert t.compare([1, 1, 0], [0, 0, 1]) == 1.0
    assert t.compare([0, 0, 1], [1, 1, 0]) == 0.0
    assert t.compare([1, 0, 0], [0, 0, 1]) == 0.5  # exactly equal returns
    assert t.stats() == {"asked": 3, "skipped": 0, "equal": 1}


def test_stochastic_teacher_follows_bradley_terry():
    t = SimulatedTeacher(TeacherConfig(temperature=2.0, seed=3))
    n = 4000
    wins = sum(t.compare([1.0, 1.0], [0.0, 0.0]) for _ in range(n))  # return gap 2 -> p = sigmoid(2 / 2)
    p = 1 / (1 + math.exp(-1))
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_mistaken_teacher_flips_at_its_rate():
    t = SimulatedTeacher(TeacherConfig(mistake=0.2, seed=4))
    n = 4000
    flips = sum(t.compare([5.0], [0.0]) == 0.0 for _ in range(n))
    assert abs(flips / n - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)


def test_myopic_teacher_weighs_the_end_of_the_clip():
    a, b = [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9]
    assert SimulatedTeacher(TeacherConfig()).compare(a, b) == 1.0
    # gamma 0.5: a counts 0.5^3 * 1 = 0.125, b counts 0.9
    assert SimulatedTeacher(TeacherConfig(myopia=0.5)).compare(a, b) == 0.0


def test_skipping_teacher_skips_when_neither_clip_is_worth_it():
    t = SimulatedTeacher(TeacherConfig(skip_below=0.5))
    assert t.compare([0.0, 0.2], [0.1, 0.3]) is SKIP
    assert t.compare([0.0, 0.2], [1.0, 1.0]) == 0.0
    assert t.stats()["skipped"] == 1 and t.stats()["asked"] == 2


def test_equal_teacher_calls_close_clips_equally_preferable():
    t = SimulatedTeacher(TeacherConfig(equal_margin=0.1))  # mean reward per step within 0.1
    assert t.compare([1.0, 1.0], [1.0, 0.9]) == 0.5
    assert t.compare([1.0, 1.0], [0.5, 0.5]) == 1.0
    assert t.stats()["equal"] == 1


@pytest.mark.parametrize("bad,match", [({"temperature": -1}, "teacher.temperature"), ({"myopia": 0}, "teacher.myopia"),
                                       ({"mistake": 1.5}, "teacher.mistake")])
def test_teacher_config_rejects_bad_values(bad, match):
    with pytest.raises(RLHFError, match=match):
        SimulatedTeacher(TeacherConfig(**bad))


# ---- the CLI

def _cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "control", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.parametrize("sets,message", [
    (["env=CartPol"], "env: unknown environment id 'CartPol' (did you mean 'CartPole'?)"),
    (["clip_len=600"], "clip_len: 600 must be between 1 and the episode length (500 steps)"),
    (["labels=0"], "labels: the label budget must be >= 1, got 0"),
    (["agent.algo=sac"], "agent.algo: 'sac' needs a continuous action space"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, sets, message):
    out = tmp_path / "run"
    proc = _cli(*[x for s in sets for x in ("--set", s)], "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_tiny_cartpole_run_writes_a_complete_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = _cli("-q", "-o", str(out), "--set", "labels=40", "--set", "rounds=2", "--set", "clip_len=20",
                "--set", "agent.timesteps=2048", "--set", "agent.n_envs=2", "--set", "agent.n_steps=256",
                "--set", "init_episodes=2", "--set", "eval_episodes=1", "--set", "episode_len=100",
                "--set", "reward.epochs=2", "--set", "teacher.equal_margin=0.05")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    (seed,) = summary["per_seed"]
    assert seed["labels"] == 40 and seed["answered"] == 40  # this teacher never skips
    assert seed["timesteps"] == 2048 and len(seed["ref_curve"]) == 2
    assert [p["labels"] for p in seed["curve"]] == [10, 40, 40]  # 25% first, the rest after round 1
    assert 0 <= seed["pbrl_return"] <= 100 and 0 <= seed["true_reward_return"] <= 100
    rows = [json.loads(line) for line in (out / "labels_seed0.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(sorted(r["ranks"]) in ([1, 2], [1, 1]) for r in rows)
    from rlhf.data.comparisons import parse_row

    assert parse_row(rows[0]).k == 2  # the project's comparison data model reads them back
    for name in ("return_vs_labels.png", "true_return_against_timesteps.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert "rlhf control: CartPole" in (out / "summary.md").read_text()


def test_sac_replay_buffer_is_relabeled_with_the_learned_reward():
    from rlhf.control.agents import AgentConfig, make_agent, relabel_replay

    buffer = TrajectoryBuffer(10)
    venv = LearnedRewardVecEnv(make_venv("Pendulum", 50, 1, seed=0), buffer, reward_fn=lambda x: np.zeros(len(x)))
    model = make_agent(AgentConfig(algo="sac", n_envs=1, learning_starts=100, net_arch=[16]), venv, seed=0)
    model.learn(60)
    rb = model.replay_buffer
    assert rb.pos == 60 and np.all(rb.rewards[:60] == 0)
    # reward = the scaled action the reward model sees: SAC stores actions in [-1, 1] as action_features does
    relabel_replay(model, lambda x: x[:, -1] * 3.0)
    assert np.allclose(rb.rewards[:60, 0], rb.actions[:60, 0, 0] * 3.0)
    assert np.all(rb.rewards[60:] == 0)


@pytest.mark.parametrize("name", ["CartPole", "Pendulum"])
def test_clip_pairs_render_to_gif_and_mp4(tmp_path, name):
    import imageio.v2 as imageio

    from rlhf.control.render import render_clip, write_pair

    env = make_env(name, 20)
    obs = [env.reset(seed=0)[0]]
    for _ in range(9):
        obs.append(env.step(env.action_space.sample())[0])
    obs = np.stack(obs)
    frames = render_clip(name, obs)
    assert frames.shape[0] == 10 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert frames.std() > 10  # drawn, not a blank frame
    assert not np.array_equal(frames[0], frames[-1])  # the pictures follow the states
    gif = write_pair(name, obs, obs[::-1], tmp_path / "pair.gif")
    back = imageio.mimread(gif)
    # Pillow merges consecutive identical frames into one longer frame, so count at most 10
    assert 2 <= len(back) <= 10 and back[0].shape[1] == 2 * frames.shape[2] + 8  # left | gap | right
    mp4 = write_pair(name, obs, obs, tmp_path / "pair.mp4")
    assert mp4.stat().st_size > 1000
    with pytest.raises(RLHFError, match="clip files are .gif or .mp4"):
        write_pair(name, obs, obs, tmp_path / "pair.avi")


def test_tiny_hopper_run(tmp_path):
    """MuJoCo locomotion goes through the same loop: a few Hopper steps with a continuous action space."""
    out = tmp_path / "hopper"
    proc = _cli("-q", "-o", str(out), "--set", "env=Hopper", "--set", "labels=12", "--set", "rounds=2",
                "--set", "clip_len=10", "--set", "episode_len=50", "--set", "agent.timesteps=512",
                "--set", "agent.n_envs=2", "--set", "agent.n_steps=128", "--set", "init_episodes=2",
                "--set", "eval_episodes=1", "--set", "reward.epochs=2")
    assert proc.returncode == 0, proc.stderr
    (seed,) = json.loads((out / "summary.json").read_text())["per_seed"]
    assert seed["labels"] == 12 and seed["timesteps"] == 512
    assert np.isfinite(seed["pbrl_return"]) and np.isfinite(seed["true_reward_return"])
