"""model.dtype, model.gradient_checkpointing and model.lora (peft) in the trainers: the LoRA reference is the
base model exactly (adapters disabled, no second copy), only adapters train, the merged folder reloads to the
peft model's outputs, the reward model's score head is trained and saved, DPO/PPO/GRPO run with one policy
in memory, LoRA runs resume exactly, bf16 and gradient checkpointing run (checkpointing even in eval mode),
bf16 mixed precision runs the passes in bf16 over fp32 weights, and bad options are one clear line.

Models are the session's nano llama (about 1M parameters) written to a temp folder; every run is a few steps.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.data.chat import encode_prompt, encode_response
from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.models.lm import load_causal_lm
from rlhf.models.options import LoraOptions, ModelOptions
from rlhf.models.reward import init_reward_model, load_reward_model
from rlhf.rollout.engine import SamplingConfig, response_logprobs, sample
from rlhf.rollout.packed import pack, packed_logprobs
from rlhf.train import dpo, grpo, ppo, reward, sampling, sft
from rlhf.train.common import OptimConfig

def opts(dtype: str = "fp32", gc: bool = False, r: int = 4) -> ModelOptions:
    return ModelOptions(dtype=dtype, gradient_checkpointing=gc, lora=LoraOptions(r=r, alpha=8.0))


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions independent of the thread count (exact resume)
    yield
    torch.set_num_threads(old)


def nudge_adapters(model, seed: int = 0) -> None:
    """LoRA's B starts at zero (the adapters add nothing); random B makes adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def unique_numel(*models) -> int:
    seen = {}
    for m in models:
        for p in m.parameters():
            seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the reference: adapters disabled == base


def test_reference_is_the_base_model_exactly_and_shares_its_weights(nano_checkpoint, tiny_tokenizer):
    base = load_causal_lm(nano_checkpoint)
    policy = lora.trainable(load_causal_lm(nano_checkpoint), opts())
    nudge_adapters(policy)
    ref = lora.reference(policy, nano_checkpoint, nano_checkpoint, opts(), load_causal_lm)
    assert isinstance(ref, lora.AdapterDisabled)
    prompts = [encode_prompt(tiny_tokenizer, p) for p in ("Where does person 1 live?", "Who made thing 2?")]
    roll = sample(base, prompts, SamplingConfig(max_new_tokens=6), tiny_tokenizer.eos_token_id,
                  tiny_tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    ids, attn, P = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1]
    rows = pack(prompts[0], [encode_response(tiny_tokenizer, x) for x in ("In town 3.", "I don't know.")], 64)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        lp_base, lp_ref, lp_policy = (response_logprobs(m, ids, attn, P, 0.7) for m in (base, ref, policy))
        packed_base, packed_ref, packed_policy = (packed_logprobs(m, rows, pad)[0] for m in (base, ref, policy))
        lp_policy_again = response_logprobs(policy, ids, attn, P, 0.7)
    assert torch.equal(lp_ref, lp_base)  # exactly: the same weights, the same ops
    assert torch.equal(packed_ref, packed_base)  # DPO/GRPO's packed path reads the transformer directly
    assert not torch.allclose(lp_policy, lp_base, atol=1e-3)  # the adapters do change the policy ...
    assert not torch.allclose(packed_policy, packed_base, atol=1e-3)
    assert torch.equal(lp_policy_again, lp_policy)  # ... and are back on after each reference pass
    # no second copy: the reference's parameters are the policy's, and freezing it leaves the adapters trainable
    assert {p.data_ptr() for p in ref.parameters()} == {p.data_ptr() for p in policy.parameters()}
    ref.requires_grad_(False)
    ref.to("cpu")
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) > 0
    # a reference elsewhere than the policy's starting checkpoint is loaded, frozen
    other = lora.reference(policy, nano_checkpoint, Path(nano_checkpoint) / ".." / "model", opts(), load_causal_lm)
    assert isinstance(other, lora.AdapterDisabled)  # the same folder, spelled differently
    full = lora.reference(load_causal_lm(nano_checkpoint), nano_checkpoint, nano_checkpoint, ModelOptions(),
                          load_causal_lm)
    assert not isinstance(full, lora.AdapterDisabled) and not any(p.requires_grad for p in full.parameters())


# ---------------------------------------------------------------- SFT: adapters only, merge-and-save, resume


