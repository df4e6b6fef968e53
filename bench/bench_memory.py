"""Peak memory and speed of one training step of SFT, the reward model and PPO on a real model (SmolLM2-135M by
default), full fine-tuning vs LoRA, fp32 vs bf16, with and without gradient checkpointing.

Each case runs in its own subprocess, through the trainers' own code (`rlhf.models.lora.trainable`, the SFT
loss, the reward model's packed scores and ranking loss, `rlhf.train.ppo.setup` + `ppo_step`): load the
model(s), one warm-up step, then `--steps` timed steps. Peak RSS is the child's own `ru_maxrss`, so
it counts everything the process ever held, model loading included. tokens/s counts the tokens a step
trains on (SFT: prompt + response tokens of the batch; RM: the tokens of its packed rows; PPO: the
response tokens sampled in the step, whose time covers sampling, the reference/value/reward passes and the
update).

    python bench/bench_memory.py --model MODEL_DIR --data HH.jsonl [--steps 2] [--threads 2] [--only ppo]
    python bench/bench_memory.py ... --write docs/real-models.md   # also replace the table in that file

Cases (batch 8 everywhere): SFT on 8 HH dialogues (chosen side, max_len 256); RM on 8 HH pairs (max_len 256,
responses packed beside their prompt); PPO on the last user turn of HH prompts, rollout batch 8, 64 new
tokens at T = 1 (EOS allowed), one PPO epoch over one minibatch of 8 (micro-batch 8), value model from the
reward model (value_init=reward: with LoRA, the value model gets its own adapter), the reward model a fresh
score head on the same backbone (written once to a temp folder). LoRA: r = 16, alpha = 32, all linear
layers. `--jobs N` runs N cases at once (peak RSS is per process; the timings then share the CPU); full
PPO runs alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (stage, lora r, dtype, gradient checkpointing); --all runs the whole grid
CASES = [
    ("sft", 0, "fp32", False), ("sft", 16, "fp32", False), ("sft", 16, "bf16", True),
    ("rm", 0, "fp32", False), ("rm", 0, "fp32", True), ("rm", 16, "fp32", False), ("rm", 16, "bf16", True),
    ("ppo", 0, "fp32", False), ("ppo", 16, "fp32", False), ("ppo", 16, "bf16", True),
]
ALL = [(s, r, d, g) for s in ("sft", "rm", "ppo") for r in (0, 16) for d in ("fp32", "bf16") for g in (False, True)]


def options(r: int, dtype: str, gc: bool):
    from rlhf.models.options import LoraOptions, ModelOptions

    return ModelOptions(dtype=dtype, gradient_checkpointing=gc, lora=LoraOptions(r=r, alpha=2.0 * r))


def timed(step, n: int, warmup: int) -> dict:
    """Wall and CPU (all threads) seconds of n steps after `warmup` untimed ones (allocator, first optimizer
    state). On a shared machine the CPU seconds move less with other people's load than the wall seconds."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": wall, "cpu_seconds": cpu}


def run_sft(args, opts) -> dict:
    from rlhf.data.chat import encode_dialogue
    from rlhf.data.comparisons import load_rankings
    from rlhf.models import lora
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer, optimizer_step
    from rlhf.train.sft import collate, response_loss

    tok = load_tokenizer(args.model)
    rankings, _ = load_rankings(args.data, limit=8)
    examples = [encode_dialogue(tok, [*r.prompt, {"role": "assistant", "content": r.responses[0]}],
                                256) for r in rankings]
    accelerator = make_accelerator(0)
    model = lora.trainable(load_causal_lm(args.model), opts)
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=0), 100)
    model.train()
    batch = collate(examples, tok.pad_token_id)

    def step():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        optimizer_step(accelerator, model, opt, sched, response_loss(logits, batch["labels"]), 0, 1.0)

    return {**timed(step, args.steps, args.warmup), "tokens": int(batch["attention_mask"].sum()),
            "trainable": trainable(model)}


def run_rm(args, opts) -> dict:
    from rlhf.data.comparisons import load_rankings
    from rlhf.models import lora
    from rlhf.models.lm import load_tokenizer
    from rlhf.models.reward import init_reward_model
    from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer, optimizer_step
    from rlhf.rollout.packed import packed_scores
    from rlhf.train.reward import pack_ranking, ranking_loss

    tok = load_tokenizer(args.model)
    rankings, _ = load_rankings(args.data, limit=8)
    accelerator = make_accelerator(0)
    model = lora.trainable(init_reward_model(args.model, 0), opts, task="SEQ_CLS")
    model.config.pad_token_id = tok.pad_token_id
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=0), 100)
    model.train()
    rows, start = [], 0
    for r in rankings:
        rows += [(p, rs, [start + w for w in where]) for p, rs, where in pack_ranking(tok, r, 256)]
        start += r.k

    def step():
        scores = packed_scores(model, rows, tok.pad_token_id, accelerator.device)
        loss, _, _ = ranking_loss(scores, rankings)
        optimizer_step(accelerator, model, opt, sched, loss, 0, 1.0)

    tokens = sum(len(p) + sum(len(x) for x in rs) for p, rs, _ in rows)
    return {**timed(step, args.steps, args.warmup), "tokens": tokens, "trainable": trainable(model)}


