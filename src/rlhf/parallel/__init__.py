"""Running a trainer as many processes: the process group, sharded data, global statistics, rank-0 writes
(`dist`), and the choice of data-parallel strategy (`ParallelConfig`)."""
from dataclasses import dataclass

from rlhf.errors import RLHFError
from rlhf.parallel.dist import (all_max, all_sum, barrier, broadcast_object, gather_objects, global_mean,
                                global_mean_var, init, initialized, is_main, launched, mean_metrics, rank, shard,
                                whiten, world_size)
from rlhf.parallel.dist import any_rank, average_gradients, first_reason, mean_item, per_rank, shutdown

STRATEGIES = ("ddp", "fsdp2")


@dataclass
class ParallelConfig:
    """How a trainer's model is spread over the processes of a `torchrun` / `accelerate launch` run (one process:
    ignored). ddp: a full copy per process, gradients all-reduced (DistributedDataParallel); fsdp2: parameters,
    gradients and optimizer state sharded per transformer block (torch's fully_shard), for models that do not fit
    one device."""
    strategy: str = "ddp"

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RLHFError(f"parallel.strategy: expected ddp or fsdp2, got '{self.strategy}'")


__all__ = ["ParallelConfig", "STRATEGIES", "all_max", "all_sum", "barrier", "broadcast_object", "gather_objects",
           "global_mean", "global_mean_var", "init", "initialized", "is_main", "launched", "mean_metrics", "rank",
           "shard", "shutdown", "whiten", "world_size"]
__all__ += ["any_rank", "average_gradients", "first_reason", "mean_item", "per_rank"]
