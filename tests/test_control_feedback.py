"""Learning from corrections, scalar feedback and demonstrations: DAgger's aggregation and beta schedule, Deep
TAMER's credit assignment on a hand-made case, the scalar trainer's noise models, the experts, behavioural
cloning into an SB3 policy, CartPole's absorbing end state, and bad input -> one line (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.control.dagger import Dataset, DAggerConfig, Learner, beta_schedule, collect
from rlhf.control.demos import behaviour_clone, expert_for, rollout
from rlhf.control.envs import make_env
from rlhf.control.scalar import CoachPolicy, HumanReward, credit
from rlhf.control.teachers import ScalarTeacher, ScalarTeacherConfig
from rlhf.errors import RLHFError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "control", *args], capture_output=True, text=True,
                          env=env, timeout=300)


# ---- DAgger

def test_beta_schedule_decays_geometrically_from_the_expert():
    assert beta_schedule(1.0, 0.5, 4) == [1.0, 0.5, 0.25, 0.125]
    assert beta_schedule(1.0, 0.0, 3) == [1.0, 0.0, 0.0]  # expert once, then the learner alone
    assert beta_schedule(0.8, 1.0, 2) == [0.8, 0.8]


def test_collect_relabels_every_visited_state_with_the_expert_action():
    cfg = DAggerConfig(episode_len=40, episodes=2)
    learner = Learner(5, 2, 8)
    expert = expert_for("CartPole")
    rng = np.random.default_rng(0)
    # beta 1: the expert drives; beta 0: the learner drives, and still every state gets the EXPERT's label
    for beta, share in ((1.0, 1.0), (0.0, 0.0)):
        states, labels, _, expert_share = collect(cfg, learner, expert, beta, rng, seed=3)
        assert states.shape == (80, 5) and len(labels) == 80 and expert_share == share
        assert labels == [int(expert(s)) for s in states]
    # the learner (always action 0 or always 1 when untrained) visits other states than the expert
    expert_states = collect(cfg, learner, expert, 1.0, rng, seed=3)[0]
    learner_states = collect(cfg, learner, expert, 0.0, rng, seed=3)[0]
    assert not np.allclose(expert_states, learner_states)


def test_noisy_expert_labels_are_wrong_at_the_configured_rate():
    cfg = DAggerConfig(episode_len=500, episodes=2, expert_mistake=0.3)
    expert = expert_for("CartPole")
    states, labels, _, _ = collect(cfg, Learner(5, 2, 8), expert, 1.0, np.random.default_rng(1), seed=0)
    wrong = np.mean([lab != int(expert(s)) for s, lab in zip(states, labels)])
    assert 0.25 < wrong < 0.35  # 1,000 labels: 0.3 +- 3 standard errors


def test_dataset_aggregates_across_iterations():
    d = Dataset()
    d.add(np.zeros((3, 5)), [0, 1, 0], 0)
    d.add(np.ones((2, 5)), [1, 1], 1)
    obs, acts = d.arrays()
    assert len(d) == 5 and obs.shape == (5, 5) and acts.tolist() == [0, 1, 0, 1, 1]
    obs, acts = d.arrays(only_iteration=1)
    assert obs.shape == (2, 5) and acts.tolist() == [1, 1] and np.all(obs == 1)


def test_tiny_dagger_run_aggregates_and_writes_a_run_dir(tmp_path):
    out = tmp_path / "dagger"
    proc = _cli("dagger", "-q", "-o", str(out), "--set", "episode_len=30", "--set", "iterations=3",
                "--set", "seeds=[0]", "--set", "epochs=2", "--set", "eval_episodes=1")
    assert proc.returncode == 0, proc.stderr
    (seed,) = json.loads((out / "summary.json").read_text())["per_seed"]
    assert [p["dataset"] for p in seed["curve"]] == [30, 60, 90]  # D grows by one relabelled episode each time
    assert [p["beta"] for p in seed["curve"]] == [1.0, 0.5, 0.25]
    assert seed["curve"][0]["expert_share"] == 1.0
    assert (out / "plots" / "return_per_iteration.png").stat().st_size > 1000
    from rlhf.control.dagger import run

    noagg = run(DAggerConfig(episode_len=30, iterations=2, seeds=[0], epochs=1, eval_episodes=1, aggregate=False,
                             out=str(tmp_path / "noagg")), show_progress=False)
    (seed,) = json.loads((noagg / "summary.json").read_text())["per_seed"]
    assert [p["dataset"] for p in seed["curve"]] == [30, 30] and seed["labels"] == 60


def test_behaviour_cloning_copies_the_expert():
    obs, acts, returns = rollout("CartPole", 0, expert_for("CartPole"), 2, seed=0)
    assert returns == [500.0, 500.0] and obs.shape == (1000, 5)
    torch.manual_seed(0)
    learner = Learner(5, 2, 32)
    nll = behaviour_clone(learner.log_prob, learner.parameters(), obs, acts, epochs=30)
    agree = np.mean([learner.act(o) == a for o, a in zip(obs, acts)])
    assert nll < 0.4 and agree > 0.8  # the expert switches often near theta = 0; most of it is copied
    with pytest.raises(RLHFError, match="no demonstration steps"):
        behaviour_clone(learner.log_prob, learner.parameters(), obs[:0], acts[:0], epochs=1)


def test_cloning_into_an_sb3_policy_raises_its_return():
    from rlhf.control.agents import AgentConfig, evaluate, make_agent, make_venv
    from rlhf.control.demos import clone_into_sb3

    model = make_agent(AgentConfig(n_envs=1), make_venv("CartPole", 0, 1, seed=0), seed=0)
    before = evaluate(model, "CartPole", 0, 2, seed=7)
    obs, acts, _ = rollout("CartPole", 0, expert_for("CartPole"), 2, seed=0)
    clone_into_sb3(model, obs, acts, epochs=20)
    after = evaluate(model, "CartPole", 0, 2, seed=7)
    assert before < 100 and after > 300


def test_pendulum_expert_swings_up():
    from rlhf.control.envs import random_return

    _, acts, returns = rollout("Pendulum", 0, expert_for("Pendulum"), 3, seed=0)
    assert np.all(np.abs(acts) <= 2.0)
    assert np.mean(returns) > -300 > random_return("Pendulum", 0, 3, 0)


# ---- CartPole's absorbing end state

def test_cartpole_absorbs_after_the_fall_and_flags_it():
    env = make_env("CartPole")  # absorbing by default
    assert env.observation_space.shape == (5,)
    obs, _ = env.reset(seed=0)
    assert obs[-1] == 0.0
    seen, rewards = [], []
    for t in range(500):
        obs, r, term, trunc, info = env.step(1)  # always push right: falls within a few steps
        seen.append(obs)
        rewards.append(r)
        assert not term and trunc == (t == 499)
    fall = next(t for t, o in enumerate(seen) if o[-1] == 1.0)
    assert 3 < fall < 20 and all(r == 1.0 for r in rewards[:fall]) and sum(rewards[fall:]) == 0.0
    assert all(np.array_equal(o, seen[fall]) for o in seen[fall:])  # frozen
    assert all(o[-1] == 0.0 for o in seen[:fall])
    cont = make_env("CartPole", absorb=False)  # the old rule: simulate on
    assert cont.observation_space.shape == (4,)
    cont.reset(seed=0)
    tail = [cont.step(1)[0] for _ in range(30)][-2:]
    assert not np.array_equal(tail[0], tail[1])


# ---- Deep TAMER

def test_credit_window_weights_by_hand():
    # feedback arriving at step 10, delay believed uniform on 2..4 steps: steps 6, 7, 8 each get 1/3
    assert credit(10, [5, 6, 7, 8, 9, 10], 2, 4) == [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]
    assert credit(3, [3], 0, 0) == [1.0]
    assert credit(3, [1, 2], 0, 0) == [0.0, 0.0]


def test_delayed_feedback_is_credited_to_the_step_it_was_about():
    # a trainer with a fixed 2-step delay and a learner whose window is exactly [2, 2]: each +1/-1 lands on the
    # action it judged; the agent's actions alternate and the expert always says 1
    trainer = ScalarTeacher(ScalarTeacherConfig(rate=1.0, delay_min=2, delay_max=2))
    history, credited = [], []
    for t in range(8):
        action = t % 2
        history.append((t, action))
        trainer.watch(t, action, 1)
        for f in trainer.arrivals(t):
            for (s, a), w in zip(history, credit(t, [s for s, _ in history], 2, 2)):
                if w:
                    credited.append((s, a, w, f))
    assert [c[0] for c in credited] == [0, 1, 2, 3, 4, 5]  # steps 6 and 7 still in flight
    assert all(f == (1.0 if a == 1 else -1.0) and w == 1.0 for _, a, w, f in credited)
    assert len(trainer.pending) == 2
    trainer.reset()
    assert trainer.arrivals(100) == []  # feedback about a finished episode is dropped


def test_weighted_human_reward_loss_by_hand():
    h = HumanReward(2, 2, 4)
    obs = torch.tensor([[0.1, 0.2], [0.3, -0.1], [0.0, 0.5]])
    acts, w, f = torch.tensor([0, 1, 1]), torch.tensor([0.5, 0.25, 0.25]), torch.tensor([1.0, -1.0, 1.0])
    with torch.no_grad():
        q = h.net(obs)
        hsa = torch.stack([q[0, 0], q[1, 1], q[2, 1]])
    expected = float((0.5 * (hsa[0] - 1) ** 2 + 0.25 * (hsa[1] + 1) ** 2 + 0.25 * (hsa[2] - 1) ** 2) / 1.0)
    assert float(h.loss(obs, acts, w, f).detach()) == pytest.approx(expected, rel=1e-6)


def test_coach_loss_by_hand():
    """COACH: -sum w f log pi(a|s) / sum w - entropy_coef * mean entropy, and its gradient step raises the
    probability of an action given +1 and lowers that of an action given -1."""
    pi = CoachPolicy(2, 3, 4, entropy_coef=0.1)
    obs = torch.tensor([[0.1, 0.2], [0.3, -0.1]])
    acts, w, f = torch.tensor([2, 0]), torch.tensor([0.5, 0.25]), torch.tensor([1.0, -1.0])
    with torch.no_grad():
        logp = torch.log_softmax(pi.net(obs), -1)
        ent = float(-(logp.exp() * logp).sum(-1).mean())
        expected = -(0.5 * 1.0 * float(logp[0, 2]) + 0.25 * -1.0 * float(logp[1, 0])) / 0.75 - 0.1 * ent
    assert float(pi.loss(obs, acts, w, f).detach()) == pytest.approx(expected, rel=1e-6)
    pi.entropy_coef = 0.0
    opt = torch.optim.SGD(pi.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        pi.loss(obs, acts, w, f).backward()
        opt.step()
    with torch.no_grad():
        after = torch.softmax(pi.net(obs), -1)
    assert after[0, 2] > logp[0, 2].exp() and after[1, 0] < logp[1, 0].exp()
    assert pi.greedy(obs[0].numpy()) == 2
    rng = np.random.default_rng(0)
    draws = [pi.act(obs[0].numpy(), rng) for _ in range(400)]
    assert abs(np.mean(np.asarray(draws) == 2) - float(after[0, 2])) < 0.08  # samples from pi, not greedy


def test_scalar_trainer_noise_models():
    n = 4000
    t = ScalarTeacher(ScalarTeacherConfig(rate=0.3, seed=0))
    for i in range(n):
        t.watch(i, 1, 1)
    assert abs(t.given / n - 0.3) < 0.03  # sparse: about 30% of the steps
    assert all(f == 1.0 for f in t.arrivals(n))  # no mistakes: always +1 for the expert's action
    t = ScalarTeacher(ScalarTeacherConfig(mistake=0.2, seed=1))
    for i in range(n):
        t.watch(i, 0, 1)  # never the expert's action: -1, except the mistakes
    got = t.arrivals(n)
    assert abs(np.mean(np.asarray(got) == 1.0) - 0.2) < 0.03 and t.wrong == sum(f == 1.0 for f in got)
    t = ScalarTeacher(ScalarTeacherConfig(delay_min=1, delay_max=4, seed=2))
    for i in range(n):
        t.watch(i, 1, 1)
    delays = [when - i for i, (when, _) in enumerate(t.pending)]
    assert set(delays) == {1, 2, 3, 4} and all(abs(np.mean(np.asarray(delays) == d) - 0.25) < 0.03 for d in range(1, 5))
    assert t.arrivals(0) == [] and len(t.arrivals(1)) == 1  # only step 0's feedback, if its delay was 1 ...
    for bad, msg in ((dict(rate=0), "trainer.rate"), (dict(mistake=1.5), "trainer.mistake"),
                     (dict(delay_min=3, delay_max=1), "trainer.delay_min")):
        with pytest.raises(RLHFError, match=msg):
            ScalarTeacher(ScalarTeacherConfig(**bad))


@pytest.mark.parametrize("method", ["tamer", "coach"])
def test_tiny_scalar_feedback_run_writes_a_run_dir(tmp_path, method):
    out = tmp_path / method
    proc = _cli(method, "-q", "-o", str(out), "--set", "episode_len=40", "--set", "episodes=2",
                "--set", "seeds=[0]", "--set", "eval_episodes=1")
    assert proc.returncode == 0, proc.stderr
    (seed,) = json.loads((out / "summary.json").read_text())["per_seed"]
    assert len(seed["curve"]) == 3 and seed["feedback"] > 0 and seed["curve"][-1]["feedback"] == seed["feedback"]
    assert (out / "plots" / "return_vs_feedback.png").stat().st_size > 1000


# ---- bad input -> one line, exit 2

@pytest.mark.parametrize("args, message", [
    (("dagger", "--set", "env=CartPoel"), "unknown environment id 'CartPoel' (did you mean 'CartPole'?)"),
    (("dagger", "--set", "env=Acrobot"), "no expert controller for 'Acrobot'"),
    (("tamer", "--set", "env=Pendulum"), "continuous"),
    (("tamer", "--set", "trainer.delay_min=5", "--set", "trainer.delay_max=2"), "trainer.delay_min"),
    (("coach", "--set", "env=Pendulum"), "continuous"),
    (("coach", "--set", "entropy_coef=-1"), "entropy_coef: must be >= 0, got -1"),
    (("--set", "labels=0"), "labels: the label budget must be >= 1, got 0"),
    (("--set", "clip_len=600"), "clip_len: 600 must be between 1 and the episode length (500 steps)"),
    (("--set", "env=Acrobot", "--set", "demos.episodes=2"), "no expert controller for 'Acrobot'"),
    (("--set", "demos.bc_epochs=3"), "demos.episodes"),
    (("--set", "env=Highway", "--set", "clip_len=10", "--set", "people.db=labels.db"), "people.db: live clips"),
    (("--set", "env=Hopper", "--set", "clip_files=2"), "clip_files: clips are redrawn from observations, which Hopper"),
    (("--set", "people.db=labels.db", "--set", "people.project=bad/name"), "bad project name 'bad/name'"),
    (("--set", "people.db=labels.db", "--set", "people.overlap=0"), "people.overlap and people.fps must be >= 1"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    proc = _cli(*args, "-o", str(tmp_path / "run"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_tiny_cartpole_run_with_demonstrations(tmp_path):
    out = tmp_path / "run"
    proc = _cli("-q", "-o", str(out), "--set", "labels=20", "--set", "rounds=2", "--set", "clip_len=20",
                "--set", "agent.timesteps=1024", "--set", "agent.n_envs=2", "--set", "agent.n_steps=256",
                "--set", "init_episodes=2", "--set", "eval_episodes=2", "--set", "episode_len=100",
                "--set", "reward.epochs=2", "--set", "baseline=false", "--set", "demos.episodes=2",
                "--set", "demos.bc_epochs=10", "--set", "demos.rm_pairs=15")
    assert proc.returncode == 0, proc.stderr
    (seed,) = json.loads((out / "summary.json").read_text())["per_seed"]
    assert seed["demo_return"] == 100.0 and seed["bc_return"] > 50  # cloned from a perfect expert
    assert seed["labels"] == 20  # the demonstration pairs are free: no teacher query
    rows = (out / "labels_seed0.jsonl").read_text().splitlines()
    assert len(rows) == 20
