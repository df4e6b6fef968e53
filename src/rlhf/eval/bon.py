"""`rlhf best-of-n`: rejection sampling as an inference-time policy and as a data generator.

N samples per prompt from a policy (the one rollout engine); the reward model picks the best. Writes the
picks with their RM and gold scores (`responses.jsonl`), the gold/proxy curve over n = 1, 2, 4, ..., N
(`summary.md`, the same numbers the pipeline's best-of-N row uses), and the picks as SFT data
(`sft_data.jsonl`, chat `messages`, readable by `rlhf sft --set data=...`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhf.data.jsonl import read_jsonl, write_jsonl
from rlhf.errors import RLHFError
from rlhf.eval.gold_eval import score_responses, summarize
from rlhf.eval.reward_eval import best_of_n
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model
from rlhf.rollout import SamplingConfig
from rlhf.rundir import RunDir
from rlhf.world import World, WorldConfig


@dataclass
class BestOfNConfig:
    out: str = "runs/best-of-n"
    seed: int = 0
    policy: str = "runs/sft/model"
    reward_model: str = "runs/reward/model"
    world: WorldConfig = field(default_factory=WorldConfig)
    prompts: str | None = None  # JSONL of {"prompt"}; default: the world's held-out prompts
    n: int = 16
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=0.7))


def run(cfg: BestOfNConfig, show_progress: bool = True) -> Path:
    if cfg.n < 1:
        raise RLHFError(f"n must be at least 1, got {cfg.n}")
    world = World(cfg.world)
    if cfg.prompts is None:
        prompts = world.prompts("eval")
    else:
        prompts = []
        for lineno, obj in read_jsonl(cfg.prompts):
            if not isinstance(obj.get("prompt"), (str, list)) or not obj["prompt"]:
                raise RLHFError(f"{cfg.prompts}:{lineno}: missing 'prompt' (a string or a list of messages)")
            prompts.append({"prompt": obj["prompt"]})
    tokenizer = load_tokenizer(cfg.policy)
    policy, reward_model = load_causal_lm(cfg.policy), load_reward_model(cfg.reward_model)
    with RunDir(cfg.out, cfg) as run_dir:
        bon = best_of_n(policy, reward_model, tokenizer, world, prompts, cfg.n, cfg.sampling, seed=cfg.seed,
                        rm_tokenizer=load_tokenizer(cfg.reward_model))
        rows = score_responses(world, prompts, bon["responses"])
        write_jsonl(run_dir.sub("responses.jsonl"),
                    [{"prompt": r["prompt"], "response": r["response"], "gold": r["gold"],
                      "kind": r["kind"]} for r in rows])
        write_jsonl(run_dir.sub("sft_data.jsonl"),
                    [{"messages": ([{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else
                                   list(r["prompt"])) + [{"role": "assistant",
                                                          "content": r["response"]}]} for r in rows])
        for point in bon["curve"]:
            run_dir.log(point["n"], gold=point["gold"], proxy=point["proxy"], kl=point["kl"])
        run_dir.plot_metrics({"best-of-n: gold and proxy against n": ["gold", "proxy"]})
        metrics = summarize(rows)
        run_dir.write_summary(f"Best-of-{cfg.n}", {"gold metrics of the picks": metrics, "curve": bon["curve"],
                                                   "files": "responses.jsonl, sft_data.jsonl"},
                              {"metrics": metrics, "curve": bon["curve"]})
    return Path(cfg.out)
