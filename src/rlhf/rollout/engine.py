"""The one sampling engine every method uses (eval, best-of-N, labeling, PPO, GRPO, ...).

Prompts are left-padded, position ids skip the padding, and decoding runs token by token on the
model's KV cache (for GPT-2 and Llama models one buffer sized for the whole response, written in place,
and one attention mask made once). The log-probs returned are those of the tempered distribution the
token was drawn from (top-k = 0 and top-p = 1 make that the full distribution, as PPO needs). Tokens
after EOS are PAD and masked out.
"""
from __future__ import annotations

import importlib.util
import warnings
import inspect
from dataclasses import dataclass

import torch

from rlhf import parallel
from rlhf.data.batching import left_pad
from rlhf.errors import RLHFError
from rlhf.data.chat import decode_response, encode_prompt
from rlhf.models.lm import logprobs_from_logits, position_ids, temper

# transformers 5 renames the cache argument; `past_key_values` is the name every supported version takes
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")

try:  # transformers >= 5 keeps a cache as per-layer objects; older versions decode through their own cache
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - transformers 4.x
    DynamicLayer = None


DRAWS = ("multinomial", "inverse_cdf")
BACKENDS = ("engine", "vllm")


def vllm_problem() -> str | None:
    """Why `sampling.backend: vllm` cannot run on this machine (None: it can)."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package (pip install vllm)")
    return " and ".join(missing) or None


def check_backend(backend: str) -> None:
    """`sampling.backend` names a backend that runs on this machine; else one line naming the key (the config
    loader puts the section's path in front: `ppo.sampling.backend: ...`)."""
    if backend not in BACKENDS:
        raise RLHFError(f"backend: expected one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "vllm":
        problem = vllm_problem()
        if problem:
            raise RLHFError(f"backend: 'vllm' needs {problem}; use backend: engine (the default) here")


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    # how a token is drawn from the distribution: by the inverse CDF (`draw`: one uniform per row), or by
    # torch.multinomial (one exponential per vocabulary entry, ~10x the cost per step on CPU; HF generate's
    # draw). Both are exact samplers; they give other tokens for the same seed.
    draw: str = "inverse_cdf"
    # who samples: the built-in engine (the default, CPU and GPU), or vLLM colocated on each rank's GPU
    # (`rollout.vllm.make_generator`; GPU and the vllm package only, checked when the config is read)
    backend: str = "engine"

    def __post_init__(self) -> None:
        check_backend(self.backend)


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T) PAD after EOS
    response_mask: torch.Tensor  # (B, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (B, T) sampling log-probs, 0 where masked
    finished: torch.Tensor  # (B,) produced EOS

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], 1)


@dataclass(frozen=True)
class Rows:
    """A batch that is rows [start, start + its size) of a global batch of `total` rows, sampled by every process of
    a data-parallel run at once. Each decoding step then draws the random numbers of the whole global batch and keeps
    these rows, and every process decodes until the whole global batch is done: the tokens drawn do not depend on
    the number of processes (the single-process run of the global batch draws the same numbers)."""
    start: int
    total: int


def global_rows(n: int) -> Rows | None:
    """This process's rows when each of the processes samples its n-row slice of one global batch (slices in rank
    order, as `parallel.shard` cuts them); None for one process, which keeps its own stream untouched."""
    w = parallel.world_size()
    return None if w == 1 else Rows(parallel.rank() * n, n * w)


def _keep_kwargs(model, n: int) -> dict:
    """`logits_to_keep=n` where the model's forward takes it (HF causal LMs): the LM head then runs on the
    last n positions only, not over the whole prompt. Same logits for those positions either way."""
    model = getattr(model, "module", model)
    cls = type(model)
    ok = _KEEP.get(cls)
    if ok is None:
        try:
            ok = _KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            ok = _KEEP[cls] = False
    return {"logits_to_keep": n} if ok else {}