def _sft_cfg(out, nano_checkpoint, **kw):
    base = dict(out=str(out), init=str(nano_checkpoint), epochs=1.0, batch_size=16, max_len=64, model=opts(),
                optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    return sft.SFTConfig(**{**base, **kw})


def test_sft_with_lora_trains_adapters_only_and_the_merged_folder_reloads(tiny_world, nano_checkpoint, tmp_path,
                                                                          tiny_tokenizer, one_thread):
    from peft import PeftModel

    dialogues = [d["messages"] for d in tiny_world.demonstrations()]  # 64: 4 steps of 16
    out = sft.run(_sft_cfg(tmp_path / "run", nano_checkpoint), False, dialogues=dialogues)
    base = load_file(str(Path(nano_checkpoint) / "model.safetensors"))
    merged = load_file(str(out / "model" / "model.safetensors"))
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["task_type"] == "CAUSAL_LM"
    assert merged.keys() == base.keys()  # a plain HF folder: no adapter keys, no peft prefixes
    scale, adapted, trained = config["lora_alpha"] / config["r"], 0, False
    for key, w in base.items():
        a = adapter.get(f"base_model.model.{key[:-len('.weight')]}.lora_A.weight")
        if a is None:  # not adapted (embeddings, norms): exactly the starting weights
            assert torch.equal(merged[key], w), key
            continue
        b = adapter[f"base_model.model.{key[:-len('.weight')]}.lora_B.weight"]
        assert torch.allclose(merged[key], w + scale * b @ a, atol=1e-6), key  # base + the adapter, nothing else
        adapted += 1
        trained |= bool(b.abs().max() > 0)
    assert adapted == 4 * 7 and trained  # every linear layer of 4 blocks (q, k, v, o, gate, up, down); B moved
    # round trip: the merged folder gives the logits of the base with the saved adapter
    ids = torch.tensor([encode_prompt(tiny_tokenizer, "Where does person 3 live?")])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(load_causal_lm(nano_checkpoint), str(out / "adapter"))(ids).logits
        merged_logits = load_causal_lm(out / "model")(ids).logits
        base_logits = load_causal_lm(nano_checkpoint)(ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)


def test_lora_sft_resumes_exactly_and_a_full_checkpoint_is_refused(tiny_world, nano_checkpoint, tmp_path, one_thread):
    dialogues = [d["messages"] for d in tiny_world.demonstrations()]
    full = sft.run(_sft_cfg(tmp_path / "full", nano_checkpoint, save_every=1), False, dialogues=dialogues)
    step2 = full / "checkpoints" / "step-2" / "model"
    assert (step2 / "adapter_model.safetensors").is_file() and not (step2 / "model.safetensors").exists()
    resumed = sft.run(_sft_cfg(tmp_path / "resumed", nano_checkpoint, save_every=1,
                               resume=str(full / "checkpoints/step-2")),
                      False, dialogues=dialogues)
    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (full, resumed))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)

    def rows(d):
        return {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}

    a, b = rows(full), rows(resumed)
    assert sorted(b) == [3, 4] and all(a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5) for s in (3, 4))
    # a LoRA checkpoint resumed as full fine-tuning (or the other way round): one clear error
    with pytest.raises(RLHFError, match="holds a LoRA adapter"):
        sft.run(_sft_cfg(tmp_path / "x", nano_checkpoint, model=ModelOptions(),
                         resume=str(full / "checkpoints/step-2")),
                False, dialogues=dialogues)


# ---------------------------------------------------------------- reward model


def test_reward_model_with_lora_trains_and_saves_its_score_head(tiny_world, nano_checkpoint, tmp_path, one_thread):
    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    rows = [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 2)),
             "rejected": " ".join(rng.sample(words, 8))}
            for p in tiny_world.prompts("train")[:48]]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = reward.RewardConfig(out=str(tmp_path / "rm"), init=str(nano_checkpoint), data=str(tmp_path / "pairs.jsonl"),
                              batch_size=8, max_len=64, epochs=3.0, eval_fraction=0.25, model=opts(),
                              optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, schedule="constant"))
    out = reward.run(cfg, False)
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    head_keys = [k for k in adapter if ".score." in k]
    assert head_keys == ["base_model.model.score.weight"]  # the head is in the adapter (modules_to_save), trained whole
    merged = load_reward_model(out / "model")  # a plain sequence-classification folder
    start = init_reward_model(nano_checkpoint, seed=0).score.weight
    assert torch.equal(merged.score.weight, adapter[head_keys[0]])
    assert not torch.allclose(merged.score.weight, start, atol=1e-4)  # the head trained
    assert "rlhf_reward_offset" in json.loads((out / "model" / "config.json").read_text())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1  # learned the length pattern
    summary = json.loads((out / "summary.json").read_text())["result"]
    assert summary["eval_pairwise_accuracy"] > 0.6


