"""Rollouts on vLLM (`sampling.backend: vllm`), colocated: each rank's vLLM shares its GPU with the trainer.

The built-in engine (`rollout.engine`) stays the default and the CPU path. On GPUs, `make_generator` gives
a generator with one interface for both backends:

    gen = make_generator(cfg.sampling, policy, tokenizer, seed=cfg.seed)
    roll = gen.sample(prompt_ids, generator, group=G)        # a `Rollout`, as `engine.sample` returns
    with gen.training(policy):                               # vLLM sleeps (GPU memory freed) while training;
        ...optimizer steps...                                # on exit the new weights are loaded into it
    metrics |= logprob_mismatch(roll.logprobs, trainer_logp, roll.response_mask)

vLLM runs in the trainer's process (TRL's "colocate" mode): `vllm.LLM` with `enable_sleep_mode`, on several
ranks with `distributed_executor_backend="external_launcher"` (each rank its own engine on its own GPU, the
ranks launched by torchrun/accelerate). After each update the trainer's weights are copied into the engine's
model with its `load_weights` (as TRL's `_move_model_to_vllm` does), and the prefix cache is reset.

vLLM's sampler is not the trainer's forward pass (other kernels, other precision, its own sampling), so the
log-probs it reports for the tokens it drew differ a little from the trainer's. `logprob_mismatch` measures
that per batch for logging; `truncated_is_weights` is the truncated importance-sampling correction
(min(pi_train / pi_vllm, cap), as verl and OpenRLHF apply it) for methods that want it.

Not run on the machine this was written on (no GPU; vLLM is GPU-only): `docs/scaling.md` says what was checked.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

from rlhf.rollout.engine import Rollout, SamplingConfig, check_backend, sample


# ---------------------------------------------------------------- pure helpers (run anywhere)

def to_rollout(prompts: list[list[int]], responses: list[list[int]], logprobs: list[list[float]], eos_id: int,
               pad_id: int, max_new_tokens: int, device="cpu") -> Rollout:
    """Token ids and per-token log-probs of sampled responses -> the engine's `Rollout` layout: prompts
    left-padded, responses right-padded with PAD, masked after the first EOS (EOS itself kept), log-probs 0
    where masked."""
    from rlhf.data.batching import left_pad

    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    T = max(1, min(max_new_tokens, max((len(r) for r in responses), default=1)))
    B = len(responses)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    lp = torch.zeros((B, T), dtype=torch.float32)
    finished = torch.zeros(B, dtype=torch.bool)
    for i, (resp, lps) in enumerate(zip(responses, logprobs)):
        if len(resp) != len(lps):
            raise ValueError(f"response {i}: {len(resp)} tokens but {len(lps)} log-probs")
        resp, lps = list(resp)[:T], list(lps)[:T]
        if eos_id in resp:
            n = resp.index(eos_id) + 1
            finished[i] = True
        else:
            n = len(resp)
        ids[i, :n] = torch.tensor(resp[:n], dtype=torch.long)
        mask[i, :n] = 1
        lp[i, :n] = torch.tensor(lps[:n], dtype=torch.float32)
    return Rollout(prompt_ids.to(device), prompt_mask.to(device), ids.to(device), mask.to(device), lp.to(device),
                   finished.to(device))


def logprob_mismatch(sampler_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the sampler's log-probs of the drawn tokens are from the trainer's, over response tokens:
    mean and max |difference|, the mean difference (trainer - sampler), the importance ratio
    pi_train / pi_sampler (mean, max) and the k3 estimate of KL(sampler || trainer). All 0 (ratio 1) when the
    two agree, as with the built-in engine, whose sampling log-probs are the trainer's own."""
    m = mask.bool()
    if not bool(m.any()):
        return {}
    d = (trainer_logp.float() - sampler_logp.float())[m]
    ratio = d.exp()
    return {"mismatch/abs_mean": d.abs().mean().item(), "mismatch/abs_max": d.abs().max().item(),
            "mismatch/mean": d.mean().item(), "mismatch/ratio_mean": ratio.mean().item(),
            "mismatch/ratio_max": ratio.max().item(),
            # k3 = r - 1 - log r with r = pi_train / pi_sampler: an unbiased, non-negative estimate of KL
            "mismatch/kl_k3": (ratio - 1 - d).mean().item()}


def truncated_is_weights(sampler_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float = 2.0) -> torch.Tensor:
    """Per-token weights min(pi_train / pi_sampler, cap) (0 where masked), no gradient: multiplied into a
    policy-gradient loss they correct for sampling from vLLM's distribution instead of the trainer's."""
    ratio = (trainer_logp.detach().float() - sampler_logp.float()).exp().clamp(max=cap)
    return ratio * mask


