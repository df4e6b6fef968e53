"""PPO throughput: our `rlhf.train.ppo.run` vs TRL 0.19's PPOTrainer, episodes/s, one after the other.

Same setup as the peer script (../shared/bench/peers/peer_trl_ppo.py): from-scratch GPT-2 (4 layers, 256
wide, 4 heads, 256 positions) for policy, reference, value and reward, the .peers/tok tokenizer (4096),
16 episodes per rollout batch, minibatches of 4 (micro-batch 4), 4 PPO epochs, 32 new tokens at
temperature 1, 64 episodes (4 PPO steps), batch-level advantage whitening (as TRL), lr 1e-5, fp32 on CPU,
the same torch thread count. The two sides run sequentially in their own subprocesses, never at once.

Prompts: the peer takes each HH `chosen` up to its first "Assistant:" and cuts it to 64 tokens. Our PPO
wraps every prompt string in the chat format ("Human: {prompt}\\n\\nAssistant:"), so we strip the HH
"\\n\\nHuman: " prefix / trailing "\\n\\nAssistant:" and cut the inner text so that the *wrapped* prompt is
at most 64 tokens: both sides then feed prompts of about the same token count (both means are printed).

Timings: the peer's is `trainer.train()`. Ours is reported twice: the training loop alone (the
`episodes_per_s` our run logs after its last step: rollouts, scoring, GAE, updates and per-step metrics,
including the gold-reward scoring through the world) and the whole `run` body (which adds writing the
final checkpoint, the HF model folder and the metric plots). Model building and loading are excluded
from both sides.

    python bench/bench_ppo.py                 # threads=1
    python bench/bench_ppo.py --threads 2
    python bench/bench_ppo.py --skip-peer --profile   # cProfile of our run, top functions
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from peer_env import peer_arguments, peer_env, require_peers  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
NL, NE, NH, B, RESP, EPIS, PROMPT_TOKENS = 4, 256, 4, 16, 32, 64, 64


def hh_prompts(data: str, n: int) -> list[str]:
    """The peer's prompts: each `chosen` up to and including its first 'Assistant:'."""
    out = []
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            c = json.loads(line)["chosen"]
            out.append(c[: c.find("Assistant:") + len("Assistant:")])
            if len(out) >= n:
                break
    return out


