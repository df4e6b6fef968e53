"""Seconds per PPO step of a real `rlhf ppo` run, on one process or several (torchrun, gloo on CPU).

    python bench/ppo_step.py --nproc 2 --threads 1 -c my_ppo.yaml [--set key=value ...] -o runs/ppo-step
    # runs: ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m rlhf.cli ppo -c my_ppo.yaml ...

Each step's seconds come from the run's metrics.jsonl: the loop logs episodes_per_s = episodes so far /
seconds spent in steps so far (evaluation and logging excluded), so step k took
k * B / eps_k - (k - 1) * B / eps_{k-1}. The first step (warm-up) is left out of the median. Prints one JSON
line: per-step seconds, their median, the command. On GPUs drop ACCELERATE_USE_CPU (--gpu).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(run: Path, batch: int) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "episodes_per_s" in r]
    totals = [(i + 1) * batch / r["episodes_per_s"] for i, r in enumerate(rows)]
    return [t - (totals[i - 1] if i else 0.0) for i, t in enumerate(totals)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("-c", "--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--gpu", action="store_true", help="NCCL on GPUs (no ACCELERATE_USE_CPU)")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    if not a.gpu:
        env["ACCELERATE_USE_CPU"] = "true"
    args = ["-m", "rlhf.cli", "ppo", *(["-c", a.config] if a.config else []),
            *[x for s in a.set for x in ("--set", s)], "-o", a.out, "-q"]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.nproc), *args]
           if a.nproc > 1 else [sys.executable, *args])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    batch = yaml.safe_load((Path(a.out) / "config.yaml").read_text())["rollout_batch_size"]
    steps = step_seconds(Path(a.out), batch)
    later = sorted(steps[1:]) or steps
    print(json.dumps({"nproc": a.nproc, "threads": a.threads, "step_seconds": [round(s, 3) for s in steps],
                      "median_step_seconds": later[len(later) // 2], "command": " ".join(cmd)}))


if __name__ == "__main__":
    main()
