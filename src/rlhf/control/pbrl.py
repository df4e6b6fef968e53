"""`rlhf control`: deep RL from preferences over trajectory clips (Christiano et al. 2017), with a simulated teacher.

Per seed: the agent's initial (untrained) policy collects episodes; a first share of the label budget is spent on
random clip pairs from them; a reward-model ensemble is fit. Then for each round: the agent (stable-baselines3 PPO
or SAC) trains on the ensemble's normalized reward while its episodes are recorded; new clip pairs are chosen
(uniformly, or where the ensemble disagrees most), the teacher compares them, the ensemble is refit on every label
so far; the agent is scored on the TRUE reward. Labels come on a decaying schedule. The same algorithm with the
same settings and timesteps is then trained on the true reward: the reference the PbRL return is compared with.
With `demos:` (Ibarz et al. 2018), expert demonstrations come first: the policy is cloned from them, and/or the first
reward-model fit also sees free (demonstration clip > agent clip) pairs.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from rlhf.control.agents import (AgentConfig, LearnedRewardVecEnv, ProgressCallback, evaluate, make_agent, make_venv,
                                 relabel_replay)
from rlhf.control.app_clips import PeopleConfig, PeopleTeacher
from rlhf.control.clips import TrajectoryBuffer, label_schedule, select_pairs
from rlhf.control.envs import action_dim, action_features, episode_len_of, make_env, random_return, resolve
from rlhf.control.reward_model import RewardEnsemble, RewardModelConfig
from rlhf.control.teachers import SKIP, SimulatedTeacher, TeacherConfig
from rlhf.data.comparisons import Ranking
from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.plots import plot_curves


@dataclass
class DemoConfig:
    """Learning from demonstrations before the preference loop (Ibarz et al. 2018), from the env's expert."""
    episodes: int = 0  # expert episodes recorded (0 = no demonstrations)
    bc_epochs: int = 0  # pretrain the agent's policy by behavioural cloning on them for this many passes
    rm_pairs: int = 0  # pretrain the reward model on this many (demo clip > the untrained agent's clip) pairs;
    # these labels are free (no teacher query) and are used in the first fit only, before the agent improves


@dataclass
class ControlConfig:
    env: str = "CartPole"  # CartPole | Pendulum | MountainCarContinuous | Acrobot | Hopper | HalfCheetah (or gym ids)
    episode_len: int = 0  # fixed episode length; 0 = the environment's default horizon
    seeds: list[int] = field(default_factory=lambda: [0])
    labels: int = 1000  # label budget: teacher queries, skips included
    clip_len: int = 50  # steps per clip
    rounds: int = 10  # agent-training rounds; labels are asked before the first and after each but the last
    initial_frac: float = 0.25  # share of the budget asked before any agent training
    decay: float = 1.0  # round k gets labels in proportion to 1 / (1 + decay * k)
    sampling: str = "disagreement"  # disagreement | uniform
    oversample: int = 10  # disagreement: candidates per chosen pair
    init_episodes: int = 8  # episodes of the untrained policy that the first labels come from
    buffer_episodes: int = 100  # clips are drawn from the most recent episodes
    eval_episodes: int = 10
    clip_files: int = 0  # write the last N labeled clip pairs per seed as side-by-side GIFs under clips/
    baseline: bool = True  # also train the same algorithm on the true reward
    threads: int = 1
    out: str = "runs/control"
    agent: AgentConfig = field(default_factory=AgentConfig)
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    people: PeopleConfig = field(default_factory=PeopleConfig)  # people.db set: people answer in the labeling app

    def check(self) -> None:
        """Every user-fixable problem, before any work is done."""
        _, spec = resolve(self.env)
        length = episode_len_of(self.env, self.episode_len)
        if self.episode_len < 0:
            raise RLHFError(f"episode_len: must be >= 0 (0 = default), got {self.episode_len}")
        if self.labels < 1:
            raise RLHFError(f"labels: the label budget must be >= 1, got {self.labels}")
        if not 1 <= self.clip_len <= length:
            raise RLHFError(f"clip_len: {self.clip_len} must be between 1 and the episode length ({length} steps)")
        if self.rounds < 1:
            raise RLHFError(f"rounds: must be >= 1, got {self.rounds}")
        if not 0 <= self.initial_frac <= 1:
            raise RLHFError(f"initial_frac: must be in [0, 1], got {self.initial_frac}")
        if self.sampling not in ("disagreement", "uniform"):
            raise RLHFError(f"sampling: expected 'disagreement' or 'uniform', got '{self.sampling}'")
        if not self.seeds:
            raise RLHFError("seeds: give at least one seed")
        if self.clip_files < 0:
            raise RLHFError(f"clip_files: must be >= 0, got {self.clip_files}")
        if self.clip_files:
            from rlhf.control.render import REDRAWN

            if resolve(self.env)[0] not in REDRAWN:
                raise RLHFError(f"clip_files: clips are redrawn from observations, which {resolve(self.env)[0]} "
                                f"cannot do (it can for {', '.join(REDRAWN)})")
        if self.init_episodes < 1 or self.eval_episodes < 1 or self.oversample < 1:
            raise RLHFError("init_episodes, eval_episodes and oversample must be >= 1")
        if self.reward.output not in ("tanh", "linear"):
            raise RLHFError(f"reward.output: expected 'tanh' or 'linear', got '{self.reward.output}'")
        if self.reward.members < 1:
            raise RLHFError(f"reward.members: must be >= 1, got {self.reward.members}")
        self.teacher.check()
        self.people.check(self.env)
        d = self.demos
        if d.episodes < 0 or d.bc_epochs < 0 or d.rm_pairs < 0:
            raise RLHFError("demos.episodes, demos.bc_epochs and demos.rm_pairs must be >= 0")
        if (d.bc_epochs or d.rm_pairs) and not d.episodes:
            raise RLHFError("demos.episodes: demos.bc_epochs / demos.rm_pairs need demonstrations (episodes >= 1)")
        if d.episodes:
            from rlhf.control.demos import expert_for

            expert_for(self.env)
        probe = make_env(self.env, self.episode_len)
        self.agent.check(probe.action_space)
        probe.close()


