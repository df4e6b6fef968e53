"""`rlhf control tamer|coach`: learning from a trainer's scalar feedback, Deep TAMER (Warnell et al. 2018) and
COACH (MacGlashan et al. 2017; Deep COACH, Arumugam et al. 2019).

The agent acts greedily on a learned model of the trainer's feedback, H(s, a) (an MLP with one output per action).
A simulated trainer (`teachers.ScalarTeacher`) watches and presses +1 / -1 about the actions it sees (+1: the
expert would have done the same), on some steps only, sometimes wrongly, and late. Credit assignment: feedback
arriving at step t is credited to every recent step i whose delay t - i lies in the credit window
[credit_min, credit_max], each with weight 1 / (window width) (the probability that the trainer's delay was
exactly t - i under a uniform delay model; Deep TAMER's importance weights, in steps instead of seconds). Every
credited (s, a, w, f) goes into a replay buffer; H is fit by the weighted squared error sum w (H(s, a) - f)^2 / sum w
on each new feedback and on a replay minibatch every `replay_every` steps. Training episodes end when the task
would have ended (the trainer restarts the run); the greedy policy is scored on the fixed-length TRUE return.

COACH reads the same feedback as the advantage of the action it is about, not as a reward to regress: the agent
is a softmax policy pi(a | s) that samples its actions, and each credited (s, a, w, f) moves it along
f * w * grad log pi(a | s) (the credit window plays the eligibility trace), plus an entropy bonus; Deep COACH's
replay of credited windows is the same replay buffer. Both learners share the trainer, the credit assignment,
the replay and the evaluation; only the network's meaning, how it acts, and its loss differ.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rlhf.control.demos import check_expert_task, expert_for
from rlhf.control.envs import make_env, policy_return, random_return
from rlhf.control.teachers import ScalarTeacher, ScalarTeacherConfig
from rlhf.errors import RLHFError
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.plots import plot_curves


@dataclass
class TamerConfig:
    env: str = "CartPole"  # an environment with a hand-written expert and discrete actions (CartPole)
    episode_len: int = 0  # 0 = the environment's default horizon
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    episodes: int = 15  # training episodes (each ends when the pole falls or at the fixed length)
    credit_min: int = 1  # the learner's credit window, in steps after the action (its delay model)
    credit_max: int = 3
    hidden: int = 32
    lr: float = 1e-3
    batch_size: int = 32
    replay_every: int = 1  # a replay minibatch every N agent steps (0 = none)
    buffer: int = 20_000  # credited (s, a, w, f) kept
    eval_episodes: int = 5
    threads: int = 1
    out: str = "runs/control-tamer"
    trainer: ScalarTeacherConfig = field(default_factory=lambda: ScalarTeacherConfig(rate=0.5, mistake=0.1,
                                                                                      delay_min=1, delay_max=3))

    def check(self) -> None:
        check_expert_task(self.env, self.episode_len, self.seeds,
                          "TAMER and COACH here act over discrete actions; '{name}' has continuous ones")
        if self.episodes < 1 or self.eval_episodes < 1 or self.batch_size < 1:
            raise RLHFError("episodes, eval_episodes and batch_size must be >= 1")
        if self.replay_every < 0:
            raise RLHFError(f"replay_every: must be >= 0 (0 = no replay), got {self.replay_every}")
        if not 0 <= self.credit_min <= self.credit_max:
            raise RLHFError(f"credit_min/credit_max: need 0 <= min <= max, got {self.credit_min}, {self.credit_max}")
        self.trainer.check()


def credit(arrival: int, steps: list[int], credit_min: int, credit_max: int) -> list[float]:
    """Weight of each step in `steps` for feedback arriving at step `arrival`: 1 / (credit_max - credit_min + 1)
    where arrival - step lies in [credit_min, credit_max], else 0."""
    w = 1.0 / (credit_max - credit_min + 1)
    return [w if credit_min <= arrival - s <= credit_max else 0.0 for s in steps]


@dataclass
class CoachConfig(TamerConfig):
    """COACH: the same trainer, credit window and replay as TAMER; a softmax policy updated by feedback-weighted
    log-likelihood (the feedback as the advantage) with an entropy bonus."""
    lr: float = 1e-3
    entropy_coef: float = 0.01
    replay_every: int = 0  # plain COACH (each credited feedback updates once); replay was less stable here
    out: str = "runs/control-coach"

    def check(self) -> None:
        super().check()
        if self.entropy_coef < 0:
            raise RLHFError(f"entropy_coef: must be >= 0, got {self.entropy_coef}")


class ActionNet(nn.Module):
    """An MLP with one output per action."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_actions))

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> int:
        return int(self.net(torch.as_tensor(np.asarray(obs, np.float32)).view(1, -1)).argmax(-1))


