"""What the on-policy trainers share (GRPO/RLOO, RAFT, RRHF): prompt files, their models and optimizer set up
alike, a group of responses per prompt from the one rollout engine, scored by the reward model."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.data.chat import decode_response, encode_prompt
from rlhf.data.jsonl import read_jsonl
from rlhf.data.sampler import IndexStream
from rlhf.errors import RLHFError
from rlhf.models.reward import normalized
from rlhf.rollout.engine import Rollout, Rows, SamplingConfig, global_rows, sample
from rlhf.models import lora
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.options import ModelOptions
from rlhf.models.reward import load_reward_model
from rlhf.rollout.packed import PackedRow, pack, packed_scores
from rlhf.train import loop
from rlhf.train.checkpoint import TrainerState
from rlhf.train.common import make_accelerator, make_optimizer
from rlhf.train.heldout import sample_kl


@dataclass
class GroupRunConfig:
    """The keys GRPO/RLOO, RAFT and RRHF share: what `GroupTrainer` reads and `sample_groups` samples with."""
    out: str = "runs/group"  # run directory
    seed: int = 0  # seeds LoRA's adapters, sampling (seed + 1), prompt order (seed + 3) and held-out samples
    model: ModelOptions = field(default_factory=ModelOptions)  # dtype, gradient checkpointing, LoRA
    policy: str = "runs/sft/model"  # the starting point, also the frozen reference (held-out KL, KL penalties)
    reward_model: str = "runs/reward/model"  # a reward-model folder sharing the policy's tokenizer
    prompts: str = "runs/world/prompts_train.jsonl"  # JSONL of {"prompt": str | messages} (or {"messages"})
    eval_prompts: str | None = "runs/world/prompts_eval.jsonl"  # held-out KL (and gold, when given a scorer)
    n_eval_prompts: int = 64  # held-out prompts sampled for KL (and gold) before, every eval_every steps, after
    # how responses are sampled; log-probs (ratios, KL) use the same temperature
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24, temperature=0.7))
    no_eos_score: float | None = -1.0  # RM score for responses that never produce EOS (None: keep the RM score)
    save_every: int = 0  # a checkpoint every N steps to resume from (0: none)
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config

    def validate(self) -> None:
        self.optim.validate()


def read_prompts(path: str) -> list:
    """A JSONL of {"prompt": str | messages} (or {"messages"}), e.g. the world's prompts_train.jsonl."""
    out = []
    for lineno, obj in read_jsonl(path):
        p = obj.get("prompt", obj.get("messages"))
        if not p or not isinstance(p, (str, list)):
            raise RLHFError(f"{path}:{lineno}: missing 'prompt' (a string or a list of messages)")
        out.append(p)
    if not out:
        raise RLHFError(f"{path}: no prompts")
    return out


def check_same_vocab(tokenizer, rm_tokenizer, rm_path: str) -> None:
    if tokenizer.get_vocab() != rm_tokenizer.get_vocab():
        raise RLHFError(f"reward model {rm_path}: its tokenizer differs from the policy's ({len(rm_tokenizer)} vs "
                        f"{len(tokenizer)} tokens); the reward model scores the sampled token ids directly")


@dataclass
class Groups:
    """G sampled responses for each of n prompts, flattened prompt-major (response g of prompt i at i * G + g)."""
    roll: Rollout
    scores: torch.Tensor  # (n * G,) reward-model scores
    tokenizer: object
    G: int

    @cached_property
    def texts(self) -> list[str]:
        """The decoded responses, decoded when first asked for (a step that logs no text never decodes)."""
        return [decode_response(self.tokenizer, r.tolist()) for r in self.roll.response_ids]

    def rows(self, prompt_ids: list[list[int]], start: int = 0, stop: int | None = None) -> list[PackedRow]:
        """Packed rows (`rlhf.rollout.packed`) for prompts [start, stop): each prompt once with its G responses
        (up to and including EOS), response indices counted from the first response of `start`."""
        stop = len(prompt_ids) if stop is None else stop
        ids, mask, G = self.roll.response_ids, self.roll.response_mask, self.G
        rows = []
        for n in range(start, stop):
            resps = [ids[n * G + g][mask[n * G + g].bool()].tolist() for g in range(G)]
            rows += pack(prompt_ids[n], resps, len(prompt_ids[n]) + ids.shape[1] + 1, start=(n - start) * G)
        return rows


@torch.no_grad()
def sample_groups(policy, reward_model, tokenizer, prompt_ids: list[list[int]], G: int, sampling: SamplingConfig,
                  generator: torch.Generator, rows: Rows | None = None) -> Groups:
    """G samples per prompt (each prompt's forward once for its G samples), scored by the reward model with
    each prompt forwarded once beside its G responses (`packed_scores`: the scores of the separate
    prompt + response sequences, up to float rounding). `rows`: the prompts are this process's slice of a
    global batch (`engine.Rows`, counted in responses)."""
    roll = sample(policy, [p for p in prompt_ids for _ in range(G)], sampling, tokenizer.eos_token_id,
                  tokenizer.pad_token_id, generator, group=G, rows=rows)
    groups = Groups(roll, torch.empty(0), tokenizer, G)
    device = next(reward_model.parameters()).device
    groups.scores = normalized(reward_model,
                               packed_scores(reward_model, groups.rows(prompt_ids), tokenizer.pad_token_id,
                                                           device))
    return groups


