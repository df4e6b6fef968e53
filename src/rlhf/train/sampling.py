"""What the on-policy trainers share (GRPO/RLOO, RAFT, RRHF): prompt files, a group of responses per prompt
from the one rollout engine, and the one place the reward model is called."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data.chat import decode_response
from rlhf.data.jsonl import read_jsonl
from rlhf.errors import RLHFError
from rlhf.models.reward import score as rm_score
from rlhf.rollout.engine import Rollout, SamplingConfig, sample
from rlhf.rollout.packed import PackedRow, pack


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


def reward_scores(reward_model, roll: Rollout) -> torch.Tensor:
    """The one place the reward model is called: prompt + response token ids -> normalized scores."""
    return rm_score(reward_model, roll.input_ids, roll.attention_mask)


@dataclass
class Groups:
    """G sampled responses for each of n prompts, flattened prompt-major (response g of prompt i at i * G + g)."""
    roll: Rollout
    scores: torch.Tensor  # (n * G,) reward-model scores
    texts: list[str]
    G: int

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
                  generator: torch.Generator) -> Groups:
    roll = sample(policy, [p for p in prompt_ids for _ in range(G)], sampling, tokenizer.eos_token_id,
                  tokenizer.pad_token_id, generator)
    texts = [decode_response(tokenizer, r.tolist()) for r in roll.response_ids]
    return Groups(roll, reward_scores(reward_model, roll), texts, G)