# ---------------------------------------------------------------- the generators

class EngineGenerator:
    """The built-in engine behind the generator interface: samples from the live weights, so there is
    nothing to load after an update and nothing to free while training."""

    def __init__(self, cfg: SamplingConfig, model, tokenizer):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer

    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None, group: int = 1) -> Rollout:
        return sample(self.model, prompts, self.cfg, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                      generator, group)

    def training(self, model=None):
        return nullcontext()


class VLLMGenerator:
    """A colocated vLLM engine for one rank (see the module's docstring). `model`: the policy as loaded
    (its HF folder, `config._name_or_path`, is what vLLM loads first); `seed`: vLLM's own seed, offset by the
    rank so ranks draw differently; each request also gets a seed drawn from the trainer's generator."""

    def __init__(self, cfg: SamplingConfig, model, tokenizer, seed: int = 0, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, dtype: str = "auto"):
        check_backend("vllm")
        import vllm

        self.cfg, self.tokenizer = cfg, tokenizer
        self.vllm = vllm
        unwrapped = getattr(model, "module", model)
        path = unwrapped.config._name_or_path
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        # the engine runs inside this process ("external_launcher": every rank its own engine on its own GPU,
        # the ranks started by torchrun), so its model is reachable for `load_weights`; on one process it
        # needs the variables torchrun would set
        for var, value in (("RANK", rank), ("LOCAL_RANK", torch.cuda.current_device()), ("WORLD_SIZE", world),
                           ("MASTER_ADDR", "localhost"), ("MASTER_PORT", "29512")):
            os.environ.setdefault(var, str(value))
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=dtype, seed=seed + rank, enable_sleep_mode=True,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            distributed_executor_backend="external_launcher", enable_prefix_caching=True,
                            # the log-probs of the distribution the token was drawn from (after temperature,
                            # top-k/p), as the engine returns them and as the trainer recomputes them
                            logprobs_mode="processed_logprobs")
        self.asleep = False

    def _params(self, generator: torch.Generator | None) -> object:
        c = self.cfg
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)) if generator is not None else None
        return self.vllm.SamplingParams(n=1, temperature=c.temperature, top_k=c.top_k if c.top_k > 0 else -1,
                                        top_p=c.top_p, max_tokens=c.max_new_tokens, logprobs=0, seed=seed,
                                        stop_token_ids=[self.tokenizer.eos_token_id], detokenize=False)

    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None, group: int = 1) -> Rollout:
        """One response per prompt (`group` is the engine's hint that prompts come in runs of copies: vLLM's
        prefix cache shares those by itself)."""
        if self.asleep:
            raise RuntimeError("VLLMGenerator.sample while asleep (inside training())")
        from vllm.inputs import TokensPrompt

        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                 [self._params(generator) for _ in prompts], use_tqdm=False)
        responses, logps = [], []
        for out in outs:
            o = out.outputs[0]
            responses.append(list(o.token_ids))
            # logprobs: per position a {token_id: Logprob}; the drawn token's entry is always there
            logps.append([pos[t].logprob for t, pos in zip(o.token_ids, o.logprobs)])
        device = torch.device("cuda", torch.cuda.current_device())
        return to_rollout(prompts, responses, logps, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                          self.cfg.max_new_tokens, device)

    def sleep(self) -> None:
        """Free the engine's GPU memory for training: weights and KV cache are dropped (level 2; the weights
        are loaded again from the trainer by `load`)."""
        if not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def load(self, model) -> None:
        """Wake the engine and copy the trainer's current weights into it (HF parameter names; vLLM's
        `load_weights` maps them, fusing q/k/v and gate/up itself), then drop the stale prefix cache."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        unwrapped = getattr(model, "module", model)
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            for name, param in unwrapped.state_dict().items():
                if hasattr(param, "full_tensor"):  # an FSDP2 shard (DTensor): this rank gathers the whole tensor
                    param = param.full_tensor()
                engine_model.load_weights([(name, param.to("cuda"))])
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()

    @contextmanager
    def training(self, model):
        """Sleep while the body trains `model`; then load its new weights."""
        self.sleep()
        try:
            yield
        finally:
            self.load(model)


def make_generator(cfg: SamplingConfig, model, tokenizer, seed: int = 0, **vllm_kwargs):
    """The rollout generator `cfg.backend` names: the built-in engine, or a colocated vLLM engine (GPU)."""
    check_backend(cfg.backend)
    if cfg.backend == "vllm":
        return VLLMGenerator(cfg, model, tokenizer, seed=seed, **vllm_kwargs)
    return EngineGenerator(cfg, model, tokenizer)
