"""Run by tests/test_parallel_rl.py under torchrun (2 gloo ranks): PPO's global whitening, the errors of a batch
that does not divide, and the short PPO and GRPO runs of rl_runs.py; each rank writes what it saw to rank-R.json.
Arguments: out folder, policy folder, reward-model folder, prompts JSONL."""
import json
import sys
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.train import ppo
from tests.distributed import rl_runs

out, policy, reward_model, prompts_file = Path(sys.argv[1]), *sys.argv[2:5]
parallel.init()
r, n = parallel.rank(), parallel.world_size()
assert n == 2, n
result: dict = {"rank": r, "world_size": n}

# PPO's whitening over the global batch: every rank holds its 6 rows of the same 12-row batch
g = torch.Generator().manual_seed(0)
x = torch.randn(12, 7, generator=g)
mask = (torch.rand(12, 7, generator=g) > 0.3).float()
mask[:, 0] = 1
result["whitened"] = ppo.batch_whiten(parallel.shard(x), parallel.shard(mask)).tolist()
result["whitened_keep_mean"] = ppo.batch_whiten(parallel.shard(x), parallel.shard(mask), shift_mean=False).tolist()

# why the trainers average gradients themselves: a pass that calls the DDP-wrapped module's own module (as the
# packed and backbone passes do) leaves each rank its own gradient; parallel.average_gradients makes them equal
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
ddp.module(torch.full((2, 3), float(r + 1))).sum().backward()
result["grad_bypassing_ddp"] = ddp.module.weight.grad.tolist()
parallel.average_gradients(ddp)
result["grad_averaged"] = ddp.module.weight.grad.tolist()

# a global batch size that does not divide over 2 ranks: one clear error before anything runs
try:
    ppo.setup(ppo.PPOConfig(out=str(out / "never"), policy=policy, reward_model=reward_model, rollout_batch_size=9,
                            minibatch_size=9, micro_batch_size=9), ["a prompt"], None)
    result["error"] = None
except RLHFError as exc:
    result["error"] = str(exc)

prompts = [json.loads(line)["prompt"] for line in Path(prompts_file).read_text().splitlines()]
result["ppo"] = rl_runs.run_ppo(str(out / "ppo"), policy, reward_model, prompts)
result["grpo"] = rl_runs.run_grpo(str(out / "grpo"), policy, reward_model, prompts_file)
(out / f"rank-{r}.json").write_text(json.dumps(result))
parallel.shutdown()
