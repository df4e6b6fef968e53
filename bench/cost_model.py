"""A cost model of one PPO/GRPO step: rollout (prefill + per-token decode) + scoring + training + all-reduce +
weight sync. A MODEL, not a measurement: its constants are fitted from timings of the pieces on this machine
(`fit`), its predictions checked against a real PPO run (`check`), and the same formula with H100 roofline
constants gives the GPU predictions of docs/scaling.md (`gpu`).

    python bench/cost_model.py fit --threads 1 -o costs-1t.json      # time the pieces (a few minutes)
    python bench/cost_model.py predict costs-1t.json --nproc 2 --set rollout_batch_size=16 ...
    python bench/cost_model.py check costs-1t.json --nproc 1 --threads 1   # predict, then run PPO and compare
    python bench/cost_model.py gpu                                         # the H100 table (markdown)

The CPU pieces (per rank, B_r = episodes per rank, P prompt tokens, T new tokens, L = P + T):
  rollout  = g_prefill * B_r * P + T * (g_step + g_row * B_r)        (engine.sample; T = max_new_tokens)
  scoring  = 2 * fwd_lm(B_r * L) + 2 * fwd_rm(B_r * L)             (policy + reference; value + reward model)
  training = ppo_epochs * (rollout_batch / minibatch) * [upd_lm(tok) + upd_rm(tok)],  tok = minibatch / W * L
  allreduce= optimizer steps * (ar(policy bytes) + ar(value bytes))  (gloo, W > 1 only)
  sync     = 0 (the engine samples from the live weights; vLLM: see `gpu`)
fwd/upd/ar are straight lines (a + b * size) fitted by least squares on two to three sizes each.

`ppo_step.py` beside this file measures a real PPO step under torchrun (any number of processes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# the PPO settings the CPU check runs (a micro policy, the value model a copy of the reward model)
CHECK = dict(size="micro", rollout_batch_size=16, minibatch_size=8, micro_batch_size=8, ppo_epochs=2,
             max_new_tokens=24, steps=4)


# ---------------------------------------------------------------- models for the timings

def build_models(work: Path, size: str) -> tuple[Path, Path, list[list[int]]]:
    """A policy and a reward-model folder of `size` on a tokenizer trained on the default world's text, and
    the world's training prompts encoded (what `rlhf ppo` samples from)."""
    from rlhf.data.chat import encode_prompt
    from rlhf.models.lm import create_model, save_model
    from rlhf.models.reward import init_reward_model
    from rlhf.models.tokenizer import train_tokenizer
    from rlhf.world import World, WorldConfig

    world = World(WorldConfig())
    texts = world.corpus() + [m["content"] for d in world.demonstrations() for m in d["messages"]]
    tok = train_tokenizer(texts, vocab_size=2048)
    policy, rm = work / "policy", work / "rm"
    save_model(create_model(size, tok, max_len=256, seed=0), tok, policy)
    model = init_reward_model(policy, seed=0)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(rm))
    tok.save_pretrained(str(rm))
    prompts = [encode_prompt(tok, p["prompt"]) for p in world.prompts("train")[:256]]
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n"
                                                for p in world.prompts("train")[:256]))
    return policy, rm, prompts