def run_ppo(args, opts) -> dict:
    from rlhf.data.comparisons import load_rankings
    from rlhf.rollout.engine import SamplingConfig
    from rlhf.train import ppo
    from rlhf.train.common import OptimConfig

    rankings, _ = load_rankings(args.data, limit=8 * (args.steps + args.warmup))
    prompts = [[r.prompt[-1]] for r in rankings]  # the last user turn: HH's multi-turn prompts run long
    cfg = ppo.PPOConfig(out=tempfile.mkdtemp(), policy=args.model, reward_model=args.rm, model=opts,
                        rollout_batch_size=8, minibatch_size=8, micro_batch_size=8, ppo_epochs=1,
                        whiten_advantages="batch", steps=args.steps + args.warmup,
                        sampling=SamplingConfig(max_new_tokens=64, temperature=1.0),
                        optim=OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
    t = ppo.setup(cfg, prompts, None)
    tokens, step_no = [], [0]

    def step():
        row, exp = ppo.ppo_step(t, step_no[0])
        step_no[0] += 1
        tokens.append(int(exp.mask.sum()))

    times = timed(step, args.steps, args.warmup)
    return {**times, "tokens": sum(tokens[args.warmup:]) / args.steps,
            "trainable": trainable(t.m.policy) + trainable(t.m.value)}


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def child(args) -> None:
    """One case; prints its result and the process's peak RSS (ru_maxrss, KiB on Linux) as a RESULT line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    stage, r, dtype, gc = json.loads(args.case)
    out = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo}[stage](args, options(r, dtype, gc))
    out["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps(out), flush=True)


def make_rm(model: str, folder: Path) -> None:
    """A reward model for the PPO cases: the model's backbone and a fresh score head, saved once."""
    code = ("import sys; from rlhf.models.lm import load_tokenizer; from rlhf.models.reward import init_reward_model\n"
            "m = init_reward_model(sys.argv[1], 0); t = load_tokenizer(sys.argv[1]); m.config.pad_token_id = "
            "t.pad_token_id\n"
            "m.save_pretrained(sys.argv[2], safe_serialization=True); t.save_pretrained(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, model, str(folder)], check=True, env=env(1), capture_output=True)


def env(threads: int) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
             HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def run_case(args, case, rm: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(case), "--model", args.model, "--data", args.data,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads), "--rm", str(rm)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(args.threads))
    out, err = proc.communicate()
    wall = time.time() - t0
    result = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None)
    if result is None:
        return {"error": (err.strip().splitlines() or ["no output"])[-1], "wall": wall}
    return {**result, "peak_rss_gb": result["peak_rss_kb"] / 2**20, "wall": wall}


def table(rows: list[dict]) -> str:
    lines = ["| step | weights | dtype | grad. ckpt | trainable params | peak RSS (GB) | tokens/step | s/step | "
             "tokens/s "
             "| CPU s/step | tokens/CPU-s |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        stage, lr, dtype, gc = r["case"]
        head = f"| {stage.upper()} | {'LoRA r=' + str(lr) if lr else 'full'} | {dtype} | {'on' if gc else 'off'} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:80]} | | | | | | |")
            continue
        s, c = (sum(r[k]) / len(r[k]) for k in ("seconds", "cpu_seconds"))
        lines.append(f"{head} {r['trainable'] / 1e6:.2f}M | {r['peak_rss_gb']:.2f} | {r['tokens']:.0f} | {s:.1f} | "
                     f"{r['tokens'] / s:.0f} | {c:.1f} | {r['tokens'] / c:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF folder of a causal LM (e.g. an imported SmolLM2-135M-Instruct)")
    ap.add_argument("--data", required=True, help="HH-style comparisons JSONL (prompts, SFT dialogues and RM pairs)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once")
    ap.add_argument("--only", choices=["sft", "rm", "ppo"], action="append", help="run only these stages")
    ap.add_argument("--all", action="store_true", help="every combination (full/LoRA x fp32/bf16 x checkpointing)")
    ap.add_argument("--write", help="a markdown file whose bench table (between markers) is replaced")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--rm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        child(args)
        return
    cases = [c for c in (ALL if args.all else CASES) if not args.only or c[0] in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rm = Path(tmp) / "rm"
        if any(c[0] == "ppo" for c in cases):
            make_rm(args.model, rm)
        from concurrent.futures import ThreadPoolExecutor

        def one(case):
            r = {"case": case, **run_case(args, case, rm)}
            print(table([r]).splitlines()[-1], f"({r['wall']:.0f} s wall)", flush=True)
            return r

        heavy = [c for c in cases if c[0] == "ppo" and c[1] == 0]  # full PPO (3 trained/frozen backbones): alone
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one, [c for c in cases if c not in heavy]))
        rows += [one(c) for c in heavy]
        rows.sort(key=lambda r: cases.index(r["case"]))
    text = table(rows)
    print("\n" + text)
    meta = {"model": Path(args.model).name, "threads": args.threads, "jobs": args.jobs, "timed_steps": args.steps,
            "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    print(json.dumps(meta))
    if args.write:
        path = Path(args.write)
        doc = path.read_text()
        begin, end = "<!-- bench_memory:begin -->", "<!-- bench_memory:end -->"
        shown = {**meta, "load_average": [round(x, 1) for x in meta["load_average"]]}
        block = f"{begin}\n{text}\n\n`{json.dumps(shown)}`\n{end}"
        doc = (doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):] if begin in doc
               else doc + "\n" + block + "\n")
        path.write_text(doc)


if __name__ == "__main__":
    main()
