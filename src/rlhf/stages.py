"""The training stages as `rlhf <stage>` and the pipeline run them: each trainer's own config plus a `world`
section, the embedded world filling in whatever data the config leaves unset (corpus, demonstrations,
prompts) and giving PPO its gold scorer and held-out evaluation.

The trainers under `train/` never import the world: this module hands it to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhf.eval.drift import proxy_gold_kl
from rlhf.train import ppo, pretrain, sft
from rlhf.world import World, WorldConfig
from rlhf.world.templates import ABSTAIN_RE, REFUSAL_RE


@dataclass
class PretrainStage(pretrain.PretrainConfig):
    world: WorldConfig = field(default_factory=WorldConfig)


@dataclass
class SFTStage(sft.SFTConfig):
    world: WorldConfig = field(default_factory=WorldConfig)


@dataclass
class PPOStage(ppo.PPOConfig):
    world: WorldConfig = field(default_factory=WorldConfig)


def run_pretrain(cfg: PretrainStage, show_progress: bool = True) -> Path:
    """Pretrain on the world's corpus (unless `corpus` is set); a new tokenizer also learns the demonstrations' text."""
    world = World(cfg.world)
    return pretrain.run(cfg, show_progress, docs=None if cfg.corpus else world.corpus(),
                        tokenizer_texts=[m["content"] for d in world.demonstrations() for m in d["messages"]])


def run_sft(cfg: SFTStage, show_progress: bool = True) -> Path:
    """Fine-tune on the world's demonstrations (unless `data` is set), the LM loss on its corpus mixed in
    with ptx_coef > 0 (unless `ptx_data` is set)."""
    world = World(cfg.world)
    dialogues = None if cfg.data else [d["messages"] for d in world.demonstrations()]
    ptx_docs = world.corpus() if cfg.ptx_coef > 0 and not cfg.ptx_data else None
    return sft.run(cfg, show_progress, dialogues=dialogues, ptx_docs=ptx_docs)


def watch_rates(step: int, metrics: dict, exp) -> dict:
    """Gold-free drift signals a user can write for any task: the share of sampled responses that abstain
    ("I don't know") or refuse, by surface patterns (the gold reward judges more than these)."""
    return {"rate_abstain": sum(bool(ABSTAIN_RE.search(t)) for t in exp.texts) / len(exp.texts),
            "rate_refuse": sum(bool(REFUSAL_RE.search(t)) for t in exp.texts) / len(exp.texts)}


def run_ppo(cfg: PPOStage, show_progress: bool = True, **hooks) -> Path:
    """PPO on the world's training prompts (unless `prompts` is set), PPO-ptx on its corpus (unless `ptx_data`
    is set), the gold reward logged beside the RM's, and every eval_every steps proxy, gold and KL on the first
    eval_prompts held-out prompts. More hooks (see train.loop.Hooks) pass through."""
    cfg.validate()  # bad settings fail before the world is built
    world = World(cfg.world)
    prompts = None if cfg.prompts else [p["prompt"] for p in world.prompts("train")]
    ptx_docs = world.corpus() if cfg.ptx_coef > 0 and not cfg.ptx_data else None
    held_out = world.prompts("eval")[: cfg.eval_prompts]
    hooks = {"gold": lambda prompt, response: world.score(prompt, response).total,
             "evaluate": lambda models: proxy_gold_kl(models, world, held_out, cfg.sampling, cfg.seed),
             "on_iteration": watch_rates, **hooks}
    return ppo.run(cfg, show_progress, prompts=prompts, ptx_docs=ptx_docs, **hooks)
