"""RAFT, reward-ranked fine-tuning (Dong et al. 2023): iterate sample -> rank -> fine-tune.

Each iteration samples K responses for each of a batch of prompts from the current policy, keeps the top
`keep_fraction` of each prompt's K by reward-model score (best-of-K when keep_fraction = 1/K), and runs
supervised fine-tuning on the kept (prompt, response) pairs: the loss is the mean negative log-likelihood
of the kept responses' tokens (prompt tokens are context only). No reference model enters the loss; the KL
to the starting policy is measured on held-out prompts.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.progress import progress_bar
from rlhf.rollout.packed import PackedRow, pack, packed_logprobs
from rlhf.rundir import RunDir
from rlhf.train.common import OptimConfig, optimizer_step
from rlhf.train.heldout import GoldFn
from rlhf.train.sampling import GroupRunConfig, sample_groups, setup_group_trainer


@dataclass
class RAFTConfig(GroupRunConfig):
    out: str = "runs/raft"
    iterations: int = 4
    prompts_per_iteration: int = 128
    k: int = 8  # samples per prompt
    keep_fraction: float = 0.125  # top fraction of each prompt's k kept for fine-tuning (k * keep_fraction whole)
    sample_batch_prompts: int = 32  # prompts per sampling call (times k sequences)
    sft_epochs: float = 1.0  # passes over each iteration's kept set
    batch_size: int = 16  # prompts (with their kept responses) per fine-tuning step
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="constant", betas=(0.9, 0.95)))


def keep_count(k: int, fraction: float) -> int:
    keep = k * fraction
    if not 0 < fraction <= 1 or abs(keep - round(keep)) > 1e-9 or round(keep) < 1:
        raise RLHFError(f"keep_fraction: k * keep_fraction must be a whole number of responses between 1 and k "
                        f"(k={k}, keep_fraction={fraction} gives {keep:g})")
    return int(round(keep))


def select_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(n, k) scores -> (n, keep) indices of each row's highest scores, best first (ties: earlier sample first)."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :keep]


def sft_loss(policy, rows: list[PackedRow], pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood over the response tokens of `rows` (at temperature 1)."""
    logp, mask = packed_logprobs(policy, rows, pad_id)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def run(cfg: RAFTConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    keep = keep_count(cfg.k, cfg.keep_fraction)
    steps_per_iter = max(1, math.ceil(cfg.sft_epochs * cfg.prompts_per_iteration / cfg.batch_size))
    setup = setup_group_trainer(cfg, prompts, eval_prompts, cfg.iterations * steps_per_iter)
    prompts, tokenizer, accelerator = setup.prompts, setup.tokenizer, setup.accelerator
    policy, reward_model = setup.policy, setup.reward_model
    opt, sched, encoded, gen_sample, gen_order = setup.opt, setup.sched, setup.encoded, setup.gen_sample, setup.gen_order
    order: list[int] = []
    pad = tokenizer.pad_token_id
    with RunDir(cfg.out, cfg) as run_dir:
        def held_out(step: int) -> dict:
            return setup.held_out(cfg, run_dir, step, gold)

        before = held_out(0)
        t0, step, samples, table = time.time(), 0, [], []
        with progress_bar("raft", cfg.iterations * steps_per_iter, show_progress and accelerator.is_main_process) as bar:
            for it in range(cfg.iterations):
                while len(order) < cfg.prompts_per_iteration:
                    order += torch.randperm(len(prompts), generator=gen_order).tolist()
                idx, order = order[: cfg.prompts_per_iteration], order[cfg.prompts_per_iteration:]
                # ---- sample k per prompt, keep the top fraction by RM score
                kept_rows, all_scores, kept_scores, kept_gold = [], [], [], []
                for c in range(0, len(idx), cfg.sample_batch_prompts):
                    chunk = idx[c:c + cfg.sample_batch_prompts]
                    with accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
                        g = sample_groups(policy, reward_model, tokenizer, [encoded[i] for i in chunk], cfg.k,
                                          cfg.sampling, gen_sample)
                    scores = g.scores
                    if cfg.no_eos_score is not None:
                        scores = torch.where(g.roll.finished, scores, torch.full_like(scores, cfg.no_eos_score))
                    top = select_top(scores.view(-1, cfg.k).cpu(), keep)
                    all_scores.append(scores.cpu())
                    ids, mask = g.roll.response_ids, g.roll.response_mask
                    for n, i in enumerate(chunk):
                        flat = [n * cfg.k + int(j) for j in top[n]]
                        kept_rows.append(pack(encoded[i], [ids[f][mask[f].bool()].tolist() for f in flat],
                                              len(encoded[i]) + ids.shape[1] + 1))
                        kept_scores += [scores[f].item() for f in flat]
                        if gold is not None:
                            kept_gold += [gold(prompts[i], g.texts[f]) for f in flat]
                        if n < 2:
                            p = prompts[i]
                            samples.append({"iteration": it + 1, "prompt": p if isinstance(p, str) else p[-1]["content"],
                                            "kept": g.texts[flat[0]], "rm": round(scores[flat[0]].item(), 3)})
                all_scores = torch.cat(all_scores)
                stat = {"rm_all": all_scores.mean().item(), "rm_kept": sum(kept_scores) / len(kept_scores),
                        "kept": len(kept_scores), "sampled": len(all_scores)}
                if kept_gold:
                    stat["gold_kept"] = sum(kept_gold) / len(kept_gold)
                # ---- fine-tune on the kept set
                losses, sft_order = [], []
                for _ in range(steps_per_iter):
                    if len(sft_order) < cfg.batch_size:
                        sft_order += torch.randperm(len(kept_rows), generator=gen_order).tolist()
                    b, sft_order = sft_order[: cfg.batch_size], sft_order[cfg.batch_size:]
                    rows, start = [], 0
                    for j in b:
                        for p, rs, where in kept_rows[j]:
                            rows.append((p, rs, [start + w for w in where]))
                        start += keep
                    with accelerator.autocast():
                        loss = sft_loss(policy, rows, pad)
                    optimizer_step(accelerator, policy, opt, sched, loss, step, cfg.optim.grad_clip)
                    step += 1
                    losses.append(loss.item())
                    bar.advance(loss=loss.item(), rm_kept=stat["rm_kept"])
                stat["sft_loss"] = sum(losses) / len(losses)
                run_dir.log(step, iteration=it + 1, **stat)
                table.append({"iteration": it + 1, **stat})
        seconds = time.time() - t0
        after = held_out(step)
        result = {"iterations": cfg.iterations, "k": cfg.k, "kept_per_prompt": keep, "sft_steps": step,
                  "episodes": cfg.iterations * cfg.prompts_per_iteration * cfg.k, "seconds": seconds}
        heldout = [{"when": w, **r} for w, r in (("start", before), ("end", after)) if r]
        if accelerator.is_main_process:
            lora.save_final(accelerator.unwrap_model(policy), tokenizer, run_dir.sub("model"))
            write_jsonl(run_dir.sub("samples.jsonl"), samples)
            run_dir.plot_metrics({"reward": ["rm_all", "rm_kept", "gold_kept"], "sft loss": ["sft_loss"],
                                  "held-out": ["eval_kl", "eval_gold"]})
            run_dir.write_summary("RAFT", {"result": result, "iterations": table, "held-out": heldout or "no held-out prompts"},
                                  {"result": result, "iterations": table, "heldout": heldout})
    return Path(cfg.out)
