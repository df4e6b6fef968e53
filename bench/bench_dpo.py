"""DPO training throughput: our `rlhf dpo` trainer vs TRL's DPOTrainer, side by side in one run.

Same model (from-scratch GPT-2: 4 layers, 256 wide, 4 heads, 512 positions, 4.3M parameters; dropout off on
both sides, as TRL's disable_dropout), same tokenizer (.peers/tok), the first N HH pairs, 8 pairs per step,
max length 256, 1 epoch, lr 1e-4, beta 0.1, sigmoid loss, fp32 on CPU, the same torch thread count. Each side
runs in its own subprocess; tokenization and model building are excluded from both timings. TRL computes the
reference log-probs inside its training loop (a reference forward per step); ours computes them once into a
cache before the loop, so our time is shown with the cache time added (the headline) and without it.

    python bench/bench_dpo.py                  # 512 pairs, TRL in fp32 (see --trl-defaults)
    python bench/bench_dpo.py --pairs 128 --threads 2 --repeats 2

TRL's DPOConfig defaults to bf16=True and gradient_checkpointing=True; on a CPU without bf16 matrix units
that is slower and not the computation we do, so the peer runs with both off unless --trl-defaults is given.
TRL truncates prompt + completion to 256 tokens keeping the start; ours keeps each response (up to 255
tokens) and cuts the prompt from the left, so the two sides train on slightly different tokens: both token
counts are printed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_env import peer_arguments, peer_env, require_peers  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]

PEER_WRAPPER = r"""
import json, os, runpy, sys
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import trl
if os.environ.get("BENCH_TRL_DEFAULTS") != "1":
    _Base = trl.DPOConfig
    class DPOConfig(_Base):
        def __init__(self, *a, **k):
            k.setdefault("bf16", False)
            k.setdefault("gradient_checkpointing", False)
            super().__init__(*a, **k)
    trl.DPOConfig = DPOConfig
import time
_train = trl.DPOTrainer.train
CPU = {}
def train(self, *a, **k):  # CPU seconds of trainer.train(), beside the peer's wall-clock timing
    c = time.process_time()
    out = _train(self, *a, **k)
    CPU["train"] = time.process_time() - c
    return out
trl.DPOTrainer.train = train
sys.argv = [os.environ["BENCH_PEER"], "dpo", *sys.argv[1:]]
g = runpy.run_path(os.environ["BENCH_PEER"], run_name="__main__")
tr = g["tr"]
ds, L = tr.train_dataset, tr.args.max_length
tokens = sum(min(L, len(r["prompt_ids"]) + len(r["chosen_ids"])) + min(L, len(r["prompt_ids"]) + len(r["rejected_ids"]))
             for r in ds)
print("BENCH_JSON " + json.dumps({"train_seconds": g["t2"] - g["t1"], "train_cpu_seconds": CPU["train"],
      "pairs_given": len(g["rows"]), "pairs_trained": len(ds),
      "tokens_trained": tokens, "bf16": tr.args.bf16, "gradient_checkpointing": tr.args.gradient_checkpointing,
      "threads": torch.get_num_threads()}))
