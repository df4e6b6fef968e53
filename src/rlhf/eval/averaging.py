"""The final policy: the RLHF policy averaged with the pretrained weights, the pretrained share chosen per run
without the gold reward.

Averaging (WiSE-FT, Wortsman et al. 2022; Lin et al. 2024, "Mitigating the Alignment Tax of RLHF") brings back
what SFT overwrote of pretraining's knowledge, but past some share it also brings back made-up answers, and
where that edge lies moves with the seed, the random stream and the CPU. So every run measures it with what a
user has, never the gold reward: each candidate share's responses to validation prompts (held out from RL
training and disjoint from the test prompts), greedy and sampled, scored by the reward-model ensemble.
`choose` takes the largest share (the most of the pretrained model) whose ensemble score is not below the RLHF
policy's by more than `margin` paired standard errors under either decoding, and keeps the RLHF policy
(share 0) when no share is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rlhf.errors import RLHFError
from rlhf.models.average import average_state
from rlhf.models.reward import score_texts
from rlhf.rollout import SamplingConfig, generate_texts


@dataclass
class AveragingConfig:
    # how the pretrained model's share is set: "reward" (chosen per run among `weights` by the reward-model
    # ensemble on validation prompts), "fixed" (the one share in `weights`), "off" (the RLHF policy is final)
    select: str = "reward"
    # the candidate shares of the pretrained model: (1 - w) * RLHF policy + w * pretrained
    weights: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    # validation prompts the candidates answer (from the held-out pools, never a test prompt)
    prompts: int = 200
    # a share may replace the RLHF policy only if its ensemble score is below the policy's by at most this many
    # paired standard errors (the noise of the difference on these prompts), greedy and sampled alike
    margin: float = 1.0
    # the temperature of the sampled decoding (greedy is the other)
    temperature: float = 0.7

    def validate(self) -> None:
        if self.select not in ("reward", "fixed", "off"):
            raise RLHFError(f"average.select: expected reward, fixed or off, got '{self.select}'")
        bad = next((w for w in self.weights if not 0.0 < w < 1.0), None)
        if bad is not None:
            raise RLHFError(f"average.weights: expected shares in (0, 1) (the pretrained model's), got {bad}")
        if self.select == "fixed" and len(self.weights) != 1:
            raise RLHFError(f"average.weights: select=fixed takes exactly one share, got {self.weights}")
        if self.select == "reward" and not self.weights:
            raise RLHFError("average.weights: select=reward needs at least one candidate share")
        if self.prompts < 2 or self.margin < 0 or self.temperature <= 0:
            raise RLHFError(f"average: expected prompts >= 2, margin >= 0 and temperature > 0, got prompts "
                            f"{self.prompts}, margin {self.margin}, temperature {self.temperature}")


def ensemble_scores(reward_models: list, tokenizer, prompts: list[str], responses: list[str]) -> list[float]:
    """Per response: the mean over the ensemble of each model's normalized reward (as PPO optimizes it)."""
    per_model = [score_texts(rm, tokenizer, prompts, responses) for rm in reward_models]
    return [sum(col) / len(col) for col in zip(*per_model)]


def candidate_scores(policy, pretrained, tokenizer, reward_models: list, rm_tokenizer, prompts: list[str],
                     weights: list[float], sampling: SamplingConfig, temperature: float, seed: int) -> list[dict]:
    """For the RLHF policy (weight 0) and every candidate share: its greedy and sampled responses to the prompts
    and their ensemble scores. `policy` is left holding its own weights."""
    own = {k: v.clone() for k, v in policy.state_dict().items()}
    base = pretrained.state_dict()
    decodings = {"greedy": replace(sampling, temperature=0.0), "sampled": replace(sampling, temperature=temperature)}
    rows = []
    try:
        for w in [0.0, *weights]:
            policy.load_state_dict(average_state(own, base, w))
            row = {"weight": w}
            for name, cfg in decodings.items():
                responses = generate_texts(policy, tokenizer, prompts, cfg, seed=seed)
                row[name] = {"responses": responses,
                             "scores": ensemble_scores(reward_models, rm_tokenizer, prompts, responses)}
            rows.append(row)
    finally:
        policy.load_state_dict(own)
    return rows


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a over the same prompts and its standard error."""
    d = [y - x for x, y in zip(a, b)]
    m = sum(d) / len(d)
    return m, math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d))


def choose(rows: list[dict], margin: float) -> tuple[float, list[dict]]:
    """(the chosen share, a table row per candidate). A share qualifies when, under both decodings, its ensemble
    score minus the RLHF policy's (row 0) is above -`margin` paired standard errors: no worse than the policy
    beyond the noise. The largest qualifying share is chosen (it keeps the most of what pretraining taught),
    else 0 (the RLHF policy as it is)."""
    base, table, best = rows[0], [], 0.0
    for row in rows:
        entry, qualifies = {"weight": row["weight"]}, row["weight"] > 0
        for name in ("greedy", "sampled"):
            entry[f"rm_{name}"] = round(sum(row[name]["scores"]) / len(row[name]["scores"]), 4)
            if row["weight"] > 0:
                gain, se = paired(base[name]["scores"], row[name]["scores"])
                entry[f"gain_{name}"], entry[f"se_{name}"] = round(gain, 4), round(se, 4)
                qualifies &= gain > -margin * se
        entry["qualifies"] = bool(qualifies)
        table.append(entry)
        if qualifies:
            best = max(best, row["weight"])
    return best, table