def build(work: Path, tokdir: str, data: str) -> dict:
    """Policy (also the reference) and reward model folders, and a prompts JSONL; in our own python."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from rlhf.data.chat import encode_prompt

    tok = AutoTokenizer.from_pretrained(tokdir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_layer=NL, n_embd=NE, n_head=NH,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(str(work / "policy"))
    tok.save_pretrained(str(work / "policy"))
    rcfg = GPT2Config.from_dict(cfg.to_dict())
    rcfg.num_labels = 1
    rcfg.pad_token_id = tok.pad_token_id
    GPT2ForSequenceClassification(rcfg).save_pretrained(str(work / "rm"))
    tok.save_pretrained(str(work / "rm"))

    raw = hh_prompts(data, EPIS * 2)
    peer_lens = [len(tok(p, truncation=True, max_length=PROMPT_TOKENS)["input_ids"]) for p in raw]
    rows, ours_lens = [], []
    for p in raw:
        inner = p.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:").strip()
        ids = tok.encode(inner, add_special_tokens=False)
        keep = len(ids)
        while True:  # the longest head of the inner text whose wrapped prompt fits in PROMPT_TOKENS
            text = tok.decode(ids[:keep]).strip()
            n = len(encode_prompt(tok, text))
            if n <= PROMPT_TOKENS or keep == 0:
                break
            keep -= max(1, n - PROMPT_TOKENS)
        rows.append({"prompt": text})
        ours_lens.append(n)
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return {"peer_prompt_tokens": sum(peer_lens) / len(peer_lens),
            "ours_prompt_tokens": sum(ours_lens) / len(ours_lens),
            "n_prompts": len(rows)}


def ours(args) -> dict:
    """Runs in a subprocess: our PPO on the built models and prompts."""
    import torch

    torch.set_num_threads(args.threads)
    from rlhf.rollout.engine import SamplingConfig
    from rlhf.train.common import OptimConfig
    from rlhf.stages import PPOStage as PPOConfig  # as `rlhf ppo` runs it: the world's gold score logged each step
    from rlhf.stages import run_ppo as run

    work = Path(args.work)
    cfg = PPOConfig(out=str(work / "ours"), seed=0, policy=str(work / "policy"), reward_model=str(work / "rm"),
                    prompts=str(work / "prompts.jsonl"), steps=EPIS // B, rollout_batch_size=B, minibatch_size=B // 4,
                    micro_batch_size=B // 4, ppo_epochs=4, whiten_advantages="batch",
                    sampling=SamplingConfig(max_new_tokens=RESP, temperature=1.0), approx_kl_stop=1e9,
                    samples_every=0, eval_every=0, value_init=args.value_init,
                    optim=OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=0, schedule="linear"))
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        run(cfg, show_progress=False)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        run(cfg, show_progress=False)
    result = json.loads((work / "ours" / "summary.json").read_text())["result"]
    rows = [json.loads(line) for line in (work / "ours" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "episodes_per_s" in r][-1]
    return {"episodes": result["episodes"], "seconds_total": result["seconds"],
            "episodes_per_s_total": result["episodes_per_s"], "episodes_per_s_loop": last["episodes_per_s"],
            "response_length": result.get("response_length"), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    peer_arguments(ap, "trl-old", "peer_trl_ppo.py")
    ap.add_argument("--profile", action="store_true", help="cProfile our run (stats on stderr)")
    ap.add_argument("--value-init", default="reward,policy",
                    help="our value model(s) to time, comma-separated: reward (a separate value model, as TRL) and/or "
                         "policy (a value head on the policy)")
    args = ap.parse_args()
    if args.ours_only:
        print("BENCH_JSON " + json.dumps(ours(args)))
        return

    require_peers(args.tok, args.python, args.peer, args.data)
    env = peer_env(args.threads)
    report: dict = {"threads": args.threads, "batch": B, "new_tokens": RESP, "episodes": EPIS}
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as work:
        report.update(build(Path(work), args.tok, args.data))
        if not args.skip_peer:
            t = time.time()
            proc = subprocess.run([args.python, args.peer, args.tok, args.data], env=env, capture_output=True,
                                  text=True)
            line = [text for text in proc.stdout.splitlines() if text.startswith("trl-0.19")]
            if proc.returncode or not line:
                sys.exit(f"peer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            m = re.search(r"wall=([\d.]+)s episodes/s=([\d.]+) .* threads=(\d+)", line[-1])
            report["trl"] = {"printed": line[-1], "train_seconds": float(m.group(1)),
                             "episodes_per_s": float(m.group(2)),
                             "threads": int(m.group(3)), "process_wall_seconds": time.time() - t}
            print(line[-1], flush=True)
        for variant in args.value_init.split(","):
            proc = subprocess.run([sys.executable, __file__, "--ours-only", "--work", work, "--threads",
                                   str(args.threads),
                                   "--value-init", variant, *(["--profile"] if args.profile else [])],
                                  env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
            if proc.returncode or not lines:
                sys.exit(f"ours failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            if args.profile:
                print(proc.stderr[proc.stderr.find("   Ordered by"):] if "Ordered by" in proc.stderr
                      else proc.stderr[-20000:])
            report[f"ours_value_{variant}"] = us = json.loads(lines[-1][len("BENCH_JSON "):])
            print(f"ours (value_init={variant}): {us['episodes']} episodes, loop {us['episodes_per_s_loop']:.2f} "
                  "episodes/s, "
                  f"whole run {us['episodes_per_s_total']:.2f} episodes/s ({us['seconds_total']:.1f}s incl. final save "
                  "+ "
                  f"plots), mean response {us['response_length']:.1f} tokens, threads={us['threads']}")
            if "trl" in report:
                trl = report["trl"]
                loop = us["episodes_per_s_loop"] / trl["episodes_per_s"]
                total = us["episodes_per_s_total"] / trl["episodes_per_s"]
                report[f"ratio_loop_value_{variant}"], report[f"ratio_total_value_{variant}"] = loop, total
                print(f"ratio ours(value_init={variant})/trl: {loop:.2f}x (training loop), {total:.2f}x (whole run)")
    print(f"prompt tokens (mean): ours {report['ours_prompt_tokens']:.1f}, trl {report['peer_prompt_tokens']:.1f}")
    if "trl" in report:
        trl = report["trl"]
        print(f"trl:  {trl['episodes_per_s']:.2f} episodes/s ({trl['train_seconds']:.1f}s train(), "
              f"threads={trl['threads']})")
    print("BENCH_JSON " + json.dumps(report))


if __name__ == "__main__":
    main()