class _Labels:
    """Every labeled pair so far: the clips' reward-model features and the answer."""

    def __init__(self):
        self.xa, self.xb, self.y, self.rows = [], [], [], []

    def __len__(self) -> int:
        return len(self.y)

    def arrays(self):
        return np.stack(self.xa), np.stack(self.xb), np.asarray(self.y, np.float32)


def _ask(cfg: ControlConfig, buffer: TrajectoryBuffer, ensemble, teacher, labels: _Labels, n: int,
         rng: np.random.Generator, trained: bool, seed: int) -> None:
    length = cfg.clip_len
    pairs = select_pairs(buffer, n, length, rng, cfg.sampling, ensemble if trained else None, cfg.oversample)
    clips = [(buffer.clip(p.episode_a, p.start_a, length), buffer.clip(p.episode_b, p.start_b, length)) for p in pairs]
    for p, (a, b), answer in zip(pairs, clips, teacher.compare_all(clips)):
        if answer is SKIP:
            continue
        labels.xa.append(a.features)
        labels.xb.append(b.features)
        labels.y.append(answer)
        # the project's comparison data model: a prompt, two responses (clip ids), ranks with ties
        ids = (f"episode {buffer.total - len(buffer) + p.episode_a} steps {p.start_a}-{p.start_a + length}",
               f"episode {buffer.total - len(buffer) + p.episode_b} steps {p.start_b}-{p.start_b + length}")
        if ids[0] == ids[1]:
            ids = (ids[0], ids[1] + " (shown twice)")
        ranks = (1, 1) if answer == 0.5 else ((1, 2) if answer == 1.0 else (2, 1))
        labels.rows.append(Ranking(({"role": "user", "content": f"{cfg.env} seed {seed}: which clip is better?"},),
                                   ids, ranks, id=f"s{seed}-{len(labels)}",
                                   meta={"true_return": [float(a.rewards.sum()), float(b.rewards.sum())]}).to_json())


