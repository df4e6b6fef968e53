"""`rlhf control dagger`: DAgger (Ross, Gordon and Bagnell 2011), learning from corrections.

Iteration i runs the mixture policy pi_i = beta_i * expert + (1 - beta_i) * learner (each step, the expert acts with
probability beta_i), for `episodes` fixed-length episodes; the expert labels EVERY visited state with its own action
(a correction of what the learner did there), the labels join the aggregated dataset D, and the learner (a small MLP
policy) is refit by behavioural cloning on all of D. beta_i = beta * decay^i: iteration 0 is the expert alone
(plain behavioural cloning), later ones visit the states the learner itself reaches. The learner's deterministic
policy is scored on the TRUE return after every iteration; `aggregate: false` keeps only the latest iteration's
data (the ablation that shows what aggregation buys). The expert can be made noisy (`expert_mistake`: a wrong
label with that probability), as a person relabelling states would be.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rlhf.control.demos import behaviour_clone, check_expert_task, expert_for
from rlhf.control.envs import make_env, policy_return, random_return
from rlhf.errors import RLHFError
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.plots import plot_curves


@dataclass
class DAggerConfig:
    env: str = "CartPole"  # an environment with a hand-written expert (CartPole)
    episode_len: int = 0  # 0 = the environment's default horizon
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    iterations: int = 8
    episodes: int = 1  # episodes per iteration (each state visited is relabelled by the expert)
    beta: float = 1.0  # beta_0: the expert's share of the actions in iteration 0
    decay: float = 0.5  # beta_i = beta * decay^i
    aggregate: bool = True  # false: fit on the latest iteration's data only
    expert_mistake: float = 0.0  # probability the expert's label is a wrong (random other) action
    hidden: int = 32
    epochs: int = 20  # behavioural-cloning passes over D per iteration
    lr: float = 1e-3
    batch_size: int = 64
    eval_episodes: int = 10
    threads: int = 1
    out: str = "runs/control-dagger"

    def check(self) -> None:
        check_expert_task(self.env, self.episode_len, self.seeds,
                          "DAgger's learner here is a classifier; '{name}' has continuous actions")
        if self.iterations < 1 or self.episodes < 1 or self.eval_episodes < 1:
            raise RLHFError("iterations, episodes and eval_episodes must be >= 1")
        if not 0 <= self.beta <= 1 or not 0 <= self.decay <= 1:
            raise RLHFError(f"beta and decay must be in [0, 1], got {self.beta}, {self.decay}")
        if not 0 <= self.expert_mistake <= 1:
            raise RLHFError(f"expert_mistake: must be in [0, 1], got {self.expert_mistake}")


def beta_schedule(beta: float, decay: float, iterations: int) -> list[float]:
    """beta_i = beta * decay^i for i = 0 .. iterations-1 (Ross et al.: beta_i = p^(i-1), with beta_1 = 1)."""
    return [beta * decay ** i for i in range(iterations)]


class Learner(nn.Module):
    """A small MLP policy over a discrete action space."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_actions))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(obs), -1).gather(1, actions.long().view(-1, 1)).squeeze(1)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int:
        return int(self.net(torch.as_tensor(np.asarray(obs, np.float32)).view(1, -1)).argmax(-1))


