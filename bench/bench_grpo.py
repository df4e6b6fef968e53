"""GRPO throughput: our `rlhf grpo` vs TRL 1.x GRPOTrainer, side by side in one run.

Same on both sides (the peer is ../shared/bench/peers/peer_trl_grpo.py): from-scratch GPT-2 policy and KL
reference (4 layers, 256 wide, 4 heads, 256 positions, 4.3M parameters), a from-scratch
GPT2ForSequenceClassification reward model, `.peers/tok` (vocab 4096), HH first-turn prompts of at most 64
tokens, group size 4, 16 completions per step, 32 new tokens at temperature 1, one update per batch, KL
coefficient 0.04 as a loss term (k3), token-level loss aggregation (TRL's default "dapo"), group-std
scaling, lr 1e-5, 64 episodes (4 steps), fp32 on CPU, the same torch thread count. Our no-EOS penalty is off
(TRL has none). The peer itself turns off TRL's bf16 and gradient-checkpointing defaults (fp32, no
recomputation), as we run.

    python bench/bench_grpo.py [--threads 2] [--episodes 64] [--repeats 1] [--skip-peer]

Timing: TRL's is trainer.train() as the peer prints it; ours is the training loop (`seconds` in the run's
summary: sampling, reward scoring, reference and policy passes, updates, per-step metrics), without model
loading, the final save and the plots. Both sides' CPU time (process user + system seconds) of the same span
is recorded too: on a shared machine whose load changes during a run, episodes per CPU-second compare the
sides more steadily than wall time (use --threads 1 then, so no thread waits spinning for a descheduled one).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_ppo import build  # the same policy / reward model folders and prompts as the PPO benchmark
from peer_env import peer_arguments, peer_env, require_peers  # bench/ is on sys.path when a script here runs

PEER_WRAPPER = r"""
import json, os, runpy, sys, time
import trl
_train = trl.GRPOTrainer.train
def train(self, *a, **k):  # CPU seconds of trainer.train(), beside the peer's wall-clock timing
    c = time.process_time()
    out = _train(self, *a, **k)
    print("BENCH_CPU " + json.dumps({"train_cpu_seconds": time.process_time() - c}))
    return out
trl.GRPOTrainer.train = train
sys.argv = [os.environ["BENCH_PEER"], *sys.argv[1:]]
runpy.run_path(os.environ["BENCH_PEER"], run_name="__main__")
"""

ROOT = Path(__file__).resolve().parents[1]
B, G, RESP = 16, 4, 32



def ours(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from rlhf.rollout.engine import SamplingConfig
    from rlhf.train.common import OptimConfig
    from rlhf.train.grpo import GRPOConfig, run

    work = Path(args.work)
    cfg = GRPOConfig(out=str(work / "ours"), policy=str(work / "policy"), reward_model=str(work / "rm"),
                     prompts=str(work / "prompts.jsonl"), eval_prompts=None, steps=args.episodes // B,
                     prompts_per_step=B // G, group_size=G, micro_batch_prompts=B // G, epochs=1,
                     sampling=SamplingConfig(max_new_tokens=RESP, temperature=1.0, draw=args.draw), kl_mode="loss",
                     beta=0.04,
                     loss_agg="token", scale_rewards=True, no_eos_score=None, reward_clip=1e9, samples_every=0,
                     optim=OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=0, schedule="linear"))
    run(cfg, show_progress=False)
    result = json.loads((work / "ours" / "summary.json").read_text())["result"]
    return {"episodes": result["episodes"], "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
            "episodes_per_s": result["episodes_per_s"],
            "response_length": result["response_length"], "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times")
    ap.add_argument("--draw", default="inverse_cdf", choices=["multinomial", "inverse_cdf"],
                    help="our sampling.draw (inverse_cdf: the engine's default; multinomial: as HF generate draws)")
    peer_arguments(ap, "trl-new", "peer_trl_grpo.py")
    args = ap.parse_args()
    if args.ours_only:
        print("BENCH_JSON " + json.dumps(ours(args)))
        return

    require_peers(args.tok, args.python, args.peer, args.data)
    env = peer_env(args.threads, THREADS=str(args.threads), BENCH_PEER=args.peer)
    report: dict = {"threads": args.threads, "episodes": args.episodes, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as work:
        report.update(build(Path(work), args.tok, args.data))
        for rep in range(args.repeats):
            row: dict = {}
            if not args.skip_peer:
                proc = subprocess.run([args.python, "-c", PEER_WRAPPER, args.tok, args.data, str(args.episodes)],
                                      env=env, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("PEER_JSON ")]
                if proc.returncode or not lines:
                    sys.exit(f"peer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                row["trl"] = trl = json.loads(lines[-1][len("PEER_JSON "):])
                cpu = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_CPU ")]
                trl["train_cpu_seconds"] = json.loads(cpu[-1][len("BENCH_CPU "):])["train_cpu_seconds"]
                print(f"[{rep + 1}] trl:  {trl['episodes']} episodes in {trl['wall_s']}s = {trl['episodes_per_s']} "
                      "episodes/s, "
                      f"mean completion {trl['mean_completion_len']} tokens (dropped args {trl['dropped_args']}, "
                      f"threads={trl['threads']})", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--ours-only", "--work", work, "--threads",
                                   str(args.threads),
                                   "--episodes", str(args.episodes), "--draw", args.draw], env=env, capture_output=True,
                                   text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
            if proc.returncode or not lines:
                sys.exit(f"ours failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            row["ours"] = us = json.loads(lines[-1][len("BENCH_JSON "):])
            print(f"[{rep + 1}] ours: {us['episodes']} episodes in {us['seconds']:.1f}s = {us['episodes_per_s']:.2f} "
                  "episodes/s, "
                  f"mean response {us['response_length']:.1f} tokens, threads={us['threads']}", flush=True)
            if "trl" in row:
                row["ratio"] = us["episodes_per_s"] / row["trl"]["episodes_per_s"]
                row["ratio_cpu"] = (row["trl"]["train_cpu_seconds"] / us["cpu_seconds"]
                                    * us["episodes"] / row["trl"]["episodes"])
                print(f"[{rep + 1}] ratio ours/trl: {row['ratio']:.2f}x episodes/s; per CPU second (ours "
                      f"{us['episodes'] / us['cpu_seconds']:.2f}, trl "
                      f"{row['trl']['episodes'] / row['trl']['train_cpu_seconds']:.2f} "
                      f"episodes per CPU-s): {row['ratio_cpu']:.2f}x")
            report["runs"].append(row)
    print(f"prompt tokens (mean): ours {report['ours_prompt_tokens']:.1f}, trl {report['peer_prompt_tokens']:.1f}")
    print("BENCH_JSON " + json.dumps(report))


if __name__ == "__main__":
    main()
