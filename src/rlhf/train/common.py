"""Plumbing every trainer shares: seeding, the Accelerator, the optimizer and its schedule, NaN guard."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from rlhf.errors import RLHFError
from rlhf.models.options import check_mixed_precision


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # AdamW's kernels (PyTorch's choice): foreach (the default: fast, but temporaries the size of the trained
    # weights at every step) | for-loop (one tensor at a time: the least memory) | fused (one kernel per tensor)
    implementation: str = "foreach"


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
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    kernels = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}, "fused": {"fused": True}}
    if cfg.implementation not in kernels:
        raise RLHFError(f"optim.implementation: expected foreach, for-loop or fused, got '{cfg.implementation}'")
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            **kernels[cfg.implementation])

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.schedule == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 1.0

    if cfg.schedule not in ("cosine", "linear", "constant"):
        raise RLHFError(f"optim.schedule: unknown schedule '{cfg.schedule}' (cosine, linear or constant)")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class NonFiniteLoss(RLHFError):
    """A loss became NaN or infinite: the run stops. `updates_applied`: optimizer steps already taken in
    the failing step (a trainer keeps the weights only when there were none)."""

    def __init__(self, message: str, updates_applied: int = 0):
        super().__init__(message)
        self.updates_applied = updates_applied


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"loss became {loss.item()} at step {step}; stopping (the last good checkpoint is kept)")


def optimizer_step(accelerator: Accelerator, model, opt, sched, loss: torch.Tensor, step: int, grad_clip: float) -> float:
    """The supervised trainers' update: stop on a non-finite loss, backward, clip, step, schedule.
    Returns the gradient norm before clipping."""
    check_finite(loss, step)
    accelerator.backward(loss)
    return apply_update(accelerator, model, opt, sched, grad_clip)


def apply_update(accelerator: Accelerator, model, opt, sched, grad_clip: float) -> float:
    """Clip the accumulated gradients, step the optimizer and the schedule, clear the gradients."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)
