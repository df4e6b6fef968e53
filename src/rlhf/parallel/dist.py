"""What a trainer needs to run as one of many processes (torch.distributed, launched by `torchrun` or
`accelerate launch`), and to run unchanged as the only one.

Every function here is the identity (or the obvious single-process answer) when no process group is up, so
trainer code calls them unconditionally. The group itself is accelerate's (`init()` makes its PartialState,
which joins the group torchrun describes in the environment: gloo on CPU, NCCL on GPUs).

Conventions:
- one data stream, sharded: every rank draws the same global batch from identically seeded generators and
  keeps its contiguous slice (`shard`), so the union over ranks is the single-process order;
- statistics over the global batch: sums and counts are all-reduced (`global_mean`, `global_mean_var`,
  `whiten`, `mean_metrics`), in float64, two passes for the variance, with the n - 1 correction of
  `torch.var`;
- rank 0 writes files (`is_main`); `barrier()` where a folder is read after another rank wrote it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rlhf.errors import RLHFError


def launched() -> bool:
    """True when this process was started as one of several (torchrun / accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group the launcher describes (a no-op for one process or when already joined)."""
    if launched() and not initialized():
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # without cpu=True accelerate joins the group but reports DistributedType.NO on a CPU machine: no DDP,
        # every process thinking it is the main one
        PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def shutdown(ok: bool = True) -> None:
    """Leave the process group at the end of a command: the ranks meet (when `ok`: every rank got here), then the
    group is destroyed, so no rank exits while gloo's threads still serve another (an abort at exit otherwise)."""
    if initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if initialized():
        dist.barrier()


def shard(items, what: str = "batch"):
    """This rank's contiguous slice of a global batch (a list or a tensor's first dimension): rank r of n
    keeps items [r * len / n, (r + 1) * len / n). The global batch must divide evenly, so that every rank
    does the same number of steps and the token-mean losses weigh ranks alike."""
    n = world_size()
    if n == 1:
        return items
    if len(items) % n:
        raise RLHFError(f"{what} of {len(items)} does not divide over {n} processes; "
                        f"use a multiple of {n}")
    per = len(items) // n
    return items[rank() * per:(rank() + 1) * per]


def _reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce (sum by default) a copy of `t` in float64 on the group's device."""
    out = t.detach().to(torch.float64)
    if initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        out = out.to(device)
        dist.all_reduce(out, op=op or dist.ReduceOp.SUM)
    return out.to(t.device)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `t` (same shape on every rank), in float64."""
    return _reduce(t)


def all_max(t: torch.Tensor) -> torch.Tensor:
    return _reduce(t, dist.ReduceOp.MAX if initialized() else None)


def global_count(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """How many entries the global batch has (where mask is 1)."""
    local = torch.tensor(float(x.numel()), dtype=torch.float64) if mask is None else mask.sum().to(torch.float64)
    return all_sum(local.cpu())


def global_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of x over every rank's entries (where mask is 1), as a float64 scalar."""
    n = global_count(mask, x)
    s = all_sum((x if mask is None else x * mask).sum().cpu())
    return s / n.clamp(min=1)


def global_mean_var(x: torch.Tensor, mask: torch.Tensor | None = None,
                    unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of x over every rank's entries (where mask is 1), two-pass, float64; with `unbiased`,
    the variance divides by n - 1 as torch.var does."""
    n = global_count(mask, x)
    mean = global_mean(x, mask)
    dev = (x.to(torch.float64).cpu() - mean) ** 2
    sq = all_sum((dev if mask is None else dev * mask.cpu()).sum())
    denom = (n - 1) if unbiased else n
    return mean, sq / denom.clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with the global batch's mean and variance (shift_mean=False keeps the mean,
    as advantage-free reward scaling does)."""
    mean, var = global_mean_var(x, mask)
    mean, var = mean.to(x.dtype).to(x.device), var.to(x.dtype).to(x.device)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def mean_metrics(metrics: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """The same metrics averaged over ranks, weighted by `weight` (e.g. this rank's number of episodes), so that
    every rank logs (and rank 0 writes) the global batch's numbers. Non-numbers pass through from this rank.
    Every rank must call it with the same keys in the same order."""
    if not initialized():
        return dict(metrics)
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    vals = torch.tensor([float(metrics[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64)
    total = all_sum(vals)
    out = dict(metrics)
    out.update({k: float(total[i] / total[-1]) for i, k in enumerate(keys)})
    return out


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled)."""
    if not initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s obj on every rank."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def per_rank(n: int, key: str) -> int:
    """This rank's share of a global batch size `n` (the config's `key`); one clear error when it does not divide."""
    w = world_size()
    if n % w:
        raise RLHFError(f"{key}={n} does not divide over {w} processes (batch sizes are global); "
                        f"use a multiple of {w}")
    return n // w


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a stop or a failure on one rank stops them all)."""
    if not initialized():
        return bool(flag)
    return bool(all_sum(torch.tensor(float(bool(flag)))) > 0)


def first_reason(reason: str | None) -> str | None:
    """The first rank's non-empty reason (a stop request), the same on every rank; None when no rank has one."""
    if not initialized():
        return reason
    return next((r for r in gather_objects(reason) if r), None)


def mean_item(x: torch.Tensor) -> float:
    """x.mean() as a float: of this process's tensor alone (the same op as ever) with one process, of the global
    batch (every rank's x, equal or not in size) with several."""
    return x.mean().item() if not initialized() else float(global_mean(x))


def average_gradients(*models) -> None:
    """Average the gradients of `models` over the ranks, in one all-reduce (flattened), as DistributedDataParallel
    would have in backward. For training passes that call the wrapped module's parts (`base_model`, a packed
    forward, a value head on the backbone) and so never run DDP's forward, whose gradient hooks then stay idle.
    A parameter without a gradient on this rank keeps none (the optimizer skips it, as with one process)."""
    if not initialized() or world_size() == 1:
        return
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