# ---------------------------------------------------------------- DPO, PPO, GRPO: one policy in memory


def counting(monkeypatch, module) -> dict:
    calls = {"n": 0}
    real = module.load_causal_lm

    def load(path):
        calls["n"] += 1
        return real(path)

    monkeypatch.setattr(module, "load_causal_lm", load)
    return calls


def test_dpo_with_lora_loads_one_policy_and_starts_at_log2(tmp_path, nano_checkpoint, monkeypatch):
    rows = [{"prompt": f"Who founded place number {i}?", "chosen": "I don't know.",
             "rejected": f"It was person {i % 5}."}
            for i in range(16)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    calls = counting(monkeypatch, dpo)
    cfg = dpo.DPOConfig(out=str(tmp_path / "run"), policy=str(nano_checkpoint), data=str(tmp_path / "pairs.jsonl"),
                        epochs=2.0, batch_size=4, eval_fraction=0.25, beta=0.5, kl_prompts=3, max_len=40, model=opts(),
                        kl_sampling=SamplingConfig(max_new_tokens=6, temperature=0.7),
                        optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, schedule="constant"))
    out = dpo.run(cfg, show_progress=False)
    assert calls["n"] == 1  # the reference is the policy with its adapters off
    summary = json.loads((out / "summary.json").read_text())
    res, (start, end) = summary["result"], summary["heldout"]
    assert res["first_loss"] == pytest.approx(math.log(2), abs=1e-5)  # LoRA starts as the identity: pi = pi_ref
    assert start["kl"] == pytest.approx(0.0, abs=1e-5) and end["kl"] > start["kl"]
    assert res["final_loss"] < res["first_loss"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory, nano_checkpoint, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("lora_rm") / "rm"
    model = init_reward_model(nano_checkpoint, seed=1)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(str(path), safe_serialization=True)
    tiny_tokenizer.save_pretrained(str(path))
    return path


def _prompts(path: Path, n: int) -> Path:
    write_jsonl(path, [{"prompt": f"Where does person {i} live?"} for i in range(n)])
    return path


def _ppo_cfg(out, nano_checkpoint, rm_folder, prompts, **kw) -> ppo.PPOConfig:
    base = dict(out=str(out), policy=str(nano_checkpoint), reward_model=str(rm_folder), prompts=str(prompts),
                steps=3, rollout_batch_size=8, minibatch_size=8, micro_batch_size=4, ppo_epochs=2,
                whiten_advantages="batch", samples_every=0, no_eos_score=None, model=opts(),
                sampling=SamplingConfig(max_new_tokens=8, temperature=1.0),
                optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0, schedule="constant"))
    return ppo.PPOConfig(**{**base, **kw})


