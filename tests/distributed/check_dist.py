"""Run by tests/test_parallel.py under torchrun: the global statistics and the shared run folder on 2 ranks."""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.rundir import RunDir


@dataclass
class Config:
    a: int = 1


out = Path(sys.argv[1])
parallel.init()
r, n = parallel.rank(), parallel.world_size()
assert n == 2, n
g = torch.Generator().manual_seed(0)
full = torch.randn(12, 7, generator=g, dtype=torch.float64)  # the global batch, the same on every rank
mask = (torch.rand(12, 7, generator=g) > 0.3).double()
x, m = parallel.shard(full), parallel.shard(mask)
assert x.shape[0] == 6
mean, var = parallel.global_mean_var(x, m)
w = parallel.whiten(x, m)
metrics = parallel.mean_metrics({"loss": float(x.sum()), "note": "r"}, weight=1.0)
picked = parallel.shard(list(range(8)), "prompts")
with RunDir(out / "run", Config()) as run:
    run.log(1, loss=metrics["loss"])
    (run.sub(f"shard-{r}.txt")).write_text(str(r))  # every rank writes its part into the shared folder
    run.write_summary("t", {"result": {"rank": r}})
result = {"rank": r, "mean": float(mean), "var": float(var), "whitened": w.tolist(), "loss": metrics["loss"],
          "picked": picked, "gathered": parallel.gather_objects(r), "bcast": parallel.broadcast_object(r * 10 + 1)}
(out / f"rank-{r}.json").write_text(json.dumps(result))
parallel.shutdown()
