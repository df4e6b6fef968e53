"""The HH reward settings table of the README: the hh-harmless preset's reward stage under a few settings,
seeds 0, 1, 2 (each its own train/held-out split), N runs at a time; prints held-out accuracy per split.

    python scripts/hh_reward_settings.py --init SMOLLM2_FOLDER [--data FILE] [--parallel 8] [--only base,ep2]
        [--gpu-arithmetic]

--gpu-arithmetic (as run on one H100): one forward/backward per step, no recomputation and foreach AdamW,
the same gradients as the preset's CPU memory savers (micro-batches, gradient checkpointing, for-loop AdamW).
Results (one JSON line per run, with the held-out scores) go to --out/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "base": [], "lr1e-4": ["optim.lr=1e-4"], "ep2": ["epochs=2"], "ep2lr1e-4": ["epochs=2", "optim.lr=1e-4"],
    "ep3": ["epochs=3"], "emb": ["train_embeddings=true"], "len512": ["max_len=512"],
    "bs32lr1e-4": ["batch_size=32", "optim.lr=1e-4"],
}
GPU = ["micro_batch_tokens=0", "model.gradient_checkpointing=false", "optim.implementation=foreach"]


def one(args) -> None:
    """Worker: one run; appends its held-out accuracy and scores to the results file."""
    import rlhf.train.reward as R
    import yaml

    from rlhf.config import _set_path, build_config, to_dict  # _set_path: the --set machinery (dotted keys)
    from rlhf.tasks.hh import _reward_defaults

    d = to_dict(_reward_defaults())
    d.update(seed=args.seed, init=args.init, data=args.data, out=str(Path(args.out) / f"{args.name}-s{args.seed}"),
             limit=args.limit)
    for o in args.set:
        k, v = o.split("=", 1)
        _set_path(d, k, yaml.safe_load(v))
    cfg = build_config(R.RewardConfig, d, "settings")
    seen, score = {}, R.pairwise_accuracy

    def keep_scores(rankings, scores):  # the held-out scores, for averaging models on one split afterwards
        seen["s"] = scores
        return score(rankings, scores)
    R.pairwise_accuracy = keep_scores
    R.run(cfg, show_progress=False)
    r = json.loads((Path(cfg.out) / "summary.json").read_text())["result"]
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps({"name": args.name, "seed": args.seed, "set": args.set, "acc": r["eval_pairwise_accuracy"],
                            "pairs": r["eval_pairs"], "train_seconds": r["train_seconds"],
                            "scores": seen.get("s")}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/hh-harmless/train.jsonl"))
    ap.add_argument("--out", default="runs/hh-reward-settings")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--only", default=",".join(SETTINGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--gpu-arithmetic", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="first N comparisons only (a quick check)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return one(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(n, s) for s in map(int, args.seeds.split(",")) for n in args.only.split(",")]
    running: list = []
    for name, seed in jobs:
        while len(running) >= args.parallel:
            running.pop(0).wait()
        sets = SETTINGS[name] + (GPU if args.gpu_arithmetic else [])
        running.append(subprocess.Popen([sys.executable, __file__, "--worker", "--name", name, "--seed", str(seed),
                                         "--init", args.init, "--data", args.data, "--out", args.out,
                                         *(["--limit", str(args.limit)] if args.limit else []),
                                         *[x for o in sets for x in ("--set", o)]]))
    for p in running:
        p.wait()
    rows = [json.loads(line) for line in open(Path(args.out) / "results.jsonl")]
    for name in args.only.split(","):
        accs = [r["acc"] for r in sorted(rows, key=lambda r: r["seed"]) if r["name"] == name]
        if accs:
            spread = f" ± {statistics.stdev(accs) * 100:.1f}" if len(accs) > 1 else ""
            print(f"{name:12s} " + " ".join(f"{a * 100:.1f}" for a in accs) + "   mean "
                  f"{statistics.mean(accs) * 100:.1f}{spread}")


if __name__ == "__main__":
    main()