def test_ppo_with_lora_holds_one_policy_and_resumes_exactly(tmp_path, nano_checkpoint, rm_folder, monkeypatch,
                                                            one_thread):
    prompts = _prompts(tmp_path / "p.jsonl", 16)
    cfg = _ppo_cfg(tmp_path / "setup", nano_checkpoint, rm_folder, prompts)
    calls = counting(monkeypatch, ppo)
    t = ppo.setup(cfg, ppo.load_prompts(str(prompts)), None)
    assert calls["n"] == 1
    m = t.models
    assert isinstance(m.ref, lora.AdapterDisabled)
    # parameters in memory: policy + reward model + value model; the reference adds nothing
    assert unique_numel(m.policy, m.ref, m.reward, m.value) == numel(m.policy) + numel(m.reward) + numel(m.value)
    assert lora.has_adapters(m.value)  # value_init=reward: an RM copy, trained through its own adapter + head
    trainable = sum(p.numel() for p in m.policy.parameters() if p.requires_grad)
    assert 0 < trainable < numel(m.policy) / 5
    # a run with a checkpoint after every step; resumed from step 1 it ends where the uninterrupted run did
    full = ppo.run(_ppo_cfg(tmp_path / "full", nano_checkpoint, rm_folder, prompts, save_every=1), show_progress=False)
    resumed = ppo.run(_ppo_cfg(tmp_path / "resumed", nano_checkpoint, rm_folder, prompts, save_every=1,
                               resume=str(full / "checkpoints" / "step-1")), show_progress=False)
    for a, b in ((full / "model", resumed / "model"), (full / "adapter", resumed / "adapter"),
                 (full / "checkpoints/step-3/value", resumed / "checkpoints/step-3/value")):
        name = "model.safetensors" if a.name == "model" else "adapter_model.safetensors"
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa), a
    base = load_file(str(Path(nano_checkpoint) / "model.safetensors"))
    final = load_file(str(full / "model" / "model.safetensors"))
    assert any(not torch.equal(base[k], final[k]) for k in base)  # the policy moved
    first = json.loads((full / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch: policy = reference


def test_grpo_with_lora_runs_with_the_adapter_disabled_reference(tmp_path, nano_checkpoint, rm_folder, monkeypatch):
    calls = counting(monkeypatch, sampling)  # GRPO/RLOO, RAFT and RRHF load their models there
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    cfg = grpo.GRPOConfig(out=str(tmp_path / "run"), policy=str(nano_checkpoint), reward_model=str(rm_folder),
                          prompts=str(prompts), eval_prompts=str(prompts), n_eval_prompts=4, steps=2,
                          prompts_per_step=4,
                          micro_batch_prompts=2, group_size=3, epochs=2, model=opts())
    cfg.sampling.max_new_tokens = 6
    out = grpo.run(cfg, show_progress=False)
    assert calls["n"] == 1
    start, end = json.loads((out / "summary.json").read_text())["heldout"]
    assert start["kl"] == pytest.approx(0.0, abs=1e-5)
    assert (out / "model" / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()


# ---------------------------------------------------------------- bf16 and gradient checkpointing


def test_gradient_checkpointing_works_in_eval_mode_and_bf16_keeps_adapters_fp32(nano_checkpoint, tiny_tokenizer):
    model = lora.trainable(load_causal_lm(nano_checkpoint), opts(dtype="bf16", gc=True))
    calls = {"n": 0}
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) and hasattr(m, "self_attn")]
    for layer in layers:
        real = layer._gradient_checkpointing_func

        def counted(*args, _real=real, **kwargs):
            calls["n"] += 1
            return _real(*args, **kwargs)

        layer._gradient_checkpointing_func = counted
    model.eval()  # the RL trainers run their policy in eval mode (no dropout): layers must still checkpoint
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([encode_prompt(tiny_tokenizer, "Where does person 3 live?")])
    with torch.no_grad():
        model(ids)
    assert calls["n"] == 0  # no gradients: layers run as usual (sampling keeps its KV cache)
    model(ids).logits.float().logsumexp(-1).mean().backward()
    assert calls["n"] == len(layers) == 4
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}  # adapters train in fp32
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_bf16_and_checkpointing_runs(tiny_world, nano_checkpoint, rm_folder, tmp_path):
    dialogues = [d["messages"] for d in tiny_world.demonstrations()][:32]
    out = sft.run(_sft_cfg(tmp_path / "sft", nano_checkpoint, model=opts(dtype="bf16", gc=True, r=0)), False,
                  dialogues=dialogues)  # full fine-tuning in bf16
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert {w.dtype for w in saved.values()} == {torch.bfloat16}
    assert all(math.isfinite(json.loads(line)["loss"]) for line in (out / "metrics.jsonl").read_text().splitlines())
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    out = ppo.run(_ppo_cfg(tmp_path / "ppo", nano_checkpoint, rm_folder, prompts, steps=2, value_init="policy",
                           model=opts(dtype="bf16", gc=True)), show_progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["pg_loss"]) and math.isfinite(r["vf_loss"]) for r in rows)
    assert load_causal_lm(out / "model") is not None


def bf16_matmuls(monkeypatch) -> dict:
    """Counts the linear layers' outputs by dtype while a trainer runs (autocast makes them bf16)."""
    seen: dict = {}
    real = torch.nn.Linear.forward

    def forward(self, x):
        out = real(self, x)
        seen[out.dtype] = seen.get(out.dtype, 0) + 1
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    return seen


