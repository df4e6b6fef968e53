"""Stage 3.1: a reward model from comparisons, -log sigmoid(r_chosen - r_rejected).

K-wise rankings use the InstructGPT batching: every response of a prompt is forwarded once and all
C(K,2) pairs of that ranking form one batch element, its loss the mean over its pairs. Ties are
skipped or trained toward P = 0.5. After training, scores are shifted so the reference policy's
responses (a seeded random sample of `normalize_sample` training responses, sampled from it) have mean
0; the offset is recorded. `init` is a causal LM (last-token pooling, packed prompts) or an encoder
(BERT-like: plain text, its own pooling; see models/reward.py). `train_layers: k` trains only the top k
transformer blocks (plus final norm and head): the frozen blocks need no activations kept for backward;
`train_embeddings: false` keeps the embeddings. `micro_batch_tokens` splits a step's forward/backward into
parts of bounded size (the same summed gradient); `model.mixed_precision: bf16` runs them under autocast.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf import parallel
from rlhf.data.batching import left_pad
from rlhf.data.chat import encode_prompt, encode_prompt_response, encode_response
from rlhf.data.comparisons import Ranking, load_rankings
from rlhf.data.sampler import batch_order, train_eval_split
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.models.freeze import freeze_below
from rlhf.models.lm import load_tokenizer
from rlhf.models.options import ModelOptions
from rlhf.models.reward import encode_for, init_reward_model, is_encoder, max_len, raw_scores, score_sequences
from rlhf.parallel import ParallelConfig
from rlhf.parallel.fsdp import as_forward, gathered, prepare
from rlhf.plots import plot_calibration
from rlhf.progress import progress_bar
from rlhf.rollout.packed import PackedRow, packed_scores
from rlhf.rundir import RunDir
from rlhf.stats import pairwise_accuracy, standard_error
from rlhf.train.checkpoint import TrainerState, resume
from rlhf.train.common import (OptimConfig, apply_update, check_finite, make_accelerator,
                               make_optimizer)


@dataclass
class RewardConfig:
    out: str = "runs/reward"  # run directory
    seed: int = 0  # seeds the split (unless split_seed), the batch order, the score head and the offset's sample
    model: ModelOptions = field(default_factory=ModelOptions)  # dtype, gradient checkpointing, LoRA
    init: str = "runs/sft/model"  # any local HF causal LM (the SFT model by default) or encoder (BERT-like)
    # auto (decoders: last token; encoders: their sentence-transformers pooling, else [CLS]) | last | mean | cls
    pooling: str = "auto"
    train_layers: int = 0  # 0: train every weight; k > 0: only the top k transformer blocks, final norm and head
    train_embeddings: bool = True  # false: the token (and position) embeddings stay as loaded: no gradient or
                                   # optimizer state for them (SmolLM2: 28M of 135M weights, 0.34 GB less)
    data: str = "runs/labels/comparisons.jsonl"  # rankings or pairs (TRL, conversational, HH, K-wise)
    on_bad: str = "skip"  # skip (counted in the summary) | error
    limit: int | None = None  # read at most this many rankings (None: all)
    eval_fraction: float = 0.1  # rankings held out for pairwise accuracy
    split_seed: int | None = None  # seed of the train/held-out split (default: seed), to compare seeds on one split
    epochs: float = 1.0  # one epoch: more overfits quickly
    batch_size: int = 8  # rankings (prompts) per step
    micro_batch_tokens: int = 0  # > 0: forward/backward a step's rankings in parts of at most this many padded
                                 # tokens (the same gradient, summed; bounds memory on long batches); 0: one pass
    max_len: int = 256  # prompt + response tokens (never more than the model's position table)
    ties: str = "skip"  # skip | half (train tied pairs toward P = 0.5)
    margin: float = 0.0  # the loss asks r_chosen - r_rejected to exceed this
    normalize: bool = True  # shift scores so the reference policy's responses have mean 0 (the offset is saved)
    normalize_sample: int = 512  # training responses scored for the offset (seeded random sample; 0 = all)
    pack_responses: bool = True  # forward a ranking's shared prompt once, its K responses beside it (same scores)
    length_buckets: int = 32  # batches drawn together, sorted by length, then shuffled (less padding); 1 = off
    save_every: int = 0  # a checkpoint every N steps to resume from (0: only the final model)
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=5, weight_decay=0.0,
                                                                   schedule="linear", betas=(0.9, 0.999)))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # many processes: ddp | fsdp2

    def validate(self) -> None:
        self.parallel.validate()
        if self.ties not in ("skip", "half"):
            raise RLHFError(f"ties: expected 'skip' or 'half', got '{self.ties}'")
        if self.normalize_sample < 0:
            raise RLHFError("normalize_sample: expected >= 0 (0 = every training response), got "
                            f"{self.normalize_sample}")
        if self.micro_batch_tokens < 0:
            raise RLHFError("micro_batch_tokens: expected >= 0 (0 = the whole batch in one pass), got "
                            f"{self.micro_batch_tokens}")
        if self.train_layers < 0:
            raise RLHFError(f"train_layers: expected >= 0 (0 = all), got {self.train_layers}")
        if (self.train_layers or not self.train_embeddings) and self.model.lora.r:
            raise RLHFError("train_layers / train_embeddings and model.lora.r are two ways to train part of the model: "
                            "set one of them")
        self.optim.validate()


def count_groups(rankings: list[Ranking], ties: str = "skip") -> int:
    """Rankings that add a term to `ranking_loss` (the mean's denominator): those with a pair to train."""
    return sum(1 for r in rankings if r.pairs() or (ties == "half" and r.ties()))


def ranking_loss(scores: torch.Tensor, rankings: list[Ranking], ties: str = "skip", margin: float = 0.0):
    """scores: all responses of `rankings`, concatenated in order. Returns (loss, correct pairs, pairs).
    Each ranking weighs the same; within it, the loss is the mean over its C(K,2) pairs."""
    better, worse, weight, tie_i, tie_j, tie_w = [], [], [], [], [], []
    offset, groups = 0, count_groups(rankings, ties)
    for r in rankings:
        pairs, tied = r.pairs(), (r.ties() if ties == "half" else [])
        n = len(pairs) + len(tied)
        if n:
            better += [offset + i for i, _ in pairs]
            worse += [offset + j for _, j in pairs]
            weight += [1.0 / n] * len(pairs)
            tie_i += [offset + i for i, _ in tied]
            tie_j += [offset + j for _, j in tied]
            tie_w += [1.0 / n] * len(tied)
        offset += r.k
    if groups == 0:
        return scores.sum() * 0.0, 0, 0
    device = scores.device
    diff = (scores[torch.tensor(better, dtype=torch.long, device=device)]
            - scores[torch.tensor(worse, dtype=torch.long, device=device)])
    w = torch.tensor(weight, device=device)
    loss = (w * F.softplus(-(diff - margin))).sum()
    if tie_i:
        d = scores[torch.tensor(tie_i, device=device)] - scores[torch.tensor(tie_j, device=device)]
        loss = loss + (torch.tensor(tie_w, device=device) * 0.5 * (F.softplus(-d) + F.softplus(d))).sum()
    return loss / groups, int((diff > 0).sum()), len(better)


def split(cfg: RewardConfig, rankings: list[Ranking]) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held out) as the reward stage splits them (`split_seed`, else `seed`): every later use of "the
    RM's held-out pairs" takes them from here (or from `held_out`), so none of them was trained on."""
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return train_eval_split(rankings, cfg.eval_fraction, torch.Generator().manual_seed(seed))


