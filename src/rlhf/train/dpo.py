"""Direct preference optimization: the policy learns from comparisons with no reward model and no sampling.

With pi_ref frozen (the SFT model), the implicit reward of a response is beta * (log pi(y|x) - log pi_ref(y|x)),
and each (chosen, rejected) pair contributes a loss on
h = [log pi(y_w) - log pi(y_l)] - [log pi_ref(y_w) - log pi_ref(y_l)]:

  sigmoid (DPO, Rafailov et al. 2023):   -log sigmoid(beta * h)
  cdpo    (labels flipped with prob. e): -(1 - e) log sigmoid(beta * h) - e log sigmoid(-beta * h)
  ipo     (Azar et al. 2023):            (h - 1 / (2 beta))^2, on per-token mean log-probs (as TRL)

K-wise rankings give their C(K,2) untied pairs; every response of a ranking is forwarded once with the
prompt shared (`rlhf.rollout.packed`), a ranking's loss is the mean over its pairs, and rankings weigh the
same. The reference's log-probs of every response are computed once before training and cached: the
reference is never run again during training (only to measure KL on held-out prompts).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf import parallel
from rlhf.data.chat import encode_prompt, encode_response
from rlhf.data.comparisons import Ranking, load_rankings
from rlhf.data.sampler import batch_order, train_eval_split
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.models.options import ModelOptions
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.rollout.engine import SamplingConfig
from rlhf.rollout.packed import PackedRow, pack, packed_logprobs
from rlhf.train import loop
from rlhf.train.checkpoint import TrainerState
from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer, masked_mean
from rlhf.train.heldout import GoldFn, sample_kl
from rlhf.train.loop import StepOutput

LOSSES = ("sigmoid", "ipo", "cdpo")


@dataclass
class DPOConfig:
    out: str = "runs/dpo"  # run directory
    seed: int = 0  # seeds the train/held-out split, the batch order and the held-out samples
    model: ModelOptions = field(default_factory=ModelOptions)  # dtype, gradient checkpointing, LoRA
    policy: str = "runs/sft/model"  # the starting checkpoint (a Hugging Face causal LM folder)
    reference: str | None = None  # frozen reference; None: the policy's starting checkpoint
    data: str = "runs/labels/comparisons.jsonl"  # every format `rlhf reward` reads (pairs, HH, K-wise rankings)
    on_bad: str = "error"  # error | skip (counted in the summary)
    limit: int | None = None  # read at most this many rankings (None: all)
    eval_fraction: float = 0.1  # held out with the same split (and seed) as `rlhf reward`
    epochs: float = 1.0  # passes over the training rankings
    batch_size: int = 8  # rankings per step
    max_len: int = 256  # prompt + response tokens (the prompt is cut from the left)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | cdpo
    beta: float = 0.1  # the implicit reward's scale: beta * (log pi - log pi_ref)
    label_smoothing: float = 0.1  # cdpo only: the assumed probability that a label is flipped
    length_buckets: int = 32  # batches drawn together, sorted by length, then shuffled (less padding); 1 = off
    ref_batch_size: int = 32  # rankings per reference forward when filling the cache
    eval_every: int = 0  # held-out metrics every N steps (0: before training and at the end only)
    kl_prompts: int = 64  # held-out prompts sampled for KL to the reference (0: off)
    kl_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=0.7))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_steps=5, weight_decay=0.0,
                                                                   schedule="linear", betas=(0.9, 0.999)))
    save_every: int = 0  # a checkpoint every N steps to resume from (0: none)
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise RLHFError(f"loss: expected one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.beta <= 0:
            raise RLHFError(f"beta must be > 0, got {self.beta}")
        if self.loss == "cdpo" and not 0 < self.label_smoothing < 0.5:
            raise RLHFError(f"label_smoothing: cdpo needs 0 < label_smoothing < 0.5, got {self.label_smoothing}")
        self.optim.validate()


# ---------------------------------------------------------------- the loss


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid",
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair losses from sequence log-probs (summed; per-token means for IPO)."""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    e = label_smoothing if loss == "cdpo" else 0.0
    return -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)