"""


def ours(args) -> dict:
    """Runs in a subprocess: our `rlhf.train.dpo.run` on the same pairs."""
    import torch

    torch.set_num_threads(args.threads)
    from rlhf.train.common import OptimConfig
    from rlhf.train.dpo import DPOConfig, run

    cfg = DPOConfig(out=str(Path(args.work) / "ours"), policy=str(Path(args.work) / "init"), data=args.data,
                    limit=args.pairs, on_bad="skip", eval_fraction=0.0, kl_prompts=0, epochs=1.0, batch_size=8,
                    max_len=256, beta=0.1, loss="sigmoid", length_buckets=args.length_buckets,
                    optim=OptimConfig(lr=1e-4, warmup_steps=0, weight_decay=0.0, schedule="linear", betas=(0.9, 0.999)))
    out = run(cfg, show_progress=False)
    from rlhf.data.comparisons import load_rankings
    from rlhf.models.lm import load_tokenizer
    from rlhf.train.dpo import pack_all

    rankings, _ = load_rankings(args.data, on_bad="skip", limit=args.pairs)
    packed = [row for rows in pack_all(load_tokenizer(cfg.policy), rankings, 256) for row in rows]
    summary = json.loads((out / "summary.json").read_text())
    result = summary["result"]
    return {"train_seconds": result["train_seconds"], "cache_seconds": result["reference_cache_seconds"],
            "train_cpu_seconds": result["train_cpu_seconds"],
            "cache_cpu_seconds": result["reference_cache_cpu_seconds"],
            "pairs_trained": result["pairs_trained"], "steps": result["steps"], "skipped": summary["data"]["skipped"],
            "tokens_forwarded": sum(len(p) + sum(len(x) for x in rs) for p, rs, _ in packed),
            "tokens_unpacked": sum(len(p) + len(x) for p, rs, _ in packed for x in rs),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times")
    peer_arguments(ap, "trl-new", "peer_trl_pref.py")
    ap.add_argument("--trl-defaults", action="store_true",
                    help="run TRL as shipped (bf16 autocast, grad checkpointing)")
    ap.add_argument("--length-buckets", type=int, default=32, help="our DPOConfig.length_buckets (1 = off)")
    args = ap.parse_args()
    if args.ours_only:
        print("BENCH_JSON " + json.dumps(ours(args)))
        return

    require_peers(args.tok, args.python, args.peer, args.data)
    env = peer_env(args.threads, BENCH_THREADS=str(args.threads), BENCH_PEER=args.peer,
                   BENCH_TRL_DEFAULTS="1" if args.trl_defaults else "0")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as work:
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_tiny_init.py"), str(Path(work) / "init"),
                        "--tokenizer", args.tok], check=True, env=env, capture_output=True)

        def side(cmd) -> dict:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
            if proc.returncode or not lines:
                sys.exit(f"{cmd[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            return json.loads(lines[-1][len("BENCH_JSON "):])

        for rep in range(args.repeats):
            t = time.strftime("%H:%M:%S")
            trl = None if args.skip_peer else side([args.python, "-c", PEER_WRAPPER, args.tok, args.data,
                                                    str(args.pairs)])
            us = side([sys.executable, __file__, "--ours-only", "--work", work, "--data", args.data, "--pairs",
                       str(args.pairs),
                       "--threads", str(args.threads), "--length-buckets", str(args.length_buckets)])
            row = {"started": t, "ours": us, "trl": trl}
            ours_pps = us["pairs_trained"] / (us["train_seconds"] + us["cache_seconds"])
            print(f"[{rep + 1}] ours: {us['pairs_trained']} pairs in {us['train_seconds']:.1f}s + reference cache "
                  f"{us['cache_seconds']:.1f}s = {ours_pps:.2f} pairs/s "
                  f"({us['pairs_trained'] / us['train_seconds']:.2f} "
                  f"without the cache; {us['steps']} steps, skipped {us['skipped']}, threads={us['threads']}; "
                  f"{us['tokens_forwarded']} tokens forwarded, {us['tokens_unpacked']} as separate sequences)")
            if trl:
                trl_pps = trl["pairs_trained"] / trl["train_seconds"]
                print(f"[{rep + 1}] trl:  {trl['pairs_trained']} of {trl['pairs_given']} pairs in "
                      f"{trl['train_seconds']:.1f}s = "
                      f"{trl_pps:.2f} pairs/s, {trl['tokens_trained']} tokens (bf16={trl['bf16']}, "
                      f"gradient_checkpointing={trl['gradient_checkpointing']}, threads={trl['threads']})")
                row["ratio"] = ours_pps / trl_pps
                ours_cpu = us["pairs_trained"] / (us["train_cpu_seconds"] + us["cache_cpu_seconds"])
                trl_cpu = trl["pairs_trained"] / trl["train_cpu_seconds"]
                row["ratio_cpu"] = ours_cpu / trl_cpu
                print(f"[{rep + 1}] ratio ours/trl: {row['ratio']:.2f}x pairs/s (reference cache included), "
                      f"{us['pairs_trained'] / us['train_seconds'] / trl_pps:.2f}x without it; per CPU second "
                      f"(ours {ours_cpu:.2f}, trl {trl_cpu:.2f} pairs per CPU-s): {row['ratio_cpu']:.2f}x")
            runs.append(row)
    print("BENCH_JSON " + json.dumps({"pairs": args.pairs, "threads": args.threads, "runs": runs}))


if __name__ == "__main__":
    main()
