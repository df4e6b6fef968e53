"""Pretraining throughput (tokens/s) and model FLOP utilization (MFU) for the nano and micro sizes.

MFU = achieved model FLOP/s / peak FLOP/s, where
  achieved = tokens/s * (6 * params + 12 * layers * hidden * seq_len)   (PaLM, Chowdhery et al. 2022, app. B:
             6N for the forward and backward matmuls of every parameter, plus attention scores and values)
  peak     = a large fp32 torch.matmul loop measured on the same device in the same run (2 n^3 FLOPs each).

The training step is the one `rlhf pretrain` runs: the same tokenizer, model, AdamW + schedule, gradient
clipping, packed world corpus, batch and sequence length. Runs in well under two minutes on a laptop CPU.

  python bench/bench_pretrain.py                 # nano and micro, batch 32 x 128 (the pretrain defaults)
  python bench/bench_pretrain.py --sizes nano --steps 20 --device cuda
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from rlhf.models.lm import SIZES, count_parameters, create_model
from rlhf.models.tokenizer import train_tokenizer
from rlhf.train.common import OptimConfig, make_optimizer
from rlhf.train.pretrain import pack
from rlhf.world import World, WorldConfig


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int, seconds: float) -> float:
    """fp32 FLOP/s of back-to-back n x n matmuls (best of a few timed rounds)."""
    torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 peak; the model trains in fp32 too
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        reps = 0
        t0 = time.perf_counter()
        while reps < 4 or time.perf_counter() - t0 < 0.25:
            torch.matmul(a, b)
            reps += 1
        _sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def train_step(model, opt, sched, batch, grad_clip: float) -> float:
    logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()  # a host sync, as in the trainer's logging


def bench_size(size: str, tokenizer, blocks: torch.Tensor, args) -> dict:
    model = create_model(size, tokenizer, max_len=max(256, args.seq_len)).to(args.device)
    model.train()
    opt, sched = make_optimizer(model, OptimConfig(), args.warmup + args.steps)
    gen = torch.Generator().manual_seed(0)

    def batch():
        return blocks[torch.randint(len(blocks), (args.batch_size,), generator=gen)].to(args.device)

    for _ in range(args.warmup):
        train_step(model, opt, sched, batch(), 1.0)
    _sync(args.device)
    steps, t0 = 0, time.perf_counter()
    while steps < args.steps and (steps < 2 or time.perf_counter() - t0 < args.max_seconds):
        train_step(model, opt, sched, batch(), 1.0)
        steps += 1
    _sync(args.device)
    elapsed = time.perf_counter() - t0
    hidden, layers, _, _ = SIZES[size]
    params = count_parameters(model)
    tokens_per_s = steps * args.batch_size * args.seq_len / elapsed
    flops_per_token = 6 * params + 12 * layers * hidden * args.seq_len
    return {"size": size, "params": params, "steps": steps, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops_per_token, "model_flops_per_s": tokens_per_s * flops_per_token}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="nano,micro")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed steps (fewer if --max-seconds runs out)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="timed seconds per size (at least 2 steps)")
    p.add_argument("--matmul-n", type=int, default=None, help="default 1024 on CPU, 8192 on GPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    world = World(WorldConfig(corpus_repeats=2, n_demonstrations=200))
    docs = world.corpus()
    tokenizer = train_tokenizer(docs + [m["content"] for d in world.demonstrations() for m in d["messages"]], 2048)
    blocks = pack(tokenizer, docs, args.seq_len)

    n = args.matmul_n or (8192 if args.device.startswith("cuda") else 1024)
    peak = matmul_peak(args.device, n, seconds=2.0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else ""
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}{load}")
    print(f"fp32 matmul peak ({n}x{n}): {peak / 1e9:.1f} GFLOP/s")
    print(f"batch {args.batch_size} x seq_len {args.seq_len}, vocab {len(tokenizer)}, AdamW fp32")
    print("| size | params | timed steps | tokens/s | model GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        r = bench_size(size, tokenizer, blocks, args)
        print(f"| {size} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['tokens_per_s']:,.0f} | "
              f"{r['model_flops_per_s'] / 1e9:.1f} | {r['model_flops_per_s'] / peak:.1%} |", flush=True)


if __name__ == "__main__":
    main()