class Dataset:
    """DAgger's D: every relabelled state, with the iteration it came from."""

    def __init__(self):
        self.obs: list[np.ndarray] = []
        self.actions: list[int] = []
        self.iteration: list[int] = []

    def add(self, obs: np.ndarray, actions, iteration: int) -> None:
        self.obs.extend(np.asarray(obs, np.float32))
        self.actions.extend(int(a) for a in actions)
        self.iteration.extend([iteration] * len(actions))

    def __len__(self) -> int:
        return len(self.actions)

    def arrays(self, only_iteration: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        keep = [i for i, it in enumerate(self.iteration) if only_iteration is None or it == only_iteration]
        return np.stack([self.obs[i] for i in keep]), np.asarray([self.actions[i] for i in keep])


def collect(cfg: DAggerConfig, learner: Learner, expert, beta: float, rng: np.random.Generator, seed: int):
    """Episodes of the beta-mixture policy: (visited states, the expert's labels for them, mixture return,
    share of steps the expert acted)."""
    e = make_env(cfg.env, cfg.episode_len)
    n_actions = e.action_space.n
    states, labels, returns, expert_steps = [], [], [], 0
    for i in range(cfg.episodes):
        obs, _ = e.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            label = int(expert(obs))
            if cfg.expert_mistake and rng.random() < cfg.expert_mistake:
                label = int((label + rng.integers(1, n_actions)) % n_actions)
            states.append(np.asarray(obs, np.float32))
            labels.append(label)
            by_expert = rng.random() < beta
            expert_steps += by_expert
            action = int(expert(obs)) if by_expert else learner.act(obs)
            obs, r, term, trunc, _ = e.step(action)
            total += r
            done = term or trunc
        returns.append(total)
    e.close()
    return np.stack(states), labels, float(np.mean(returns)), expert_steps / len(labels)


def evaluate_learner(cfg: DAggerConfig, learner: Learner, seed: int) -> float:
    return policy_return(cfg.env, cfg.episode_len, learner.act, cfg.eval_episodes, seed)


def run_seed(cfg: DAggerConfig, seed: int, bar, rd: RunDir) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    expert = expert_for(cfg.env)
    probe = make_env(cfg.env, cfg.episode_len)
    learner = Learner(int(np.prod(probe.observation_space.shape)), probe.action_space.n, cfg.hidden)
    probe.close()
    data = Dataset()
    curve = []
    for i, beta in enumerate(beta_schedule(cfg.beta, cfg.decay, cfg.iterations)):
        states, labels, mix_return, expert_share = collect(cfg, learner, expert, beta, rng, 1000 * seed + 10 * i)
        data.add(states, labels, i)
        obs, actions = data.arrays(None if cfg.aggregate else i)
        learner = Learner(obs.shape[1], learner.net[-1].out_features, cfg.hidden)  # refit from scratch on D
        nll = behaviour_clone(learner.log_prob, learner.parameters(), obs, actions, cfg.epochs, cfg.lr,
                              cfg.batch_size, rng)
        ret = evaluate_learner(cfg, learner, 100_000 + 100 * seed)
        curve.append({"iteration": i, "beta": beta, "dataset": len(obs), "labels": len(data), "nll": nll,
                      "mixture_return": mix_return, "expert_share": expert_share, "return": ret})
        rd.log(i, **{f"return_seed{seed}": ret, f"dataset_seed{seed}": len(obs)})
        bar.advance(1)
    return {"seed": seed, "final_return": curve[-1]["return"], "bc_return": curve[0]["return"],
            "labels": len(data), "curve": curve}


def _plot(rd: RunDir, cfg: DAggerConfig, results: list[dict], expert_return: float, rand: float) -> None:
    plot_curves(rd.sub("plots/return_per_iteration.png"),
                [([p["iteration"] for p in r["curve"]], [p["return"] for p in r["curve"]], f"learner, seed {r['seed']}")
                 for r in results],
                [(expert_return, "k", "--", "expert"), (rand, "gray", ":", "random actions")],
                "DAgger iteration (0 = behavioural cloning on the expert's episodes)",
                "true return (learner, deterministic)", f"DAgger on {cfg.env}")



def run(cfg: DAggerConfig, show_progress: bool = True):
    cfg.check()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    with RunDir(cfg.out, cfg) as rd, progress_bar(f"dagger {cfg.env}", len(cfg.seeds) * cfg.iterations,
                                                  show_progress) as bar:
        results = [run_seed(cfg, seed, bar, rd) for seed in cfg.seeds]
        from rlhf.control.demos import rollout

        expert_return = float(np.mean(rollout(cfg.env, cfg.episode_len, expert_for(cfg.env), cfg.eval_episodes,
                                              100_000)[2]))
        rand = random_return(cfg.env, cfg.episode_len, cfg.eval_episodes, 100_000)
        _plot(rd, cfg, results, expert_return, rand)
        finals = [r["final_return"] for r in results]
        bcs = [r["bc_return"] for r in results]
        agg = {"final_return_mean": float(np.mean(finals)), "final_return_std": float(np.std(finals)),
               "final_return_min": float(np.min(finals)), "bc_return_mean": float(np.mean(bcs)),
               "expert_return": expert_return, "random_return": rand,
               "wall_s": round(time.perf_counter() - started, 1)}
        table = [{"seed": r["seed"], **{f"it{p['iteration']}": round(p["return"], 1) for p in r["curve"]}}
                 for r in results]
        rd.write_summary(f"rlhf control dagger: {cfg.env}, {cfg.iterations} iterations x {cfg.episodes} episode(s), "
                         f"{len(cfg.seeds)} seed(s)",
                         {"learner return per iteration": table, "over seeds (std = population std)": agg,
                          "setup": {"beta": str(beta_schedule(cfg.beta, cfg.decay, cfg.iterations)),
                                    "aggregate": cfg.aggregate, "expert_mistake": cfg.expert_mistake}},
                         data={"per_seed": results, "aggregate": agg})
    return rd.final
