"""Sharded checkpoints of models and optimizers through torch.distributed.checkpoint (DCP), readable by any
number of processes.

Under many processes a checkpoint's weights and optimizer states go to `<checkpoint>/dcp/`: every rank writes
its own shards (its slice under FSDP2; under DDP the replicated tensors once), keyed by the parameters' names
(FQNs), so a run on N processes, on one process or under the other strategy reads them back and takes the
slices it needs. One process reads the folder without a process group. `load_full_weights` and
`load_full_optimizer` put a one-process checkpoint (full tensors; optimizer state keyed by position) into a
model sharded by FSDP2.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from rlhf.parallel.dist import initialized
from rlhf.parallel.fsdp import is_sharded, reshard, unwrap

FOLDER = "dcp"


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / FOLDER / ".metadata").is_file()


def _raw(opt):
    """The torch optimizer under accelerate's AcceleratedOptimizer."""
    return getattr(opt, "optimizer", opt)


def _state(models: dict, optimizers: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    for m in models.values():
        reshard(m)
    return {"models": {name: get_model_state_dict(unwrap(m)) for name, m in models.items()},
            "optimizers": {name: get_optimizer_state_dict(unwrap(m), _raw(opt))
                           for name, (m, opt) in optimizers.items()}}


def save(path: str | Path, models: dict, optimizers: dict) -> None:
    """Write `models` (name -> module) and `optimizers` (name -> (its model, optimizer)) to `path`/dcp;
    every rank must call it."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(models, optimizers), checkpoint_id=str(Path(path) / FOLDER), no_dist=not initialized())


def load(path: str | Path, models: dict, optimizers: dict) -> None:
    """Read what `save` wrote into `models` and `optimizers` (the same names), resharded to this run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _state(models, optimizers)
    with warnings.catch_warnings():  # one process reads without a group, as intended: torch warns all the same
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(Path(path) / FOLDER), no_dist=not initialized())
    for name, m in models.items():
        set_model_state_dict(unwrap(m), state["models"][name])
    for name, (m, opt) in optimizers.items():
        set_optimizer_state_dict(unwrap(m), _raw(opt), state["optimizers"][name])


def load_full_weights(model, weights: dict) -> None:
    """Full tensors (a one-process checkpoint) into `model`: load_state_dict, or each rank's slice under FSDP2.
    Keys the file leaves out (tied output embeddings) keep their values."""
    if not is_sharded(model):
        unwrap(model).load_state_dict(weights, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(unwrap(model), weights, options=StateDictOptions(full_state_dict=True, strict=False))


def load_full_optimizer(model, opt, state: dict) -> None:
    """A one-process optimizer state_dict (states keyed by position in the param groups) into `opt`; under
    FSDP2 the positions are mapped to the parameters' names and each rank keeps its slice."""
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    fqn = {}
    groups = []
    for saved, group in zip(state["param_groups"], _raw(opt).param_groups):
        fqn.update({i: names[id(p)] for i, p in zip(saved["params"], group["params"])})
        groups.append({**saved, "params": [fqn[i] for i in saved["params"]]})
    full = {"state": {fqn[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(unwrap(model), _raw(opt), full, options=StateDictOptions(full_state_dict=True))