class GroupTrainer(loop.Trainer):
    """What GRPO/RLOO, RAFT and RRHF set up alike: prompts, the policy with its optimizer (prepared by
    accelerate), the frozen reference and reward model, encoded prompts, the prompt order (an IndexStream
    on seed + 3) and the sampling generator (seed + 1); held-out KL (and gold, with a scorer) as evaluation.
    `total_steps`: optimizer steps for the learning-rate schedule.

    On many processes (torchrun) every rank draws the same global batch of prompts from the prompt order and keeps
    its slice (`take`), so a prompt's group is sampled, scored and trained on by one rank; the sampling draws the
    global batch's random numbers (`engine.Rows`); gradients are averaged over ranks (`update`) and the metrics
    are the global batch's."""
    heldout_note = "no held-out prompts"

    def __init__(self, cfg, prompts: list | None, eval_prompts: list | None, total_steps: int, gold=None):
        self.cfg, self.gold = cfg, gold
        self.prompts = prompts if prompts is not None else read_prompts(cfg.prompts)
        if eval_prompts is None and cfg.eval_prompts:
            eval_prompts = read_prompts(cfg.eval_prompts)
        self.eval_prompts = (eval_prompts or [])[: cfg.n_eval_prompts]
        self.tokenizer = tokenizer = load_tokenizer(cfg.policy)
        check_same_vocab(tokenizer, load_tokenizer(cfg.reward_model), cfg.reward_model)
        self.accelerator = accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.model.mixed_precision)
        policy = lora.trainable(load_causal_lm(cfg.policy), cfg.model, cfg.seed)
        # LoRA: the policy, adapters off
        ref = lora.reference(policy, cfg.policy, cfg.policy, cfg.model, load_causal_lm)
        reward_model = lora.frozen(load_reward_model(cfg.reward_model), cfg.model)
        opt, self.sched = make_optimizer(policy, cfg.optim, total_steps)
        self.policy, self.opt = accelerator.prepare(policy, opt)
        self.ref, self.reward_model = ref.to(accelerator.device), reward_model.to(accelerator.device)
        for model in (self.policy, self.ref, self.reward_model):
            model.eval()  # no dropout anywhere
        self.encoded = [encode_prompt(tokenizer, p) for p in self.prompts]
        self.gen_sample = torch.Generator().manual_seed(cfg.seed + 1)
        self.order = IndexStream(len(self.prompts), torch.Generator().manual_seed(cfg.seed + 3))

    def take(self, n: int, key: str) -> list[int]:
        """This rank's share of the next n prompts of the prompt order (all n for one process); `key`: the
        config key of n, named when n does not divide over the processes."""
        return parallel.shard(self.order.take(n), key)

    def sample(self, idx: list[int], group_size: int) -> Groups:
        """`group_size` scored responses for each of the prompts `idx` (this rank's slice of the global batch)."""
        with self.accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
            return sample_groups(self.policy, self.reward_model, self.tokenizer, [self.encoded[i] for i in idx],
                                 group_size, self.cfg.sampling, self.gen_sample, global_rows(len(idx) * group_size))

    def update(self, loss: torch.Tensor, step: int, updates_applied: int = 0) -> float:
        """common.optimizer_step with the gradients averaged over the processes (the packed forward passes call
        the policy's backbone, past DistributedDataParallel's own averaging); a non-finite loss on any rank stops
        every rank. Returns the gradient norm before clipping."""
        return loop.synced_update(self.accelerator, self.policy, self.opt, self.sched, loss, step,
                                  self.cfg.optim.grad_clip, updates_applied)

    def evaluate(self) -> dict:
        """KL to the reference (and gold, with a scorer) on the held-out prompts."""
        if not self.eval_prompts:
            return {}
        return sample_kl(self.accelerator.unwrap_model(self.policy), self.ref, self.tokenizer, self.eval_prompts,
                         self.cfg.sampling, self.cfg.seed, self.gold)

    def state(self) -> TrainerState:
        return TrainerState({"policy": self.policy}, {"opt": self.opt, "sched": self.sched, "prompts": self.order},
                            {"sample": self.gen_sample}, self.tokenizer)

    def save_model(self, path: Path) -> None:
        lora.save_final(self.accelerator.unwrap_model(self.policy), self.tokenizer, path)


@dataclass
class GroupBatch:
    """The responses of a step as the loop reads them: one prompt per response, the texts decoded when first
    asked for."""
    prompts: list
    groups: Groups
    advantages: torch.Tensor | None = None  # GRPO/RLOO: each response's advantage, for the sample table

    @property
    def texts(self) -> list[str]:
        return self.groups.texts
