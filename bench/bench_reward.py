"""Reward-model training throughput: our trainer vs TRL's RewardTrainer, side by side in one run.

Same model (from-scratch GPT-2: 4 layers, 256 wide, 4 heads, 512 positions, GPT-2 default dropout), same
tokenizer (.peers/tok), the same first N HH pairs, 8 pairs per step, max length 256, 1 epoch, lr 1e-4,
fp32 on CPU, the same torch thread count. Each side runs in its own subprocess; setup and tokenization
are excluded from both timings (TRL's `train=` time, our `train_seconds`).

    python bench/bench_reward.py                      # 512 pairs, TRL in fp32 (see --trl-defaults)
    python bench/bench_reward.py --all-pairs          # ours also trains the long pairs TRL drops
    python bench/bench_reward.py --pairs 128 --threads 2
    python bench/bench_reward.py --init SMOLLM2_DIR --pairs 128    # the HH case on a real backbone (see below)

With --init FOLDER both sides start from the same pretrained HF folder (SmolLM2-135M-Instruct imported with
`rlhf models import-gguf`, or any causal LM / encoder folder) and its tokenizer: TRL's peer script builds
`AutoModelForSequenceClassification.from_pretrained(FOLDER, num_labels=1)` in place of its tiny GPT-2 (the
one name it imports is swapped before it runs), ours is `rlhf reward --set init=FOLDER`. Same pairs, same
batch size, lr, max length 256, one epoch, fp32, the same threads. --trl-defaults turns TRL's gradient
checkpointing and bf16 autocast back on, as TRL ships; ours then runs with model.gradient_checkpointing and
model.mixed_precision=bf16 (the same autocast over fp32 weights). --mixed-precision bf16 alone changes ours only.

Two things about the peer script are corrected for, and both numbers are printed:
  * TRL drops pairs longer than max_length (it does not truncate) yet the peer divides all N pairs by the
    train time; we count the pairs it actually trained and by default give ours exactly those pairs (with
    --all-pairs ours trains all N, cutting long prompts from the left as `rlhf reward` does).
  * TRL's RewardConfig defaults to bf16=True and gradient_checkpointing=True; the peer runs with both off
    (fp32, no recomputation) unless --trl-defaults is given, so that by default both sides compute in fp32.
    On a CPU without bf16 matrix instructions bf16 autocast is slower; with them (AVX512-BF16, AMX) faster.
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
import json, os, runpy, sys, time
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import trl
if os.environ.get("BENCH_INIT"):
    import transformers
    def _pretrained(cfg):
        return transformers.AutoModelForSequenceClassification.from_pretrained(
            os.environ["BENCH_INIT"], num_labels=1, dtype=torch.float32)
    transformers.GPT2ForSequenceClassification = _pretrained
if os.environ.get("BENCH_TRL_DEFAULTS") != "1":
    _Base = trl.RewardConfig
    class RewardConfig(_Base):
        def __init__(self, *a, **k):
            k.setdefault("bf16", False)
            k.setdefault("gradient_checkpointing", False)
            super().__init__(*a, **k)
    trl.RewardConfig = RewardConfig
sys.argv = [os.environ["BENCH_PEER"], "rm", *sys.argv[1:]]
g = runpy.run_path(os.environ["BENCH_PEER"], run_name="__main__")
ds = g["tr"].train_dataset
kept = len(ds)
tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in ds)
print("BENCH_JSON " + json.dumps({"train_seconds": g["t2"] - g["t1"], "pairs_given": len(g["rows"]),
      "pairs_trained": kept, "tokens_trained": tokens, "bf16": g["tr"].args.bf16,
      "gradient_checkpointing": g["tr"].args.gradient_checkpointing, "threads": torch.get_num_threads()}))
"""


