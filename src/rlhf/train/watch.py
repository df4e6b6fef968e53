"""What an RL run can watch without a gold reward, and stop by (Gao et al. 2022; Coste et al. 2024).

A reward-model ensemble scores every sampled batch: PPO optimizes one member, the mean, the minimum or the
mean minus a multiple of the spread (uncertainty-weighted), and the members' disagreement on the policy's
samples rises as the policy leaves the data the models were trained on. The KL to the reference is the
other signal: the gold reward peaks at a small KL and falls past it while the proxy keeps rising. Each is
read as the mean of the last 3 batches (one batch's estimate is noisy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rlhf import parallel

ENSEMBLE_MODES = ("first", "mean", "min", "uwo")


def ensemble_score(members: torch.Tensor, how: str, uwo_coef: float) -> torch.Tensor:
    """(K, B) member scores -> (B,) the reward to optimize."""
    if how == "first":
        return members[0]
    return {"mean": members.mean(0), "min": members.min(0).values,
            "uwo": members.mean(0) - uwo_coef * members.std(0)}[how]


@dataclass
class Watch:
    """Per-iteration gold-free signals and the stop rules: the KL budget, and disagreement past
    disagreement_stop x its first 3 iterations' mean (0: off, for either)."""
    kl_budget: float = 0.0
    disagreement_stop: float = 0.0
    kl: list[float] = field(default_factory=list)
    disagreement: list[float] = field(default_factory=list)

    def update(self, kl: float, member_scores: torch.Tensor | None) -> dict:
        """This batch's signals; a "stop" reason when a rule fires."""
        out: dict = {}
        self.kl.append(kl)
        if member_scores is not None:
            # over the global batch on many processes (`kl` is the caller's global mean already)
            self.disagreement.append(parallel.mean_item(member_scores.std(0)))
            out.update(ens_disagreement=self.disagreement[-1], ens_mean=parallel.mean_item(member_scores),
                       ens_min=parallel.mean_item(member_scores.min(0).values))
            start, recent = float(np.mean(self.disagreement[:3])), float(np.mean(self.disagreement[-3:]))
            if self.disagreement_stop and len(self.disagreement) > 3 and recent > self.disagreement_stop * start:
                out["stop"] = (f"ensemble disagreement {recent:.3f} (last 3 batches) "
                               f"passed {self.disagreement_stop:g} x its start ({start:.3f})")
        spent = float(np.mean(self.kl[-3:]))
        if self.kl_budget and spent > self.kl_budget:
            out["stop"] = (f"KL budget spent: the last batches' mean KL to the reference is {spent:.2f} nats "
                           f"(budget {self.kl_budget:g})")
        return out

    def summary(self) -> dict:
        if not self.disagreement:
            return {}
        return {"ens_disagreement_start": float(np.mean(self.disagreement[:3])),
                "ens_disagreement_end": self.disagreement[-1]}