def _best(fn, reps: int = 3) -> float:
    """The fastest of `reps` timed calls (after one warm-up): the machine is shared, the minimum is the cost."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _line(xs, ys) -> tuple[float, float]:
    a, b = np.linalg.lstsq(np.stack([np.ones(len(xs)), np.asarray(xs, float)], 1), np.asarray(ys, float),
                           rcond=None)[0]
    return float(a), float(b)


# ---------------------------------------------------------------- fitting

def time_generation(policy_path: Path, prompts: list[list[int]]) -> dict:
    """engine.sample at a few batch sizes and lengths (no EOS: every row decodes all T tokens)."""
    import torch

    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.rollout.engine import SamplingConfig, sample

    model, tok = load_causal_lm(policy_path).eval(), load_tokenizer(policy_path)
    P = int(np.mean([len(p) for p in prompts]))
    rows, secs = [], []
    gen = torch.Generator().manual_seed(0)
    for B in (2, 8):
        for T in (8, 24):  # B rows of a P-token prompt (ids that are neither PAD nor EOS)
            batch = torch.randint(3, 200, (B, P), generator=gen).tolist()
            cfg = SamplingConfig(max_new_tokens=T, temperature=1.0)
            secs.append(_best(lambda: sample(model, batch, cfg, eos_id=-1, pad_id=tok.pad_token_id, generator=gen)))
            rows.append((B * P, T, T * B))
    g_prefill, g_step, g_row = np.linalg.lstsq(np.array(rows, float), np.array(secs), rcond=None)[0]
    return {"prompt_tokens": P, "g_prefill": float(g_prefill), "g_step": float(g_step), "g_row": float(g_row),
            "points": [{"B": r[2] // r[1], "T": r[1], "seconds": s} for r, s in zip(rows, secs)]}


def time_passes(policy_path: Path, rm_path: Path, L: int) -> dict:
    """Forward passes (no grad) and updates (forward + backward + AdamW step) of the policy and of the
    reward-model architecture (the value model is one), at two batch sizes of L-token rows."""
    import torch

    from rlhf.models.lm import load_causal_lm
    from rlhf.models.reward import load_reward_model

    out = {}
    for name, model in (("lm", load_causal_lm(policy_path)), ("rm", load_reward_model(rm_path))):
        model.eval()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        fwd_x, fwd_y, upd_x, upd_y = [], [], [], []
        for B in (4, 16):
            ids = torch.randint(3, 200, (B, L))
            mask = torch.ones_like(ids)

            def fwd():
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask)

            def upd():
                o = model(input_ids=ids, attention_mask=mask)
                o.logits.float().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            fwd_x.append(B * L), fwd_y.append(_best(fwd))
            upd_x.append(B * L), upd_y.append(_best(upd, reps=2))
        out[f"fwd_{name}"], out[f"upd_{name}"] = _line(fwd_x, fwd_y), _line(upd_x, upd_y)
        out[f"params_{name}"] = sum(p.numel() for p in model.parameters())
    return out


def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res = {}
    for n in sizes:
        x = torch.ones(n)
        times = []
        for _ in range(4):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(x)
            times.append(time.perf_counter() - t)
        res[n] = min(times[1:])
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def time_allreduce(numels: list[int], world: int = 2) -> dict:
    """A real gloo all_reduce of float32 tensors between `world` spawned processes: seconds = a + b * bytes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ar.json")
        mp.spawn(_allreduce_worker, args=(world, port, numels, out), nprocs=world, join=True)
        res = {int(k): v for k, v in json.loads(Path(out).read_text()).items()}
    a, b = _line([4 * n for n in res], list(res.values()))
    return {"ar": (a, b), "ar_points": [{"bytes": 4 * n, "seconds": s} for n, s in res.items()], "ar_world": world}