class HumanReward(ActionNet):
    """TAMER's H(s, .): the trainer's expected feedback for each action in state s; the agent acts greedily on it."""

    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> int:
        return self.greedy(obs)

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor, feedback: torch.Tensor):
        h = self.net(obs).gather(1, actions.long().view(-1, 1)).squeeze(1)
        return (weights * (h - feedback) ** 2).sum() / weights.sum().clamp_min(1e-8)


class CoachPolicy(ActionNet):
    """COACH's pi(. | s) (logits); the agent samples from it while it learns."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, entropy_coef: float = 0.0):
        super().__init__(obs_dim, n_actions, hidden)
        self.entropy_coef = entropy_coef

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator) -> int:
        p = torch.softmax(self.net(torch.as_tensor(np.asarray(obs, np.float32)).view(1, -1)), -1)[0].double().numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor, feedback: torch.Tensor):
        """-sum w f log pi(a | s) / sum w - entropy_coef * mean entropy: a gradient step on it is COACH's
        theta += lr * f * (credit-weighted grad log pi)."""
        logp = torch.log_softmax(self.net(obs), -1)
        chosen = logp.gather(1, actions.long().view(-1, 1)).squeeze(1)
        pg = -(weights * feedback * chosen).sum() / weights.sum().clamp_min(1e-8)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return pg - self.entropy_coef * entropy


class Replay:
    def __init__(self, capacity: int):
        self.rows: deque = deque(maxlen=capacity)

    def add(self, obs, action: int, weight: float, feedback: float) -> None:
        self.rows.append((np.asarray(obs, np.float32), int(action), weight, feedback))

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def tensors(rows):
        obs, act, w, f = zip(*rows)
        return (torch.as_tensor(np.stack(obs)), torch.as_tensor(act), torch.as_tensor(w, dtype=torch.float32),
                torch.as_tensor(f, dtype=torch.float32))

    def sample(self, n: int, rng: np.random.Generator):
        idx = rng.integers(0, len(self.rows), size=min(n, len(self.rows)))
        return self.tensors([self.rows[i] for i in idx])


def greedy_return(cfg: TamerConfig, h: ActionNet, seed: int) -> float:
    return policy_return(cfg.env, cfg.episode_len, h.greedy, cfg.eval_episodes, seed)


def run_seed(cfg: TamerConfig, seed: int, bar, rd: RunDir) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    expert = expert_for(cfg.env)
    trainer = ScalarTeacher(ScalarTeacherConfig(**{**cfg.trainer.__dict__, "seed": cfg.trainer.seed + seed}))
    e = make_env(cfg.env, cfg.episode_len)
    dims = (int(np.prod(e.observation_space.shape)), e.action_space.n, cfg.hidden)
    h = CoachPolicy(*dims, cfg.entropy_coef) if isinstance(cfg, CoachConfig) else HumanReward(*dims)
    opt = torch.optim.Adam(h.parameters(), lr=cfg.lr)
    replay = Replay(cfg.buffer)

    def update(batch) -> None:
        loss = h.loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    curve = [{"episode": 0, "feedback": 0, "steps": 0, "return": greedy_return(cfg, h, 100_000 + 100 * seed)}]
    steps = 0
    for ep in range(cfg.episodes):
        obs, _ = e.reset(seed=1000 * seed + ep)
        trainer.reset()
        history: deque = deque(maxlen=cfg.credit_max + 1)  # (step, obs, action)
        for t in range(e.episode_len):
            action = h.act(obs, rng)
            history.append((t, np.asarray(obs, np.float32), action))
            trainer.watch(t, action, expert(obs))
            for f in trainer.arrivals(t):
                weights = credit(t, [s for s, _, _ in history], cfg.credit_min, cfg.credit_max)
                new = [(o, a, w, f) for (_, o, a), w in zip(history, weights) if w > 0]
                for row in new:
                    replay.add(*row)
                if new:
                    update(Replay.tensors(new))
            obs, _, _, _, info = e.step(action)
            steps += 1
            if len(replay) and cfg.replay_every and steps % cfg.replay_every == 0:
                update(replay.sample(cfg.batch_size, rng))
            if info.get("ended"):  # the task would have ended: the trainer restarts it
                break
        ret = greedy_return(cfg, h, 100_000 + 100 * seed)
        curve.append({"episode": ep + 1, "feedback": trainer.given, "steps": steps, "return": ret})
        rd.log(ep + 1, **{f"return_seed{seed}": ret, f"feedback_seed{seed}": trainer.given})
        bar.advance(1)
    e.close()
    return {"seed": seed, "final_return": curve[-1]["return"], "feedback": trainer.given,
            "wrong_feedback": trainer.wrong, "steps": steps, "curve": curve}


def _name(cfg: TamerConfig) -> str:
    return "COACH" if isinstance(cfg, CoachConfig) else "TAMER"


def _plot(rd: RunDir, cfg: TamerConfig, results: list[dict], rand: float) -> None:
    plot_curves(rd.sub("plots/return_vs_feedback.png"),
                [([p["feedback"] for p in r["curve"]], [p["return"] for p in r["curve"]],
                  f"{_name(cfg)}, seed {r['seed']}")
                 for r in results],
                [(rand, "gray", ":", "random actions")],
                "scalar feedback given", "true return (greedy policy)", f"{_name(cfg)} on {cfg.env}")



def run(cfg: TamerConfig, show_progress: bool = True):
    cfg.check()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    with RunDir(cfg.out, cfg) as rd, progress_bar(f"{_name(cfg).lower()} {cfg.env}", len(cfg.seeds) * cfg.episodes,
                                                  show_progress) as bar:
        results = [run_seed(cfg, seed, bar, rd) for seed in cfg.seeds]
        rand = random_return(cfg.env, cfg.episode_len, cfg.eval_episodes, 100_000)
        _plot(rd, cfg, results, rand)
        finals = [r["final_return"] for r in results]
        agg = {"final_return_mean": float(np.mean(finals)), "final_return_std": float(np.std(finals)),
               "final_return_min": float(np.min(finals)),
               "feedback_mean": float(np.mean([r["feedback"] for r in results])),
               "random_return": rand, "wall_s": round(time.perf_counter() - started, 1)}
        table = [{"seed": r["seed"], "feedback": r["feedback"], "wrong": r["wrong_feedback"], "agent steps": r["steps"],
                  **{f"ep{p['episode']}": round(p["return"], 1) for p in r["curve"]}} for r in results]
        rd.write_summary(f"rlhf control {_name(cfg).lower()}: {cfg.env}, {cfg.episodes} episodes, {len(cfg.seeds)} "
                         "seed(s)",
                         {"greedy return after each training episode": table,
                          "over seeds (std = population std)": agg,
                          "setup": {"trainer": str(cfg.trainer.__dict__),
                                    "credit window": f"[{cfg.credit_min}, {cfg.credit_max}] steps"}},
                         data={"per_seed": results, "aggregate": agg})
    return rd.final
