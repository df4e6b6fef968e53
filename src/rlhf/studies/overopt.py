"""`rlhf study overopt`: reward over-optimization (Gao et al. 2022) on the world.

The proxy (the learned RM) and the gold reward are plotted against sqrt(KL from the SFT policy), for
best-of-n (KL = log n - (n-1)/n) and for checkpoints along one long PPO run with a small KL penalty.
Labelers with a length bias teach the RM to like padding that the gold reward's brevity criterion
dislikes, so pushing the proxy far enough makes gold fall.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.data.jsonl import read_jsonl
from rlhf.eval.reward_eval import best_of_n
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model
from rlhf.rundir import RunDir
from rlhf.stages import PPOStage, run_ppo
from rlhf.train.common import OptimConfig
from rlhf.train.ppo import KLConfig
from rlhf.world import World, WorldConfig


@dataclass
class OveroptConfig:
    out: str = "runs/overopt"
    seed: int = 0
    policy: str = "runs/pipeline/sft/model"
    reward_model: str = "runs/pipeline/reward/model"
    world: WorldConfig = field(default_factory=WorldConfig)
    n_prompts: int = 96
    best_of_n: int = 64
    # a small KL penalty and a slow learning rate: the policy drifts away from SFT gradually, step by step
    ppo: PPOStage = field(default_factory=lambda: PPOStage(
        steps=80, eval_every=5, eval_prompts=96, kl=KLConfig(beta=0.005),
        optim=OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=0, schedule="constant")))


def _plot(bon: list[dict], ppo_points: list[dict], path: Path) -> None:
    from rlhf.plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=110, sharey=False)
    for ax, pts, title in ((axes[0], bon, "best-of-n"), (axes[1], ppo_points, "PPO checkpoints (in step order)")):
        if not pts:
            continue
        x = [math.sqrt(p["kl"]) for p in pts]
        ax.plot(x, [p["proxy"] - pts[0]["proxy"] for p in pts], "o-", label="proxy (RM) - initial")
        ax.plot(x, [p["gold"] - pts[0]["gold"] for p in pts], "s-", label="gold - initial")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("sqrt(KL from SFT), nats^0.5")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("reward change")
    if ppo_points:  # the same PPO run against its step: KL estimates are noisy, the order is not
        steps = [p["step"] for p in ppo_points]
        axes[2].plot(steps, [p["proxy"] - ppo_points[0]["proxy"] for p in ppo_points], "o-", label="proxy - initial")
        axes[2].plot(steps, [p["gold"] - ppo_points[0]["gold"] for p in ppo_points], "s-", label="gold - initial")
        axes[2].axhline(0, color="k", lw=0.5)
        axes[2].set_xlabel("PPO step")
        axes[2].set_title("PPO run")
        axes[2].legend(fontsize=7)
        axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(cfg: OveroptConfig, show_progress: bool = True) -> Path:
    world = World(cfg.world)
    prompts = world.prompts("eval")[: cfg.n_prompts]
    tokenizer = load_tokenizer(cfg.policy)
    with RunDir(cfg.out, cfg) as run_dir:
        bon = best_of_n(load_causal_lm(cfg.policy), load_reward_model(cfg.reward_model), tokenizer, world, prompts,
                        cfg.best_of_n, cfg.ppo.sampling,
                        cfg.seed)["curve"]
        p = cfg.ppo
        p.policy, p.reward_model, p.world, p.seed = cfg.policy, cfg.reward_model, cfg.world, cfg.seed
        p.out, p.eval_prompts = str(run_dir.sub("ppo")), cfg.n_prompts
        run_ppo(p, show_progress)
        ppo_points = [{"step": row["step"], "proxy": row["eval_proxy"], "gold": row["eval_gold"], "kl": row["eval_kl"]}
                      for _, row in read_jsonl(run_dir.sub("ppo") / "metrics.jsonl") if "eval_proxy" in row]
        _plot(bon, ppo_points, run_dir.sub("plots/overoptimization.png"))
        (run_dir.sub("overopt.json")).write_text(json.dumps({"best_of_n": bon, "ppo": ppo_points}, indent=1))

        def peak(points):
            best = max(points, key=lambda q: q["gold"])
            return {"gold_peak_at_sqrt_kl": round(math.sqrt(best["kl"]), 3), "gold_peak": round(best["gold"], 3),
                    "gold_at_max_kl": round(points[-1]["gold"], 3), "proxy_at_max_kl": round(points[-1]["proxy"], 3),
                    "proxy_rise": round(points[-1]["proxy"] - points[0]["proxy"], 3)}

        run_dir.write_summary("Reward over-optimization", {
            "best-of-n": [{k: round(v, 4) for k, v in q.items()} for q in bon],
            "PPO checkpoints": [{k: round(v, 4) for k, v in q.items()} for q in ppo_points],
            "peaks": {"best_of_n": peak(bon), "ppo": peak(ppo_points) if ppo_points else {}}},
            {"best_of_n": bon, "ppo": ppo_points})
    return Path(cfg.out)
