"""The data-parallel strategies behind `parallel.strategy`: one call puts a model and its optimizer on the
processes of the run.

    prepare(accelerator, model, make_opt, strategy="ddp") -> (model, opt, sched)

    make_opt(model) -> (opt, sched): builds the optimizer (and its schedule) for the model it is given;
    prepare calls it once, after the model is placed (FSDP2: after sharding, so the optimizer holds the shards).
    strategy: "ddp" (the default) or "fsdp2"; with one process both are today's path, accelerate's
    `accelerator.prepare(model, opt)`.

- ddp: `accelerator.prepare`: a full copy of the model on every process, gradients averaged over ranks
  (DistributedDataParallel).
- fsdp2: torch's own `fully_shard` (torch.distributed.fsdp), once per transformer block (the classes the model
  names in `_no_split_modules`) and once for the root, which keeps the embeddings and the output head: tied
  input/output embeddings are one parameter in one group. Parameters, gradients and AdamW's moments are split
  over the ranks; each block's weights are gathered for its forward and backward. Mixed precision stays as in
  one process: float32 weights, bf16 matmuls under `accelerator.autocast()` (model.mixed_precision); gradients
  are reduced in float32.

Every other function here is what a trainer needs around a model `prepare` returned: `as_forward` (a pass
that is not the model's own forward, such as the reward model's packed scores, run as the forward so that
DDP's gradient hooks and FSDP2's gathers happen), `clip_grad_norm_` (the global norm under either strategy),
`unwrap` and `gathered` (a plain module with the full weights on rank 0, for the final HF folder), `is_sharded`.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from rlhf.errors import RLHFError
from rlhf.parallel.dist import is_main, world_size


def is_sharded(model) -> bool:
    """True for a model sharded by `prepare(..., strategy="fsdp2")`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def unwrap(model):
    """The module under DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def prepare(accelerator, model, make_opt: Callable, strategy: str = "ddp"):
    """(model, opt, sched) ready to train on this run's processes; see the module's docstring."""
    if strategy not in ("ddp", "fsdp2"):
        raise RLHFError(f"parallel.strategy: expected ddp or fsdp2, got '{strategy}'")
    if strategy == "ddp" or world_size() == 1:
        opt, sched = make_opt(model)
        model, opt = accelerator.prepare(model, opt)
        return model, opt, sched
    shard_model(model, accelerator.device)
    opt, sched = make_opt(model)
    return model, opt, sched


def shard_model(model, device) -> None:
    """fully_shard each transformer block, then the root (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if getattr(model, "peft_config", None) is not None:
        raise RLHFError("parallel.strategy fsdp2 with model.lora: not supported; use parallel.strategy=ddp with LoRA")
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not blocks:
        raise RLHFError(f"parallel.strategy fsdp2: {type(model).__name__} names no transformer blocks "
                        "(_no_split_modules); use parallel.strategy=ddp")
    model.to(device)
    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def reshard(model) -> None:
    """Put every FSDP2 group of the model back to its shards (a forward without backward, such as an evaluation
    under no_grad, leaves the root's parameters gathered); nothing for other models."""
    if is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        for m in unwrap(model).modules():
            if isinstance(m, FSDPModule):
                m.reshard()


def as_forward(model, fn: Callable, *args, **kwargs):
    """fn(the unwrapped model, *args, **kwargs), run as the model's forward: DDP prepares the gradient all-reduce
    of the backward that follows and FSDP2 gathers the root's parameters (embeddings, heads) for it, which a
    direct call of the model's parts (`model.base_model`, the score head) would skip. One process: fn is called
    directly."""
    inner = unwrap(model)
    if model is inner and not is_sharded(inner):
        return fn(inner, *args, **kwargs)
    saved = inner.__dict__.get("forward")  # accelerate may keep a wrapped forward on the instance
    inner.forward = functools.partial(fn, inner)
    try:
        return model(*args, **kwargs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def clip_grad_norm_(accelerator, model, max_norm: float) -> torch.Tensor:
    """Clip the gradients to a global 2-norm of max_norm; returns the norm before clipping (the same on every
    rank). FSDP2: the norm of the sharded gradients is reduced over ranks (as torchtitan does)."""
    if not is_sharded(model):
        return accelerator.clip_grad_norm_(model.parameters(), max_norm)
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def gathered(model):
    """A plain module holding the full weights, on rank 0 (None elsewhere): the model itself (unwrapped) under
    DDP or one process; under FSDP2 every rank must call it (the shards are gathered to rank 0's CPU, then
    loaded into an unsharded copy of the model built from its config)."""
    model = unwrap(model)
    if not is_sharded(model):
        return model if is_main() else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    reshard(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    cls = next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))
    plain = cls(model.config)
    missing, unexpected = plain.load_state_dict(full, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.tie_weights()
    dtype = next(v.dtype for v in full.values() if v.is_floating_point())
    return plain.to(dtype).train(model.training)