def held_out(cfg: RewardConfig) -> list[Ranking]:
    """The reward stage's held-out rankings: its data read as `run` reads it (on_bad, limit), then `split`."""
    return split(cfg, load_rankings(cfg.data, on_bad=cfg.on_bad, limit=cfg.limit)[0])[1]


def encode_rankings(tokenizer, rankings: list[Ranking], max_len: int, model=None) -> list[list[list[int]]]:
    """Every response of every ranking as the reward model reads it (a causal LM's unless `model` says otherwise)."""
    if model is None:
        return [[encode_prompt_response(tokenizer, list(r.prompt), resp,
                                        max_len) for resp in r.responses] for r in rankings]
    return [[encode_for(model, tokenizer, list(r.prompt), resp, max_len) for resp in r.responses] for r in rankings]


def pack_ranking(tokenizer, r: Ranking, max_len: int, start: int = 0) -> list[PackedRow]:
    """The K sequences `encode_prompt_response` makes for one ranking, as rows that share their prompt:
    responses whose prompt is cut at the same place (all of them unless max_len bites) go in one row."""
    p = encode_prompt(tokenizer, list(r.prompt))
    groups: dict[int, PackedRow] = {}
    for k, resp in enumerate(r.responses):
        toks = encode_response(tokenizer, resp)[:max_len]
        cut = max(0, len(p) - (max_len - len(toks)))
        row = groups.setdefault(cut, (p[cut:], [], []))
        row[1].append(toks)
        row[2].append(start + k)
    return list(groups.values())