def fit(threads: int, size: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        policy, rm, prompts = build_models(Path(d), size)
        gen = time_generation(policy, prompts)
        L = gen["prompt_tokens"] + CHECK["max_new_tokens"]
        passes = time_passes(policy, rm, L)
    ar = time_allreduce([passes["params_lm"] // 4, passes["params_lm"], passes["params_lm"] + passes["params_rm"]])
    return {"machine": _machine(), "threads": threads, "size": size, **gen, **passes, **ar}


def _machine() -> str:
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu}, {os.cpu_count()} cores"


# ---------------------------------------------------------------- the model

def predict_cpu(c: dict, nproc: int, B: int, minibatch: int, epochs: int, T: int, P: int | None = None) -> dict:
    """Seconds per PPO step on `nproc` processes (each with the threads the constants were fitted at)."""
    P = P or c["prompt_tokens"]
    Br, L = B / nproc, P + T
    line = lambda ab, x: ab[0] + ab[1] * x  # noqa: E731
    rollout = c["g_prefill"] * Br * P + T * (c["g_step"] + c["g_row"] * Br)
    scoring = 2 * line(c["fwd_lm"], Br * L) + 2 * line(c["fwd_rm"], Br * L)
    opt_steps = epochs * B // minibatch
    tok = minibatch / nproc * L
    training = opt_steps * (line(c["upd_lm"], tok) + line(c["upd_rm"], tok))
    allreduce = opt_steps * (line(c["ar"], 4 * c["params_lm"]) + line(c["ar"], 4 * c["params_rm"])) if nproc > 1 else 0
    parts = {"rollout": rollout, "scoring": scoring, "training": training, "allreduce": allreduce, "sync": 0.0}
    return {**parts, "step": sum(parts.values())}


# H100 SXM roofline (dense bf16 without sparsity; HBM3; NVLink 4 per direction; one 400 Gb/s IB NIC per GPU)
H100 = dict(flops=989e12, hbm=3.35e12, nvlink=450e9, ib=50e9)
# A100 SXM 80 GB, for the one published figure in the same units (DeepSpeed-Chat's step 3 on 8 A100s)
A100 = dict(flops=312e12, hbm=2.04e12, nvlink=300e9, ib=25e9)
# assumed efficiencies (NOT measured): training MFU, decode's share of HBM bandwidth, prefill/scoring MFU,
# collective bus bandwidth share
EFF = dict(train=0.40, decode_bw=0.60, fwd=0.50, comm=0.70)
MODELS = {  # params, layers, kv heads, head dim (the KV cache per token is 2 * layers * kv_heads * head_dim * 2 B)
    "SmolLM2-135M": dict(params=135e6, layers=30, kv_heads=3, head_dim=64),
    "7B (Qwen2.5-7B shape)": dict(params=7.6e9, layers=28, kv_heads=4, head_dim=128),
}
OPT_13B = dict(params=13e9, layers=40, kv_heads=40, head_dim=128)


def predict_gpu(model: dict, gpus: int, method: str, episodes: int, P: int = 512, T: int = 512,
                minibatches: int = 1, epochs: int = 1, efficient: bool = True, hw: dict = H100,
                critic_params: float | None = None) -> dict:
    """Seconds per step of colocated PPO/GRPO on `gpus` H100s (8 per node): vLLM rollouts (each GPU its own
    engine, TP=1), reference/reward(/critic) scoring passes, training (FSDP2/ZeRO-3 for 7B, DDP for 135M),
    gradient collectives, weight sync into vLLM. `efficient=False`: the pure roofline (every unit at peak).
    `critic_params`: the reward and value models' size (default: the policy's)."""
    eff = EFF if efficient else {k: 1.0 for k in EFF}
    N, e = model["params"], episodes / gpus
    kv_tok = 2 * model["layers"] * model["kv_heads"] * model["head_dim"] * 2
    flops, hbm = hw["flops"], hw["hbm"]
    link = hw["nvlink"] if gpus <= 8 else hw["ib"]  # the slowest hop of the ring
    sharded = N > 1e9
    # rollout: prefill (compute) + T decode steps, each the larger of its FLOPs and its memory traffic
    prefill = 2 * N * e * P / (flops * eff["fwd"])
    step = lambda t: max(2 * N * e / (flops * eff["fwd"]), (2 * N + e * kv_tok * (P + t)) / (hbm * eff["decode_bw"]))  # noqa: E731
    decode = sum(step(t) for t in range(0, T, max(1, T // 16))) * (T / len(range(0, T, max(1, T // 16))))
    Nc = N if critic_params is None else critic_params
    # old log-probs and reference (policy-sized), reward (+ critic values)
    fwd_params = 2 * N + (2 * Nc if method == "ppo" else Nc)
    scoring = 2 * fwd_params * e * (P + T) / (flops * eff["fwd"])
    train_params = N + (Nc if method == "ppo" else 0)  # actor (+ critic)
    training = epochs * 6 * train_params * e * (P + T) / (flops * eff["train"])
    opt_steps = epochs * minibatches
    ring = 2 * (gpus - 1) / gpus
    # DDP: all-reduce bf16 grads; FSDP2/ZeRO-3: all-gather params (fwd, bwd) + reduce-scatter grads = 1.5 x
    volume = (1.5 if sharded else 1.0) * ring * 2 * N
    allreduce = opt_steps * volume * train_params / N / (link * eff["comm"])
    gather = (gpus - 1) / gpus * 2 * N / (link * eff["comm"]) if sharded else 0.0  # full weights for vLLM
    sync = gather + 2 * 2 * N / (hbm * eff["decode_bw"])  # + load_weights: read and write 2N bytes on the GPU
    parts = {"rollout": prefill + decode, "scoring": scoring, "training": training, "allreduce": allreduce,
             "sync": sync}
    total = sum(parts.values())
    return {**parts, "step": total, "episodes_per_s": episodes / total}


def gpu_table(efficient: bool = True) -> list[dict]:
    rows = []
    for name, m in MODELS.items():
        for gpus in (8, 64):
            for method in ("ppo", "grpo"):
                episodes = 1024 if gpus == 8 else 8192
                r = predict_gpu(m, gpus, method, episodes, efficient=efficient)
                rows.append({"model": name, "GPUs": gpus, "method": method.upper(), "episodes/step": episodes,
                             **{k: round(v, 2) for k, v in r.items()}})
    return rows


def _md(rows: list[dict]) -> str:
    keys = list(rows[0])
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


# ---------------------------------------------------------------- the check against a real run

def check(c: dict, nproc: int, threads: int) -> dict:
    """Predict, then run `rlhf ppo` (ppo_step.py) with the same settings and models, and compare."""
    import subprocess

    k = CHECK
    pred = predict_cpu(c, nproc, k["rollout_batch_size"], k["minibatch_size"], k["ppo_epochs"], k["max_new_tokens"])
    with tempfile.TemporaryDirectory() as d:
        policy, rm, _ = build_models(Path(d), c["size"])
        sets = [f"policy={policy}", f"reward_model={rm}", f"prompts={Path(d) / 'prompts.jsonl'}",
                f"steps={k['steps']}", f"rollout_batch_size={k['rollout_batch_size']}",
                f"minibatch_size={k['minibatch_size']}", f"micro_batch_size={k['micro_batch_size']}",
                f"ppo_epochs={k['ppo_epochs']}", f"sampling.max_new_tokens={k['max_new_tokens']}",
                "approx_kl_stop=1e9", "kl_budget=0", "samples_every=0"]
        cmd = [sys.executable, str(ROOT / "bench" / "ppo_step.py"), "--nproc", str(nproc), "--threads", str(threads),
               "-o", str(Path(d) / "run"), *[x for s in sets for x in ("--set", s)]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        measured = json.loads(res.stdout.strip().splitlines()[-1])
    return {"nproc": nproc, "threads": threads, "predicted": pred, "measured": measured,
            "error": pred["step"] / measured["median_step_seconds"] - 1}


def _sets_to_kwargs(sets: list[str]) -> dict:
    kw = dict(B=CHECK["rollout_batch_size"], minibatch=CHECK["minibatch_size"], epochs=CHECK["ppo_epochs"],
              T=CHECK["max_new_tokens"])
    names = {"rollout_batch_size": "B", "minibatch_size": "minibatch", "ppo_epochs": "epochs",
             "sampling.max_new_tokens": "T"}
    for s in sets:
        k, v = s.split("=", 1)
        if k in names:
            kw[names[k]] = int(v)
    return kw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--size", default=CHECK["size"])
    f.add_argument("-o", "--out", required=True)
    p = sub.add_parser("predict")
    p.add_argument("constants")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="rollout_batch_size=, minibatch_size=, ppo_epochs=, "
                   "sampling.max_new_tokens=")
    k = sub.add_parser("check")
    k.add_argument("constants")
    k.add_argument("--nproc", type=int, default=1)
    k.add_argument("--threads", type=int, default=1)
    sub.add_parser("gpu")
    a = ap.parse_args()
    if a.cmd == "fit":
        c = fit(a.threads, a.size)
        Path(a.out).write_text(json.dumps(c, indent=1))
        print(json.dumps(c, indent=1))
    elif a.cmd == "predict":
        c = json.loads(Path(a.constants).read_text())
        print(json.dumps(predict_cpu(c, a.nproc, **_sets_to_kwargs(a.set)), indent=1))
    elif a.cmd == "check":
        print(json.dumps(check(json.loads(Path(a.constants).read_text()), a.nproc, a.threads), indent=1))
    else:
        print("roofline with assumed efficiencies", EFF, "\n")
        print(_md(gpu_table(True)))
        print("\npure roofline (every unit at peak)\n")
        print(_md(gpu_table(False)))
        print("\nDeepSpeed-Chat's published step-3 setting (OPT-13B actor, OPT-350M reward/critic, 8 A100-80G, "
              "256 + 256 tokens, 1024 episodes per step), this model:")
        for eff in (True, False):
            r = predict_gpu(OPT_13B, 8, "ppo", 1024, P=256, T=256, efficient=eff, hw=A100, critic_params=350e6)
            print({"efficiencies": "assumed" if eff else "peak", **{k: round(v, 2) for k, v in r.items()}})


if __name__ == "__main__":
    main()
