"""Run by tests/test_parallel_train.py under torchrun: several supervised trainings on 2 ranks in one launch.

argv: SPEC.json, a list of {"trainer": "pretrain" | "sft" | "reward", "config": {...}} run in order (each writes its
own run folder, `config["out"]`). Every rank writes rank-<r>.json beside SPEC.json with the world size it saw.
"""
import json
import sys
from pathlib import Path

from rlhf import parallel
from rlhf.config import build_config
from rlhf.train import pretrain, reward, sft

TRAINERS = {"pretrain": (pretrain, pretrain.PretrainConfig), "sft": (sft, sft.SFTConfig),
            "reward": (reward, reward.RewardConfig)}

spec_file = Path(sys.argv[1])
parallel.init()
assert parallel.world_size() == 2, parallel.world_size()
for item in json.loads(spec_file.read_text()):
    module, cls = TRAINERS[item["trainer"]]
    module.run(build_config(cls, item["config"], str(spec_file)), False)
(spec_file.parent / f"rank-{parallel.rank()}.json").write_text(
    json.dumps({"rank": parallel.rank(), "world_size": parallel.world_size()}))
parallel.shutdown()