def sequence_logps(logp: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Each response's summed log-prob, or its per-token mean (`average`, as IPO uses)."""
    return masked_mean(logp, mask, dim=-1) if average else (logp * mask).sum(-1)


def pair_index(rankings: list[Ranking]) -> tuple[list[int], list[int], list[float]]:
    """(better, worse, weight) over the concatenated responses of `rankings`: every untied pair, weighted
    1 / (pairs in its ranking) so each ranking weighs the same."""
    better, worse, weight, offset = [], [], [], 0
    for r in rankings:
        pairs = r.pairs()
        better += [offset + i for i, _ in pairs]
        worse += [offset + j for _, j in pairs]
        weight += [1.0 / len(pairs)] * len(pairs)
        offset += r.k
    return better, worse, weight


def ranking_losses(logps: torch.Tensor, ref_logps: torch.Tensor, rankings: list[Ranking], cfg: DPOConfig):
    """(loss averaged over rankings, per-pair implicit-reward margins) for the responses of `rankings`."""
    b, w, weight = pair_index(rankings)
    b, w = torch.tensor(b, device=logps.device), torch.tensor(w, device=logps.device)
    losses = dpo_loss(logps[b], logps[w], ref_logps[b], ref_logps[w], cfg.beta, cfg.loss, cfg.label_smoothing)
    loss = (torch.tensor(weight, device=logps.device) * losses).sum() / len(rankings)
    margins = cfg.beta * ((logps[b] - ref_logps[b]) - (logps[w] - ref_logps[w])).detach()
    return loss, margins


# ---------------------------------------------------------------- data and the reference cache


def check_reference(policy_tok, ref_tok, policy, ref, ref_path: str) -> None:
    if policy_tok.get_vocab() != ref_tok.get_vocab() or policy.config.vocab_size != ref.config.vocab_size:
        raise RLHFError(f"reference {ref_path}: its vocabulary ({len(ref_tok)} tokens, embedding "
                        f"{ref.config.vocab_size}) "
                        f"differs from the policy's ({len(policy_tok)}, {policy.config.vocab_size}); DPO compares "
                        "log-probs of the same tokens, so the reference must share the policy's tokenizer")


def load_pairs(cfg: DPOConfig) -> tuple[list[Ranking], dict]:
    """The rankings with at least one untied pair, and the data report (bad rows, all-tied rankings)."""
    rankings, report = load_rankings(cfg.data, on_bad=cfg.on_bad, limit=cfg.limit)
    usable = [r for r in rankings if r.pairs()]
    info = {**report.as_dict(), "rankings_all_tied": len(rankings) - len(usable)}
    if not usable:
        raise RLHFError(f"{cfg.data}: no ranking has two responses ranked differently: no pair to train on")
    return usable, info


def pack_all(tokenizer, rankings: list[Ranking], max_len: int) -> list[list[PackedRow]]:
    """Each ranking as packed rows: its prompt once, its responses beside it (a response keeps at most
    max_len - 1 tokens; the prompt is cut from the left so prompt + response fit in max_len)."""
    return [pack(encode_prompt(tokenizer, list(r.prompt)), [encode_response(tokenizer, x) for x in r.responses],
                 max_len)
            for r in rankings]


def forward_rankings(model, packed: list[list[PackedRow]], pad_id: int, average: bool) -> torch.Tensor:
    """Sequence log-probs of every response of the given rankings (concatenated in order), one forward."""
    rows, start = [], 0
    for ranking_rows in packed:
        k = sum(len(rs) for _, rs, _ in ranking_rows)
        rows += [(p, rs, [start + x for x in where]) for p, rs, where in ranking_rows]
        start += k
    logp, mask = packed_logprobs(model, rows, pad_id)
    return sequence_logps(logp, mask, average)


def by_length(packed: list[list[PackedRow]], batch: int) -> list[list[int]]:
    """Ranking indices in chunks of `batch`, sorted by packed length: little padding when order does not matter."""
    order = sorted(range(len(packed)), key=lambda i: max(len(p) + sum(len(x) for x in rs) for p, rs, _ in packed[i]))
    return [order[i:i + batch] for i in range(0, len(order), batch)]


@torch.no_grad()
def reference_logps(ref, packed: list[list[PackedRow]], pad_id: int, average: bool, batch: int) -> list[torch.Tensor]:
    """The cache: one tensor of K sequence log-probs per ranking, computed once (rankings of similar
    length batched together)."""
    out: list[torch.Tensor] = [None] * len(packed)
    for chunk in by_length(packed, batch):
        flat = forward_rankings(ref, [packed[i] for i in chunk], pad_id, average).cpu()
        k = 0
        for i in chunk:
            n = sum(len(rs) for _, rs, _ in packed[i])
            out[i] = flat[k:k + n]
            k += n
    return out


@torch.no_grad()
def evaluate_pairs(policy, packed, ref_cache, rankings, cfg: DPOConfig, pad_id: int) -> dict:
    """Implicit-reward accuracy, mean margin and loss on held-out rankings."""
    losses, margins = [], []
    for chunk in by_length(packed, cfg.ref_batch_size):
        logps = forward_rankings(policy, [packed[i] for i in chunk], pad_id, cfg.loss == "ipo").cpu()
        loss, m = ranking_losses(logps, torch.cat([ref_cache[i] for i in chunk]), [rankings[i] for i in chunk], cfg)
        losses.append(loss.item() * len(chunk))
        margins.append(m)
    m = torch.cat(margins)
    return {"accuracy": (m > 0).float().mean().item(), "margin": m.mean().item(),
            "loss": sum(losses) / len(rankings), "pairs": len(m)}


# ---------------------------------------------------------------- the trainer


class DPO(loop.Trainer):
    """The policy, its optimizer, the cached reference log-probs and the batch order; one step is one batch."""
    name = "dpo"
    unit = "pairs"
    bar_fields = {"loss": "loss", "acc": "accuracy"}
    heldout_note = "no held-out data"
    plots = {"loss": ["loss", "eval_loss"], "implicit-reward accuracy": ["accuracy", "eval_accuracy"],
             "implicit-reward margin": ["margin", "eval_margin"], "held-out KL": ["eval_kl"],
             "held-out gold": ["eval_gold"], "throughput": ["pairs_per_s"]}

    def __init__(self, cfg: DPOConfig, gold: GoldFn | None = None):
        self.cfg, self.gold, self.title = cfg, gold, f"DPO ({cfg.loss})"
        rankings, self.data_report = load_pairs(cfg)
        split = torch.Generator().manual_seed(cfg.seed)
        self.train_set, self.eval_set = train_eval_split(rankings, cfg.eval_fraction, split)
        if not self.train_set:
            raise RLHFError(f"{cfg.data}: nothing left to train on after holding out eval_fraction={cfg.eval_fraction}")
        self.tokenizer = load_tokenizer(cfg.policy)
        ref_path = cfg.reference or cfg.policy
        ref_tokenizer = load_tokenizer(ref_path)
        self.accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.model.mixed_precision)
        policy = lora.trainable(load_causal_lm(cfg.policy), cfg.model, cfg.seed)
        ref = lora.reference(policy, cfg.policy, ref_path, cfg.model, load_causal_lm)  # LoRA: the policy, adapters off
        check_reference(self.tokenizer, ref_tokenizer, policy, ref, ref_path)
        self.train_packed = pack_all(self.tokenizer, self.train_set, cfg.max_len)
        self.eval_packed = pack_all(self.tokenizer, self.eval_set, cfg.max_len)
        self.steps = max(1, int(cfg.epochs * len(self.train_set) / cfg.batch_size))
        parallel.per_rank(cfg.batch_size, "batch_size")  # global: each rank trains on its share of every batch
        opt, self.sched = make_optimizer(policy, cfg.optim, self.steps)
        self.policy, self.opt = self.accelerator.prepare(policy, opt)
        self.ref = ref.to(self.accelerator.device)
        self.policy.eval()  # no dropout: at the start policy = reference exactly, and the loss is log 2
        self.cache_reference()
        lengths = [max(len(p) + sum(len(x) for x in rs) for p, rs, _ in rows) for rows in self.train_packed]
        self.schedule = batch_order(lengths, cfg.batch_size, self.steps, cfg.seed, cfg.length_buckets)
        self.kl_prompts = list({str(r.prompt): list(r.prompt) for r in self.eval_set}.values())[: cfg.kl_prompts]
        self.first_loss, self.pairs_seen = None, 0

    def cache_reference(self) -> None:
        """The reference's log-probs of every train and held-out response, computed once."""
        cfg, pad, average = self.cfg, self.tokenizer.pad_token_id, self.cfg.loss == "ipo"
        t, cpu = time.time(), time.process_time()
        with self.accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
            self.ref_train = reference_logps(self.ref, self.train_packed, pad, average, cfg.ref_batch_size)
            self.ref_eval = reference_logps(self.ref, self.eval_packed, pad, average, cfg.ref_batch_size)
        self.cache_seconds, self.cache_cpu_seconds = time.time() - t, time.process_time() - cpu

    def step(self, step: int) -> StepOutput:
        """On many processes every rank reads the same global batch of the schedule and trains on its slice; the
        loss is a mean over rankings (equal shares: the averaged gradients are the global batch's), the metrics
        the global batch's (accuracy and margin over all its pairs)."""
        idx, cfg = parallel.shard(self.schedule[step], "batch_size"), self.cfg
        with self.accelerator.autocast():
            logps = forward_rankings(self.policy, [self.train_packed[i] for i in idx], self.tokenizer.pad_token_id,
                                     cfg.loss == "ipo")
        ref_logps = torch.cat([self.ref_train[i] for i in idx]).to(logps.device)
        loss, margins = ranking_losses(logps, ref_logps, [self.train_set[i] for i in idx], cfg)
        grad_norm = loop.synced_update(self.accelerator, self.policy, self.opt, self.sched, loss, step,
                                       cfg.optim.grad_clip)
        pairs = {"accuracy": (margins > 0).float().mean().item(), "margin": margins.mean().item()}
        if parallel.world_size() > 1:  # per pair over the global batch: ranks weighted by their pairs
            pairs = parallel.mean_metrics(pairs, weight=len(margins))
        row = {**parallel.mean_metrics({"loss": loss.item()}), **pairs, "grad_norm": grad_norm,
               "lr": self.sched.get_last_lr()[0]}
        n_pairs = len(margins) if parallel.world_size() == 1 else int(parallel.all_sum(torch.tensor(len(margins))))
        self.first_loss = row["loss"] if self.first_loss is None else self.first_loss
        self.pairs_seen += n_pairs
        return StepOutput(row, items=n_pairs)

    def evaluate(self) -> dict:
        """Implicit-reward accuracy, margin and loss on the held-out rankings; KL (and gold) on their prompts."""
        row = {}
        if self.eval_set:
            with self.accelerator.autocast():
                row.update(evaluate_pairs(self.policy, self.eval_packed, self.ref_eval, self.eval_set, self.cfg,
                                          self.tokenizer.pad_token_id))
        if self.kl_prompts:
            row.update(sample_kl(self.accelerator.unwrap_model(self.policy), self.ref, self.tokenizer, self.kl_prompts,
                                 self.cfg.kl_sampling, self.cfg.seed, self.gold))
        return row

    def state(self) -> TrainerState:
        return TrainerState({"policy": self.policy}, {"opt": self.opt, "sched": self.sched}, tokenizer=self.tokenizer)

    def scalars(self) -> dict:
        return {"first_loss": self.first_loss, "pairs_seen": self.pairs_seen}

    def restore(self, scalars: dict) -> None:
        self.first_loss, self.pairs_seen = scalars.get("first_loss"), scalars.get("pairs_seen", 0)

    def save_model(self, path: Path) -> None:
        lora.save_final(self.accelerator.unwrap_model(self.policy), self.tokenizer, path)

    def result(self, progress: loop.Progress) -> dict:
        cfg, seconds = self.cfg, progress.train_seconds
        result = {"loss": cfg.loss, "beta": cfg.beta, "rankings_train": len(self.train_set),
                  "rankings_eval": len(self.eval_set), "pairs_trained": self.pairs_seen, "steps": progress.done,
                  "first_loss": self.first_loss, "final_loss": progress.row.get("loss"),
                  "reference_cache_seconds": self.cache_seconds, "train_seconds": seconds,
                  "reference_cache_cpu_seconds": self.cache_cpu_seconds,
                  "train_cpu_seconds": progress.train_cpu_seconds,
                  "pairs_per_s": progress.items / max(1e-9, seconds),
                  "pairs_per_s_with_cache": progress.items / max(1e-9, seconds + self.cache_seconds)}
        if cfg.loss in ("sigmoid", "cdpo"):
            result["log2"] = math.log(2)
        return result

    def sections(self) -> dict:
        return {"data": self.data_report, "checkpoint": "model/"}


def run(cfg: DPOConfig, show_progress: bool = True, gold: GoldFn | None = None) -> Path:
    """`gold`: an optional (prompt, response) -> gold reward scorer for the held-out samples (the pipeline
    passes the world's); without it the held-out checks are implicit-reward accuracy, margins and KL."""
    cfg.validate()
    return loop.run(DPO(cfg, gold), loop.Hooks(), show_progress)