def ours(args) -> dict:
    """Runs in a subprocess: our `rlhf.train.reward.run` on the same pairs."""
    import torch

    torch.set_num_threads(args.threads)
    from rlhf.models.lm import load_tokenizer
    from rlhf.train.common import OptimConfig
    from rlhf.train.reward import RewardConfig, encode_rankings, run
    from rlhf.data.comparisons import load_rankings

    init = args.init or str(Path(args.work) / "init")
    cfg = RewardConfig(out=str(Path(args.work) / "ours"), init=init, data=args.subset,
                       on_bad="skip", eval_fraction=0.0, epochs=1.0, batch_size=8, max_len=256, normalize=False,
                       length_buckets=args.length_buckets,
                       optim=OptimConfig(lr=1e-4, warmup_steps=0, weight_decay=0.0, schedule="linear",
                                         betas=(0.9, 0.999)))
    if args.trl_defaults:  # as TRL ships: bf16 autocast over fp32 weights, gradient checkpointing
        cfg.model.gradient_checkpointing = True
        cfg.model.mixed_precision = "bf16"
    if args.mixed_precision:
        cfg.model.mixed_precision = args.mixed_precision
    out = run(cfg, show_progress=False)
    result = json.loads((out / "summary.json").read_text())["result"]
    rankings, _ = load_rankings(args.subset, on_bad="skip")
    tokens = sum(len(s) for g in encode_rankings(load_tokenizer(cfg.init), rankings, 256) for s in g)
    return {"train_seconds": result["train_seconds"], "pairs_trained": result["pairs_trained"],
            "steps": result["steps"], "tokens_trained": tokens, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    peer_arguments(ap, "trl-new", "peer_trl_pref.py")
    ap.add_argument("--trl-defaults", action="store_true",
                    help="run TRL as shipped (bf16 autocast, grad checkpointing)")
    ap.add_argument("--mixed-precision", choices=("no", "bf16"), help="ours only: model.mixed_precision")
    ap.add_argument("--length-buckets", type=int, default=32, help="our RewardConfig.length_buckets (1 = off)")
    ap.add_argument("--all-pairs", action="store_true",
                    help="give ours all N pairs (long ones truncated) instead of only those TRL keeps (<= 256 tokens)")
    ap.add_argument("--init", help="a pretrained HF folder both sides start from (its tokenizer too): the HH case")
    ap.add_argument("--subset", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours_only:
        print("BENCH_JSON " + json.dumps(ours(args)))
        return

    if args.init:
        args.init = str(Path(args.init).resolve())
        args.tok = args.init
    require_peers(args.tok, args.python, args.peer, args.data)
    env = peer_env(args.threads, BENCH_THREADS=str(args.threads), BENCH_PEER=args.peer,
                   BENCH_TRL_DEFAULTS="1" if args.trl_defaults else "0", BENCH_INIT=args.init or "")
    with tempfile.TemporaryDirectory(prefix="bench_reward_") as work:
        subset = Path(work) / "pairs.jsonl"
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tok)
        kept = 0
        with open(args.data, encoding="utf-8") as src, open(subset, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= args.pairs:
                    break
                row = json.loads(line)
                # TRL's filter: chosen + EOS and rejected + EOS both within max_length 256
                fits = all(len(tok(row[k] + tok.eos_token)["input_ids"]) <= 256 for k in ("chosen", "rejected"))
                if fits or args.all_pairs:
                    dst.write(line)
                    kept += 1
        print(f"ours trains {kept} of the first {args.pairs} pairs "
              f"({'all' if args.all_pairs else 'the ones TRL keeps'})")
        if not args.init:
            subprocess.run([sys.executable, str(ROOT / "bench" / "make_tiny_init.py"), str(Path(work) / "init"),
                            "--tokenizer", args.tok], check=True, env=env, capture_output=True)

        def side(cmd) -> dict:
            t = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
            if proc.returncode or not lines:
                sys.exit(f"{cmd[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            res = json.loads(lines[-1][len("BENCH_JSON "):])
            res["wall_seconds"] = time.time() - t
            res["printed"] = [line for line in proc.stdout.splitlines() if line.startswith("trl-1.x")]
            return res

        trl = None if args.skip_peer else side([args.python, "-c", PEER_WRAPPER, args.tok, args.data, str(args.pairs)])
        us = side([sys.executable, __file__, "--ours-only", "--work", work, "--subset", str(subset),
                   "--threads", str(args.threads), "--length-buckets", str(args.length_buckets),
                   *(["--init", args.init] if args.init else []), *(["--trl-defaults"] if args.trl_defaults else []),
                   *(["--mixed-precision", args.mixed_precision] if args.mixed_precision else [])])

    ours_pps = us["pairs_trained"] / us["train_seconds"]
    ours_tps = us["tokens_trained"] / us["train_seconds"]
    print(f"ours: {us['pairs_trained']} pairs in {us['train_seconds']:.1f}s = {ours_pps:.2f} pairs/s, "
          f"{ours_tps:.0f} tokens/s ({us['steps']} steps, threads={us['threads']}, "
          f"length_buckets={args.length_buckets})")
    report = {"pairs": args.pairs, "threads": args.threads, "init": Path(args.init).name if args.init else "tiny-gpt2",
              "ours": us}
    if trl:
        trl_pps = trl["pairs_trained"] / trl["train_seconds"]
        trl_printed = trl["pairs_given"] / trl["train_seconds"]
        trl_tps = trl["tokens_trained"] / trl["train_seconds"]
        print(f"trl:  {trl['pairs_trained']} of {trl['pairs_given']} pairs trained (longer ones dropped) in "
              f"{trl['train_seconds']:.1f}s = {trl_pps:.2f} pairs/s ({trl_printed:.2f} as the peer prints it), "
              f"{trl_tps:.0f} tokens/s (bf16={trl['bf16']}, gradient_checkpointing={trl['gradient_checkpointing']}, "
              f"threads={trl['threads']})")
        print(f"ratio ours/trl: {ours_pps / trl_pps:.2f}x pairs/s trained, {ours_pps / trl_printed:.2f}x vs the "
              f"peer's printed pairs/s, {ours_tps / trl_tps:.2f}x tokens/s")
        report.update(trl=trl, ratio_pairs=ours_pps / trl_pps, ratio_printed=ours_pps / trl_printed,
                      ratio_tokens=ours_tps / trl_tps)
    print("BENCH_JSON " + json.dumps(report))


if __name__ == "__main__":
    main()