def _demo_labels(cfg: ControlConfig, demo_feats: np.ndarray, episode_len: int, buffer: TrajectoryBuffer,
                 rng: np.random.Generator) -> _Labels:
    """`demos.rm_pairs` free labels: a clip of the expert's demonstrations (fixed-length episodes, one after the
    other in `demo_feats`) is preferred to a clip of the agent's."""
    out, length = _Labels(), cfg.clip_len
    for p in buffer.sample_pairs(cfg.demos.rm_pairs, length, rng):
        episode = int(rng.integers(0, len(demo_feats) // episode_len))
        start = episode * episode_len + int(rng.integers(0, episode_len - length + 1))
        out.xa.append(demo_feats[start:start + length])
        out.xb.append(buffer.clip(p.episode_a, p.start_a, length).features)
        out.y.append(1.0)
    return out


def _fit(ensemble: RewardEnsemble, labels: _Labels, buffer: TrajectoryBuffer, rng: np.random.Generator,
         extra: _Labels | None = None) -> dict:
    """Refit on every label so far (and on `extra` free labels, when given)."""
    both = _Labels()
    for part in (labels, extra or _Labels()):
        both.xa, both.xb, both.y = both.xa + part.xa, both.xb + part.xb, both.y + part.y
    stats = ensemble.fit(*both.arrays()) if len(both) else {"rm_loss": float("nan"), "rm_acc": float("nan")}
    feats = buffer.all_features()
    if len(feats) > 20_000:
        feats = feats[rng.choice(len(feats), 20_000, replace=False)]
    ensemble.set_output_stats(feats)
    return stats


def run_seed(cfg: ControlConfig, seed: int, bar, rd: RunDir, on_agent=None) -> dict:
    """`on_agent(kind, model, seed) -> dict`, if given, scores each trained agent (kind 'pbrl', 'true_reward')
    further; its entries join the seed's result (control/highway.py drives them for its safety table)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    length = episode_len_of(cfg.env, cfg.episode_len)
    a = cfg.agent
    buffer = TrajectoryBuffer(cfg.buffer_episodes)
    venv = LearnedRewardVecEnv(make_venv(cfg.env, cfg.episode_len, a.n_envs, seed), buffer)
    obs_dim = int(np.prod(venv.observation_space.shape))
    ensemble = RewardEnsemble(obs_dim, action_dim(venv.action_space), cfg.reward, seed)
    if cfg.people.db:
        from rlhf.progress import console

        teacher = PeopleTeacher(cfg.people, cfg.env, obs_dim, Path(f"{cfg.out}-people"), f"s{seed}", console.print)
    else:
        teacher = SimulatedTeacher(TeacherConfig(**{**cfg.teacher.__dict__, "seed": cfg.teacher.seed + seed}))
    model = make_agent(a, venv, seed)
    labels = _Labels()
    schedule = label_schedule(cfg.labels, cfg.rounds - 1, cfg.initial_frac, cfg.decay)
    chunk = a.timesteps // cfg.rounds
    if a.algo == "ppo":  # whole rollouts per round (rounded down: the summary reports the timesteps run)
        rollout = a.n_steps * a.n_envs
        chunk = max(rollout, chunk // rollout * rollout)
    started = time.perf_counter()

    demo = {}
    if cfg.demos.episodes:  # expert demonstrations: behavioural cloning, and free labels for the first fit
        from rlhf.control.demos import clone_into_sb3, expert_for, rollout as expert_rollout

        d_obs, d_act, d_ret = expert_rollout(cfg.env, cfg.episode_len, expert_for(cfg.env), cfg.demos.episodes,
                                             50_000 + seed)
        demo_feats = np.concatenate([d_obs.reshape(len(d_obs), -1), action_features(venv.action_space, d_act)], 1)
        demo["demo_return"] = float(np.mean(d_ret))
        if cfg.demos.bc_epochs:
            demo["bc_nll"] = clone_into_sb3(model, d_obs, d_act, cfg.demos.bc_epochs, seed=seed)
            demo["bc_return"] = evaluate(model, cfg.env, cfg.episode_len, cfg.eval_episodes, 10_000 + seed * 100)

    # the untrained (or cloned) policy's episodes, the first labels, the first fit
    obs = venv.reset()
    while buffer.total < cfg.init_episodes:
        actions, _ = model.predict(obs, deterministic=False)
        obs, *_ = venv.step(actions)
    ensemble.set_input_stats(buffer.all_features())
    _ask(cfg, buffer, ensemble, teacher, labels, schedule[0], rng, False, seed)
    free = _demo_labels(cfg, demo_feats, length, buffer, rng) if cfg.demos.rm_pairs else None
    stats = _fit(ensemble, labels, buffer, rng, free)
    venv.reward_fn = ensemble.reward
    init_return = float(np.mean(venv.true_returns))
    curve = [{"timesteps": 0, "labels": teacher.asked, "answered": len(labels), "return": init_return, **stats}]

    callback = ProgressCallback(bar)
    for k in range(cfg.rounds):
        model.learn(chunk, reset_num_timesteps=False, callback=callback)
        if k + 1 < cfg.rounds and schedule[k + 1]:
            _ask(cfg, buffer, ensemble, teacher, labels, schedule[k + 1], rng, True, seed)
            stats = _fit(ensemble, labels, buffer, rng)
            relabel_replay(model, ensemble.reward)
        ret = evaluate(model, cfg.env, cfg.episode_len, cfg.eval_episodes, 10_000 + seed * 100)
        curve.append({"timesteps": model.num_timesteps, "labels": teacher.asked, "answered": len(labels),
                      "return": ret, **stats})
        rd.log(model.num_timesteps, **{f"pbrl_return_seed{seed}": ret, f"labels_seed{seed}": teacher.asked,
                                       f"rm_acc_seed{seed}": stats["rm_acc"]})
    pbrl_wall = time.perf_counter() - started
    steps = model.num_timesteps
    venv.close()
    extra = on_agent("pbrl", model, seed) if on_agent else {}

    result = {"seed": seed, "labels": teacher.asked, "answered": len(labels), "skipped": teacher.skipped,
              "equal": teacher.equal, "timesteps": steps, "pbrl_return": curve[-1]["return"],
              "rm_acc": curve[-1]["rm_acc"], "pbrl_wall_s": round(pbrl_wall, 1), **demo}
    write_jsonl(rd.sub(f"labels_seed{seed}.jsonl"), labels.rows)
    if cfg.clip_files:
        from rlhf.control.render import write_pair

        for i in range(max(0, len(labels) - cfg.clip_files), len(labels)):
            write_pair(cfg.env, labels.xa[i][:, :obs_dim], labels.xb[i][:, :obs_dim],
                       rd.sub(f"clips/{labels.rows[i]['id']}.gif"))

    if cfg.baseline:  # the same algorithm, settings and timesteps on the true reward
        torch.manual_seed(seed)
        started = time.perf_counter()
        ref = make_agent(a, make_venv(cfg.env, cfg.episode_len, a.n_envs, seed), seed)
        ref_curve = []
        while ref.num_timesteps < steps:
            ref.learn(min(chunk, steps - ref.num_timesteps), reset_num_timesteps=False, callback=callback)
            ret = evaluate(ref, cfg.env, cfg.episode_len, cfg.eval_episodes, 10_000 + seed * 100)
            ref_curve.append({"timesteps": ref.num_timesteps, "return": ret})
            rd.log(ref.num_timesteps, **{f"true_reward_return_seed{seed}": ret})
        rand = random_return(cfg.env, cfg.episode_len, cfg.eval_episodes, 10_000 + seed * 100)
        ref_ret = ref_curve[-1]["return"]
        result.update(true_reward_return=ref_ret, random_return=rand,
                      ratio=result["pbrl_return"] / ref_ret if ref_ret else float("nan"),
                      normalized=(result["pbrl_return"] - rand) / (ref_ret - rand) if ref_ret != rand else float("nan"),
                      baseline_wall_s=round(time.perf_counter() - started, 1))
        result["ref_curve"] = ref_curve
        if on_agent:
            extra.update(on_agent("true_reward", ref, seed))
    result.update(extra)
    result["curve"] = curve
    result["length"] = length
    return result


def _plot(rd: RunDir, cfg: ControlConfig, results: list[dict]) -> None:
    refs = [r["true_reward_return"] for r in results if "true_reward_return" in r]
    hlines = []
    if refs:
        rand = np.mean([r["random_return"] for r in results])
        hlines = [(np.mean(refs), "k", "--", f"{cfg.agent.algo.upper()} on true reward (mean)"),
                  (rand + 0.8 * (np.mean(refs) - rand), "gray", ":", "80% of it (normalized)")]
    plot_curves(rd.sub("plots/return_vs_labels.png"),
                [([p["labels"] for p in r["curve"]], [p["return"] for p in r["curve"]], f"PbRL seed {r['seed']}")
                 for r in results],
                hlines, "labels used", "true return (deterministic policy)", f"{cfg.env}: return against labels used")



def run(cfg: ControlConfig, show_progress: bool = True, on_agent=None):
    import torch

    cfg.check()
    torch.set_num_threads(cfg.threads)
    total = len(cfg.seeds) * cfg.agent.timesteps * (2 if cfg.baseline else 1)
    results = []
    with RunDir(cfg.out, cfg) as rd, progress_bar(f"control {cfg.env}", total, show_progress) as bar:
        for seed in cfg.seeds:
            results.append(run_seed(cfg, seed, bar, rd, on_agent))
        _plot(rd, cfg, results)
        rd.plot_metrics({"true return against timesteps": [k for s in cfg.seeds for k in
                                                           (f"pbrl_return_seed{s}", f"true_reward_return_seed{s}")],
                         "reward-model accuracy on its labels": [f"rm_acc_seed{s}" for s in cfg.seeds]})
        rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in ("curve", "ref_curve", "length")} for r in results]
        agg = {}
        for key in ("pbrl_return", "true_reward_return", "ratio", "normalized", "pbrl_wall_s", "baseline_wall_s"):
            vals = [r[key] for r in results if key in r]
            if vals:
                agg[f"{key}_mean"] = float(np.mean(vals))
                agg[f"{key}_std"] = float(np.std(vals))
                agg[f"{key}_min"] = float(np.min(vals))
        rd.write_summary(
            f"rlhf control: {cfg.env}, {cfg.agent.algo.upper()}, {cfg.labels} labels, {len(cfg.seeds)} seed(s)",
            {"per seed": rows, "over seeds (std = population std)": agg,
             "setup": {"env": cfg.env, "episode_len": results[0]["length"], "clip_len": cfg.clip_len,
                       "sampling": cfg.sampling,
                       "teacher": (f"people in project {cfg.people.project!r}" if cfg.people.db
                                   else str(cfg.teacher.__dict__)),
                       "demos": str(cfg.demos.__dict__),
                       "agent timesteps": results[0]["timesteps"]}},
            data={"per_seed": results, "aggregate": agg})
    return rd.final