def test_mixed_precision_runs_matmuls_in_bf16_over_fp32_weights(tiny_world, nano_checkpoint, rm_folder, tmp_path,
                                                                monkeypatch):
    """model.mixed_precision=bf16 (accelerate's autocast): the trainers' passes run in bf16, the weights they
    update and save stay fp32, losses stay finite; a later fp32 trainer in the same process runs in fp32."""
    mixed = ModelOptions(mixed_precision="bf16")
    seen = bf16_matmuls(monkeypatch)
    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    rows = [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 2)),
             "rejected": " ".join(rng.sample(words, 8))}
            for p in tiny_world.prompts("train")[:48]]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = reward.run(reward.RewardConfig(out=str(tmp_path / "rm"), init=str(nano_checkpoint),
                                         data=str(tmp_path / "pairs.jsonl"),
                                         batch_size=8, max_len=64, epochs=3.0, eval_fraction=0.25, model=mixed,
                                         optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0)), False)
    assert seen.get(torch.bfloat16, 0) > 0 and seen.get(torch.float32, 0) == 0, seen  # every matmul in bf16
    assert {w.dtype for w in load_file(str(out / "model" / "model.safetensors")).values()} == {torch.float32}
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x) for x in losses) and sum(losses[-3:]) / 3 < losses[0] - 0.1  # it still learns
    assert json.loads((out / "summary.json").read_text())["result"]["eval_pairwise_accuracy"] > 0.6
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    runs = {"sft": lambda: sft.run(_sft_cfg(tmp_path / "sft", nano_checkpoint, model=mixed), False,
                                   dialogues=[d["messages"] for d in tiny_world.demonstrations()][:32]),
            "ppo": lambda: ppo.run(_ppo_cfg(tmp_path / "ppo", nano_checkpoint, rm_folder, prompts, steps=2,
                                            value_init="policy", model=mixed), show_progress=False),
            "grpo": lambda: grpo.run(grpo.GRPOConfig(out=str(tmp_path / "grpo"), policy=str(nano_checkpoint),
                                                     reward_model=str(rm_folder), prompts=str(prompts),
                                                     eval_prompts=str(prompts), n_eval_prompts=2, steps=2,
                                                     prompts_per_step=4, micro_batch_prompts=2, group_size=3,
                                                     model=mixed, sampling=SamplingConfig(max_new_tokens=6)),
                                     show_progress=False)}
    for name, go in runs.items():
        seen.clear()
        out = go()
        assert seen.get(torch.bfloat16, 0) > 0, (name, seen)
        assert {w.dtype for w in load_file(str(out / "model" / "model.safetensors")).values()} == {torch.float32}, name
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        key = {"sft": "loss", "ppo": "pg_loss", "grpo": "loss"}[name]
        assert all(math.isfinite(r[key]) for r in metrics if key in r), name
    seen.clear()  # the same process, a trainer without mixed precision: accelerate's state follows it
    sft.run(_sft_cfg(tmp_path / "sft32", nano_checkpoint, model=ModelOptions()), False,
            dialogues=[d["messages"] for d in tiny_world.demonstrations()][:16])
    assert seen.get(torch.bfloat16, 0) == 0 and seen.get(torch.float32, 0) > 0, seen


def test_bad_mixed_precision_is_one_clear_line(nano_checkpoint, tmp_path, cli):
    r = cli.run("reward", "--set", f"init={nano_checkpoint}", "--set", "model.mixed_precision=fp16", "-q",
                "-o", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: model.mixed_precision: expected no or bf16, got 'fp16'"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- bad options


def test_bad_dtype_is_one_clear_line(nano_checkpoint, tmp_path, cli):
    r = cli.run("sft", "--set", f"init={nano_checkpoint}", "--set", "model.dtype=fp16", "-q", "-o", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: model.dtype: expected fp32 or bf16, got 'fp16'"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, message", [
    ("model.lora.r", "-1", "model.lora.r: expected 0 (full fine-tuning) or a positive rank, got -1"),
    ("model.lora.dropout", "1.5", "model.lora.dropout: expected 0 <= dropout < 1, got 1.5"),
    ("model.lora.alpha", "0", "model.lora.alpha: expected > 0, got 0.0"),
])
def test_bad_lora_options_fail_when_the_config_loads(key, value, message):
    from rlhf.config import load_config

    sets = [f"{key}={value}"] + (["model.lora.r=8"] if key != "model.lora.r" else [])
    for cls in (sft.SFTConfig, reward.RewardConfig, dpo.DPOConfig, ppo.PPOConfig, grpo.GRPOConfig):
        with pytest.raises(RLHFError) as err:
            load_config(cls, None, sets)
        assert str(err.value) == message


def test_unknown_target_module_is_one_clear_error(nano_checkpoint):
    bad = ModelOptions(lora=LoraOptions(r=4, target_modules=["no_such_proj"]))
    with pytest.raises(RLHFError, match="model.lora.target_modules"):
        lora.trainable(load_causal_lm(nano_checkpoint), bad)
