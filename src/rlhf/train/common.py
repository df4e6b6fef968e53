"""Plumbing every trainer shares: seeding, the Accelerator, the optimizer and its schedule, NaN guard, and the
two small tensor helpers every loss uses (the masked mean, the score of a response without EOS)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.models.options import check_mixed_precision
from rlhf.parallel.fsdp import clip_grad_norm_


KERNELS = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """AdamW with warmup and a decaying learning rate, as every trainer uses it."""
    lr: float = 3e-3  # peak learning rate (after warmup)
    weight_decay: float = 0.1  # decoupled weight decay on matrices (biases and norms get none)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's moment decay rates
    eps: float = 1e-8  # AdamW's denominator epsilon
    warmup_steps: int = 50  # linear warmup from lr / warmup_steps to lr
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1  # cosine: the final learning rate as a fraction of lr
    grad_clip: float = 1.0  # the gradient's global norm is clipped to this
    # AdamW's kernels (PyTorch's choice): foreach (the default: fast, but temporaries the size of the trained
    # weights at every step) | for-loop (one tensor at a time: the least memory) | fused (one kernel per tensor)
    implementation: str = "foreach"

    def validate(self) -> None:
        if self.implementation not in KERNELS:
            raise RLHFError(f"optim.implementation: expected foreach, for-loop or fused, got '{self.implementation}'")
        if self.schedule not in SCHEDULES:
            raise RLHFError(f"optim.schedule: unknown schedule '{self.schedule}' (cosine, linear or constant)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_seed(seed)


def make_accelerator(seed: int, grad_accum: int = 1, mixed_precision: str = "no") -> Accelerator:
    """Single process on a laptop, many under `accelerate launch`; each rank gets its own seed.
    `mixed_precision` (no | bf16) is accelerate's: the trainer runs its passes under `accelerator.autocast()`.
    One process may run several trainers (the pipeline), each with its own precision, so accelerate's
    process-wide state is re-made when the precision changes (the process group, if any, is kept)."""
    check_mixed_precision(mixed_precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", "no") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision)
    seed_everything(seed + accelerator.process_index * 1_000_003)
    return accelerator


def make_optimizer(model, cfg: OptimConfig, total_steps: int):
    cfg.validate()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            **KERNELS[cfg.implementation])

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.schedule == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class NonFiniteLoss(RLHFError):
    """A loss became NaN or infinite: the run stops. `updates_applied`: optimizer steps already taken in
    the failing step (a trainer keeps the weights only when there were none)."""

    def __init__(self, message: str, updates_applied: int = 0):
        super().__init__(message)
        self.updates_applied = updates_applied


def check_finite(loss: torch.Tensor, step: int, updates_applied: int = 0) -> None:
    """Raise NonFiniteLoss when `loss` is NaN or infinite; `updates_applied`: optimizer steps the current
    step has already taken. Under many processes every rank stops when any rank's loss is not finite."""
    bad = not torch.isfinite(loss).all()
    if parallel.world_size() > 1:
        bad = bool(parallel.all_max(torch.tensor(float(bad))) > 0)
    if bad:
        raise NonFiniteLoss(f"loss became {loss.item()} at step {step}; stopping (the last good checkpoint is kept)",
                            updates_applied)


def optimizer_step(accelerator: Accelerator, model, opt, sched, loss: torch.Tensor, step: int, grad_clip: float,
                   updates_applied: int = 0) -> float:
    """The supervised trainers' update: stop on a non-finite loss, backward, clip, step, schedule.
    Returns the gradient norm before clipping."""
    check_finite(loss, step, updates_applied)
    accelerator.backward(loss)
    return apply_update(accelerator, model, opt, sched, grad_clip)


def apply_update(accelerator: Accelerator, model, opt, sched, grad_clip: float) -> float:
    """Clip the accumulated gradients, step the optimizer and the schedule, clear the gradients."""
    grad_norm = clip_grad_norm_(accelerator, model, grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)


def global_token_mean(total: torch.Tensor, count) -> tuple[torch.Tensor, float]:
    """A token-mean loss over the global batch from this rank's token sum `total` over `count` tokens:
    (the loss to backward, the global mean as a number). Gradients are averaged over ranks (DDP, FSDP2), so
    the loss backwarded is total * ranks / global count: its averaged gradient is the global mean's."""
    n = parallel.all_sum(torch.as_tensor(count, dtype=torch.float64).cpu()).clamp(min=1)
    mean = float(parallel.all_sum(total.detach().cpu()) / n)
    return total * (parallel.world_size() / n).to(total.dtype).to(total.device), mean


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """The mean of x where mask is 1 (over `dim`, or over everything); 0 where the mask is empty."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def no_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, no_eos_score: float | None) -> torch.Tensor:
    """The reward-model scores with `no_eos_score` in place of the score of every response that never
    produced EOS (`finished` false); unchanged when no_eos_score is None."""
    if no_eos_score is None:
        return scores
    return torch.where(finished, scores, torch.full_like(scores, no_eos_score))