def micro_batches(idx: list[int], sizes: list[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """`idx` cut, in order, into parts whose padded batch (rows x widest row) stays within `max_tokens`
    (a ranking larger than that alone is a part of its own); max_tokens 0: one part."""
    if max_tokens <= 0:
        return [list(idx)]
    parts: list[list[int]] = []
    rows = width = 0
    for i in idx:
        n, w = sizes[i]
        if parts and (rows + n) * max(width, w) <= max_tokens:
            parts[-1].append(i)
            rows, width = rows + n, max(width, w)
        else:
            parts.append([i])
            rows, width = n, w
    return parts


def batch_scores(model, seqs: list[list[int]], pad_id: int, device) -> torch.Tensor:
    ids, mask = left_pad(seqs, pad_id)
    return raw_scores(model, ids.to(device), mask.to(device))


def score_all(model, encoded: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Raw scores of encoded rankings, grouped like them (the one scoring API, `score_sequences`)."""
    model.eval()
    flat = score_sequences(model, [s for group in encoded for s in group], pad_id, normalize=False)
    model.train()
    out, k = [], 0
    for group in encoded:
        out.append(flat[k:k + len(group)])
        k += len(group)
    return out


def batch_sizes(train_rows: list | None, train_enc: list) -> tuple[list[int], list[tuple[int, int]]]:
    """Each training ranking's length (its longest packed row, or longest sequence without packing) and the
    (rows, width) it adds to a batch."""
    if train_rows is not None:
        lengths = [max(len(p) + sum(len(x) for x in rs) for p, rs, _ in rows) for rows in train_rows]
        return lengths, [(len(rows), width) for rows, width in zip(train_rows, lengths)]
    lengths = [max(len(s) for s in group) for group in train_enc]
    return lengths, [(len(group), width) for group, width in zip(train_enc, lengths)]


def part_scores(model, pad_id: int, device, part: list[int], train_set, train_rows: list | None, train_enc):
    """Scores of every response of the rankings `part` (packed when train_rows is given), in the order
    ranking_loss expects."""
    if train_rows is not None:
        rows, start = [], 0
        for i in part:  # response indices follow the order of `part`, as ranking_loss expects
            rows += [(p, rs, [start + w for w in where]) for p, rs, where in train_rows[i]]
            start += train_set[i].k
        return packed_scores(model, rows, pad_id, device)
    return batch_scores(model, [s for i in part for s in train_enc[i]], pad_id, device)


def backward_batch(cfg: RewardConfig, accelerator, model, pad_id: int, step: int, parts: list[list[int]], train_set,
                   train_rows: list | None, train_enc) -> tuple[float, int, int]:
    """Forward and backward one step's rankings in `parts`, their gradients adding up to the batch's mean
    loss; returns (loss, correct pairs, pairs). Under many processes `parts` is this rank's share of the global
    batch: the mean is over every rank's rankings, the numbers returned are the global batch's, and every rank
    makes as many passes (a rank with fewer parts repeats its last one with weight 0), as the collectives of
    DDP's and FSDP2's forward and backward need."""
    local = count_groups([train_set[i] for part in parts for i in part], cfg.ties)
    world = parallel.world_size()
    groups = max(1, local if world == 1 else int(parallel.all_sum(torch.tensor(float(local)))))
    passes = len(parts) if world == 1 else int(parallel.all_max(torch.tensor(float(len(parts)))))
    loss, correct, n_pairs = 0.0, 0, 0
    for k in range(passes):
        part = parts[min(k, len(parts) - 1)]
        with accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
            scores = as_forward(model, part_scores, pad_id, accelerator.device, part, train_set, train_rows,
                                train_enc)
        part_loss, c, n = ranking_loss(scores.float(), [train_set[i] for i in part], cfg.ties, cfg.margin)
        share = count_groups([train_set[i] for i in part], cfg.ties) / groups  # parts add up to the mean
        if k >= len(parts):  # a pass only to match the other ranks' collectives
            share, c, n = 0.0, 0, 0
        check_finite(part_loss, step)
        accelerator.backward(part_loss * share if world == 1 else part_loss * (share * world))
        loss, correct, n_pairs = loss + part_loss.item() * share, correct + c, n_pairs + n
    if world > 1:  # the global batch's numbers, the same on every rank
        loss, correct, n_pairs = (float(x) for x in parallel.all_sum(torch.tensor([loss, correct, n_pairs],
                                                                                   dtype=torch.float64)))
        correct, n_pairs = int(correct), int(n_pairs)
    return loss, correct, n_pairs


def held_out_accuracy(model, pad_id: int, eval_set, eval_enc) -> dict:
    """Pairwise accuracy on the held-out rankings, its standard error, and the calibration points."""
    t = time.time()
    acc, calib = pairwise_accuracy(eval_set, score_all(model, eval_enc, pad_id))
    n = sum(len(r.pairs()) for r in eval_set)
    return {"eval_pairwise_accuracy": acc, "eval_pairs": n, "eval_seconds": time.time() - t,
            "eval_pairwise_accuracy_se": standard_error(acc, n), "calibration": calib}


def normalize(model, pad_id: int, train_enc, cfg: RewardConfig) -> dict:
    """Shift the scores so a seeded sample of training responses has mean 0 (the offset is kept in the
    model's config)."""
    t = time.time()
    flat_enc = [s for g in train_enc for s in g]
    if cfg.normalize_sample and cfg.normalize_sample < len(flat_enc):
        pick = torch.randperm(len(flat_enc), generator=torch.Generator().manual_seed(cfg.seed + 1))
        flat_enc = [flat_enc[i] for i in pick[:cfg.normalize_sample].tolist()]
    flat = torch.tensor(score_all(model, [flat_enc], pad_id)[0])
    model.config.rlhf_reward_offset = float(flat.mean())
    return {"reward_offset": float(flat.mean()), "reward_std_after_shift": float(flat.std()),
            "normalize_responses": len(flat_enc), "normalize_seconds": time.time() - t}


def run(cfg: RewardConfig, show_progress: bool = True) -> Path:
    cfg.validate()
    rankings, report = load_rankings(cfg.data, on_bad=cfg.on_bad, limit=cfg.limit)
    train_set, eval_set = split(cfg, rankings)
    tokenizer = load_tokenizer(cfg.init)
    accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.model.mixed_precision)
    model = lora.trainable(init_reward_model(cfg.init, cfg.seed, cfg.pooling), cfg.model, cfg.seed, task="SEQ_CLS")
    model.config.pad_token_id = tokenizer.pad_token_id
    trainable = freeze_below(model, cfg.train_layers, cfg.train_embeddings)
    packed = cfg.pack_responses and not is_encoder(model)  # an encoder's prompt attends to the response: no sharing
    cut = min(cfg.max_len, max_len(model))  # never longer than the model's position table (BERT-likes: 512 or less)
    train_enc = encode_rankings(tokenizer, train_set, cut, model)
    eval_enc = encode_rankings(tokenizer, eval_set, cut, model)
    steps = max(1, int(cfg.epochs * len(train_set) / cfg.batch_size))
    parallel.per_rank(cfg.batch_size, "batch_size")
    model, opt, sched = prepare(accelerator, model, lambda m: make_optimizer(m, cfg.optim, steps),
                                cfg.parallel.strategy)
    model.train()
    train_rows = [pack_ranking(tokenizer, r, cut) for r in train_set] if packed else None
    lengths, sizes = batch_sizes(train_rows, train_enc)
    schedule = batch_order(lengths, cfg.batch_size, steps, cfg.seed, cfg.length_buckets)
    state = TrainerState({"model": model}, {"opt": opt, "sched": sched}, tokenizer=tokenizer)
    first, scalars = resume(state, cfg.resume, "reward model", steps)
    with RunDir(cfg.out, cfg) as run_dir:
        t0, pairs_seen = time.time(), scalars.get("pairs_seen", 0)
        with progress_bar("reward", steps - first, show_progress and accelerator.is_main_process) as bar:
            for step in range(first, steps):
                loss, correct, n_pairs = backward_batch(cfg, accelerator, model, tokenizer.pad_token_id, step,
                                                        micro_batches(parallel.shard(schedule[step]), sizes,
                                                                      cfg.micro_batch_tokens),
                                                        train_set, train_rows, train_enc)
                grad_norm = apply_update(accelerator, model, opt, sched, cfg.optim.grad_clip)
                pairs_seen += n_pairs
                run_dir.log(step + 1, loss=loss, train_accuracy=correct / max(1, n_pairs), grad_norm=grad_norm,
                            pairs_per_s=pairs_seen / (time.time() - t0))
                bar.advance(loss=loss, acc=correct / max(1, n_pairs))
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                    state.save(run_dir.sub(f"checkpoints/step-{step + 1}"), step + 1, pairs_seen=pairs_seen)
        train_seconds = time.time() - t0
        model = accelerator.unwrap_model(model)  # evaluated on every rank: the whole held-out set, the same scores
        result = {"rankings_train": len(train_set), "rankings_eval": len(eval_set), "pairs_trained": pairs_seen,
                  "steps": steps, "train_seconds": train_seconds, "pairs_per_s": pairs_seen / train_seconds,
                  "pooling": model.config.rlhf_reward_pooling, "trainable_parameters": trainable}
        sections: dict = {}
        if eval_set:
            with accelerator.autocast():
                result.update(as_forward(model, held_out_accuracy, tokenizer.pad_token_id, eval_set, eval_enc))
            calibration = result.pop("calibration")
            if accelerator.is_main_process:
                sections["calibration"] = plot_calibration(calibration, run_dir.sub("plots/calibration.png"))
        if cfg.normalize:
            with accelerator.autocast():
                result.update(as_forward(model, normalize, tokenizer.pad_token_id, train_enc, cfg))
        final = gathered(model)  # the full weights on rank 0 (FSDP2: gathered from every rank)
        if accelerator.is_main_process:
            lora.save_final(final, tokenizer, run_dir.sub("model"))
            run_dir.write_summary("Reward model", {"result": result, "data": report.as_dict(), **sections,
                                                   "checkpoint": "model/ (AutoModelForSequenceClassification, "
                                                   "num_labels=1)"},
                                  {"result": result, "data": report.as_dict(), **sections})
    return Path(cfg.out)