_KEEP: dict[type, bool] = {}


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None, rows: Rows | None = None) -> torch.Tensor:
    """One token per row from the categorical distributions `probs` (B, V), by the inverse CDF: one uniform u
    per row, and the first token whose cumulative probability exceeds u times the row's total. An exact
    sampler (a token of probability 0 is never drawn) that costs one random number per row, where
    torch.multinomial spends a random number per vocabulary entry (about 15x slower per decoding step of 16
    rows over 4,096 tokens on this CPU). The uniforms come from `generator` on its own device (the trainer's
    CPU generator samples alike on every device). `rows`: the global batch's uniforms are drawn, these rows' kept."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    gen_device = generator.device if generator is not None else probs.device
    n = probs.shape[0] if rows is None else rows.total
    u = torch.rand((n, 1), generator=generator, dtype=torch.float64, device=gen_device)
    u = (u if rows is None else u[rows.start:rows.start + probs.shape[0]]).to(probs.device)
    # strictly below the total, so rounding can never step past the last token of positive probability
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(1)


def multinomial_rows(probs: torch.Tensor, generator: torch.Generator | None, rows: Rows) -> torch.Tensor:
    """torch.multinomial(probs, 1) for `rows` of a global batch: multinomial's own one-sample method (the argmax
    of p / q with q ~ Exp(1) drawn per entry, in one draw over the batch), with q drawn for all `rows.total` rows
    and these rows kept. The same tokens as torch.multinomial on the global batch (tests/test_parallel_rl.py)."""
    gen_device = generator.device if generator is not None else probs.device
    q = torch.empty((rows.total, probs.shape[1]), dtype=probs.dtype, device=gen_device)
    q.exponential_(1, generator=generator)
    return (probs / q[rows.start:rows.start + probs.shape[0]].to(probs.device)).argmax(-1)


def _all_finished(finished: torch.Tensor, rows: Rows | None) -> bool:
    """Whether decoding may stop: this batch is done (one process), or the whole global batch is (`rows`)."""
    if rows is None:
        return bool(finished.all())
    return not parallel.any_rank(not bool(finished.all()))


def _prefill(model, prompt_ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, group: int, room: int,
             fast: bool):
    """The prompts' forward pass: (KV cache, last-position logits). With group > 1 (rows in runs of `group`
    copies of one prompt) each prompt is forwarded once and its cache and logits are repeated for its copies:
    the same numbers (rows of a batch never mix), a group-th of the prefill's arithmetic. `room`: tokens the
    cache must take after the prompt; `fast`: in a `_SlabLayer` cache where `_fast_step` allows it."""
    sl = slice(None, None, group) if group > 1 else slice(None)
    out = model(input_ids=prompt_ids[sl], attention_mask=mask[sl], position_ids=pos[sl], use_cache=True,
                **_keep_kwargs(model, 1))
    past, logits = out.past_key_values, out.logits[:, -1].float()
    if fast and all(type(layer) is DynamicLayer for layer in getattr(past, "layers", [None])):
        for layer in past.layers:
            _SlabLayer.convert(layer, group, room)
    elif group > 1:
        if hasattr(past, "batch_repeat_interleave"):
            past.batch_repeat_interleave(group)
        else:  # legacy tuple caches
            past = tuple(tuple(t.repeat_interleave(group, 0) for t in layer) for layer in past)
    return past, logits.repeat_interleave(group, 0) if group > 1 else logits


# Decoder architectures whose attention takes a ready (B, 1, 1, keys) boolean mask for a one-token step (no
# sliding window, no mask of their own), and whose cache layers are plain DynamicLayers: for these, on CPU, the
# decoding step skips HF's mask construction and the cache's concatenation (Python and copies that cost as much
# as a small model's arithmetic). Checked token for token against the generic path in tests/test_rollout.py
# (fp32, bf16 weights and bf16 autocast). On CUDA the generic path stays: there the same tokens came out in
# fp32 but not in bf16 (the attention kernel chosen for the strided cache differs), and it was no faster
# for a 163M Llama (H100, 64 x 128 tokens). Every other model decodes through HF's cache and 2-D mask.
FAST_STEP_MODELS = ("gpt2", "llama")


def _fast_step(model) -> bool:
    config = getattr(model, "config", None)
    return (DynamicLayer is not None and getattr(config, "model_type", None) in FAST_STEP_MODELS
            and getattr(config, "sliding_window", None) is None and next(model.parameters()).device.type == "cpu")


if DynamicLayer is not None:
    class _SlabLayer(DynamicLayer):
        """A DynamicLayer whose keys and values live in buffers sized once for the prompt and every new token:
        a decoding step writes its key and value in place, where DynamicLayer concatenates (a copy of the
        whole cache, per layer and step). Attention reads views of the filled part: the same numbers."""

        @classmethod
        def convert(cls, layer, group: int, room: int) -> None:
            keys, values = layer.keys, layer.values
            b, h, n, d = keys.shape
            layer.__class__ = cls
            layer.key_buffer = keys.new_empty(b * group, h, n + room, d)
            layer.value_buffer = values.new_empty(b * group, h, n + room, values.shape[-1])
            # repeat each prompt's cache for its `group` copies while filling the buffers
            layer.key_buffer[:, :, :n].view(b, group, h, n, -1).copy_(keys[:, None])
            layer.value_buffer[:, :, :n].view(b, group, h, n, -1).copy_(values[:, None])
            layer.length = n
            layer.keys, layer.values = layer.key_buffer[:, :, :n], layer.value_buffer[:, :, :n]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            n, end = self.length, self.length + key_states.shape[-2]
            if end > self.key_buffer.shape[2]:
                raise RuntimeError(f"decoding cache full ({self.key_buffer.shape[2]} positions)")
            self.key_buffer[:, :, n:end] = key_states
            self.value_buffer[:, :, n:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values


@torch.no_grad()
def sample(model, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int, pad_id: int,
           generator: torch.Generator | None = None, group: int = 1, rows: Rows | None = None) -> Rollout:
    """`group`: the prompts come in runs of `group` identical copies (G samples per prompt), whose prompt is
    then forwarded once (see `_prefill`); checked, so a wrong value is an error, never a wrong sample. `rows`:
    these prompts are a slice of a global batch that every process samples at once (see `Rows`)."""
    model = getattr(model, "module", model)
    device = next(model.parameters()).device
    if cfg.backend != "engine":
        raise RLHFError(f"sampling.backend: '{cfg.backend}' is not wired into this sampling call (it samples with the "
                        "built-in engine); use backend: engine, or sample through rollout.vllm.make_generator")
    if cfg.draw not in DRAWS:
        raise RLHFError(f"sampling.draw: expected one of {', '.join(DRAWS)}, got '{cfg.draw}'")
    if group > 1 and (len(prompts) % group or any(prompts[i] != prompts[i - i % group] for i in range(len(prompts)))):
        raise ValueError(f"sample(group={group}): the prompts are not runs of {group} identical copies")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    # inference mode: less bookkeeping per op than no_grad (a few % of a small model's decoding step on CPU); the
    # results are cloned into plain tensors after it, as autograd may not save inference tensors for backward
    with torch.inference_mode():
        roll = _decode(model, prompt_ids, prompt_mask, cfg, eos_id, pad_id, generator, group, device, rows)
    return Rollout(prompt_ids, prompt_mask, *(t.clone() for t in (roll.response_ids, roll.response_mask, roll.logprobs,
                                                                  roll.finished)))


def _decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cfg: SamplingConfig, eos_id: int, pad_id: int,
            generator: torch.Generator | None, group: int, device, rows: Rows | None = None) -> Rollout:
    B, P = prompt_ids.shape
    pos = position_ids(prompt_mask)
    fast = _fast_step(model)
    past, logits = _prefill(model, prompt_ids, prompt_mask, pos, group, cfg.max_new_tokens, fast)
    # the attention mask of every step is a prefix of one mask made once: the prompt's, then ones
    full_mask = torch.cat([prompt_mask, prompt_mask.new_ones((B, cfg.max_new_tokens))], 1)
    step_mask = full_mask.bool()[:, None, None, :] if fast else full_mask
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for t in range(cfg.max_new_tokens):
        if cfg.temperature > 0:
            scaled = _filter(temper(logits, cfg.temperature), cfg.top_k, cfg.top_p)
            logp_all = torch.log_softmax(scaled, -1)
            probs = logp_all.exp()
            if cfg.draw == "inverse_cdf":
                nxt = draw(probs, generator, rows)
            elif rows is not None:
                nxt = multinomial_rows(probs, generator, rows)
            elif generator is not None and generator.device != probs.device:
                # draws from the trainer's CPU generator: the same seed samples alike on every device
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            logp_all = torch.log_softmax(logits, -1)
            nxt = logits.argmax(-1)
        logp = logp_all.gather(1, nxt[:, None]).squeeze(1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        logps.append(torch.where(finished, torch.zeros_like(logp), logp))
        finished = finished | (nxt == eos_id)
        if t + 1 == cfg.max_new_tokens or _all_finished(finished, rows):
            break  # (the last token's forward would give logits nobody draws from)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=step_mask[..., :P + t + 1], position_ids=pos,
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1].float()
    response = torch.stack(tokens, 1)
    # mask: every token up to and including the first EOS
    is_eos = (response == eos_id).int()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    response_mask = (~after_eos).long()
    response = response.masked_fill(after_eos, pad_id)
    return Rollout(prompt_ids, prompt_mask, response, response_mask, torch.stack(logps, 1) * response_mask,
                   is_eos.sum(1) > 0)


def generate_texts(model, tokenizer, prompts: list, cfg: SamplingConfig, batch_size: int = 64,
                   seed: int = 0) -> list[str]:
    """Prompts (strings or message lists) -> decoded responses, in order."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[str] = []
    for i in range(0, len(encoded), batch_size):
        r = sample(model, encoded[i:i + batch_size], cfg, tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        out += [decode_response(tokenizer, row.tolist()) for row in r.response_ids]
    return out


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                      temperature: float = 1.0, with_entropy: bool = False):
    """Per-token log-probs (and entropies) of the response tokens input_ids[:, response_start:], from one
    full forward pass. Logits are divided by the sampling temperature, as when sampling."""
    keep = input_ids.shape[1] - response_start + 1  # the positions that predict response tokens, plus the last
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   **_keep_kwargs(model, keep)).logits[:, -keep:-1]
    return logprobs_from_logits(logits, input_ids[:, response_start:], temperature, with_entropy)
