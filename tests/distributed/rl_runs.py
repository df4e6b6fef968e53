"""Short PPO and GRPO runs that tests/test_parallel_rl.py makes twice: as one process (in the test) and as 2 gloo
ranks under torchrun (check_rl.py). Each returns what every step's on_iteration hook saw on this rank: the
logged row (the global batch's metrics), the prompts and the sampled texts (this rank's share)."""
from __future__ import annotations

from rlhf.rollout.engine import SamplingConfig
from rlhf.train import grpo, loop, ppo

SAMPLING = SamplingConfig(max_new_tokens=8, temperature=0.7)


def gold(prompt, response: str) -> float:
    """A stand-in gold score that differs between responses: its length in characters."""
    return float(len(response))


def _recorder(records: list):
    def record(step: int, row: dict, batch) -> dict:
        records.append({"step": step, "row": dict(row), "prompts": list(batch.prompts), "texts": list(batch.texts)})
        return {}
    return record


def ppo_config(out: str, policy: str, reward_model: str) -> ppo.PPOConfig:
    # one minibatch of one micro-batch per epoch: the 1- and 2-process runs then take the same token means over
    # the same 8 episodes (minibatch whitening over all 8), two epochs so the second sees ratios != 1
    return ppo.PPOConfig(out=out, policy=policy, reward_model=reward_model, steps=2, rollout_batch_size=8,
                         minibatch_size=8, micro_batch_size=8, ppo_epochs=2, sampling=SAMPLING, samples_every=1,
                         kl_budget=0.0, optim=ppo.OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0,
                                                              schedule="constant"))


def run_ppo(out: str, policy: str, reward_model: str, prompts: list[str]) -> list[dict]:
    records: list[dict] = []
    ppo.run(ppo_config(out, policy, reward_model), False, prompts=prompts, gold=gold,
            on_iteration=_recorder(records))
    return records


def grpo_config(out: str, policy: str, reward_model: str, prompts: str) -> grpo.GRPOConfig:
    # token-mean loss (the global token count), two epochs (the old policy's log-probs, clipping)
    return grpo.GRPOConfig(out=out, policy=policy, reward_model=reward_model, prompts=prompts, eval_prompts=None,
                           steps=2, prompts_per_step=4, group_size=2, micro_batch_prompts=4, epochs=2,
                           loss_agg="token", sampling=SAMPLING, samples_every=1,
                           optim=grpo.OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"))


def run_grpo(out: str, policy: str, reward_model: str, prompts: str) -> list[dict]:
    records: list[dict] = []
    cfg = grpo_config(out, policy, reward_model, prompts)
    cfg.validate()
    loop.run(grpo.GRPO(cfg, None, None, gold), loop.Hooks(gold=gold, on_iteration=_recorder(records)), False)
    return records
