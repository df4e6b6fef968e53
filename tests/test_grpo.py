"""GRPO / RLOO: group advantages on hand-made groups (identical rewards -> zero, no NaN), the clipped
surrogate and KL term, group size 1 and other bad input, and short end-to-end runs of both estimators."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.errors import RLHFError
from rlhf.train import grpo
from rlhf.train.grpo import GRPOConfig, RLOOConfig, group_advantages, policy_loss

REWARDS = torch.tensor([[1.0, 2.0, 3.0, 6.0],  # mean 3, unbiased std sqrt(14 / 3) = 2.1602469
                        [5.0, 5.0, 5.0, 5.0],  # identical: zero advantages
                        [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)  # mean 0.5, std sqrt(1 / 3) = 0.5773503


def test_grpo_advantages_by_hand():
    adv = group_advantages(REWARDS, "grpo", scale=True, eps=1e-4)
    want = torch.tensor([[-2 / 2.1603469, -1 / 2.1603469, 0.0, 3 / 2.1603469],
                         [0.0, 0.0, 0.0, 0.0],
                         [-0.5 / 0.5774503, -0.5 / 0.5774503, 0.5 / 0.5774503, 0.5 / 0.5774503]], dtype=torch.float64)
    assert torch.allclose(adv, want, atol=1e-6), adv
    assert torch.isfinite(adv).all() and (adv[1] == 0).all()
    unscaled = group_advantages(REWARDS, "grpo", scale=False)
    assert torch.allclose(unscaled,
                          torch.tensor([[-2.0, -1, 0, 3], [0, 0, 0, 0], [-0.5, -0.5, 0.5, 0.5]], dtype=torch.float64))


def test_rloo_advantages_by_hand():
    adv = group_advantages(REWARDS, "rloo")
    # r_i minus the mean of the other three: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3; 0 - 2/3, 0 - 2/3, 1 - 1/3, 1 - 1/3
    want = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [0.0] * 4, [-2 / 3, -2 / 3, 2 / 3, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(adv, want, atol=1e-12)
    assert (adv[1] == 0).all()


def test_group_of_one_is_an_error():
    with pytest.raises(RLHFError, match="group_size must be at least 2"):
        group_advantages(torch.tensor([[1.0], [2.0]]), "grpo")


def test_policy_loss_clipping_and_kl_term():
    cfg = GRPOConfig(cliprange=0.2, beta=0.5, kl_mode="loss", loss_agg="token")
    old = torch.zeros(2, 2, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.1, 1.0]], dtype=torch.float64))  # ratios 1.5, 0.5, 1.1, 1.0
    ref = logp.clone()  # KL term zero here
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, s = policy_loss(logp, old, ref, adv, mask, cfg)
    # tokens: A=+1, r=1.5 -> -min(1.5, 1.2) = -1.2; A=+1, r=0.5 -> -min(0.5, 0.8) = -0.5
    #         A=-1, r=1.1 -> -min(-1.1, -1.1) = 1.1; A=-1, r=1.0 -> 1.0
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 1.0) / 4, abs=1e-12)
    assert s["clipfrac"] == pytest.approx(0.5)
    # the k3 KL term: ref - logp = d -> exp(d) - d - 1, times beta, averaged over tokens
    ref2 = logp + torch.tensor([[0.3, 0.0], [0.0, -0.2]], dtype=torch.float64)
    loss2, _ = policy_loss(logp, old, ref2, adv, mask, cfg)
    k3 = (math.exp(0.3) - 0.3 - 1) + (math.exp(-0.2) + 0.2 - 1)
    assert loss2.item() - loss.item() == pytest.approx(0.5 * k3 / 4, abs=1e-12)
    # with kl_mode=reward the loss has no KL term (the penalty went into the reward)
    loss3, _ = policy_loss(logp, old, ref2, adv, mask,
                           GRPOConfig(cliprange=0.2, beta=0.5, kl_mode="reward", loss_agg="token"))
    assert loss3.item() == pytest.approx(loss.item(), abs=1e-12)


def test_identical_rewards_give_zero_gradient():
    cfg = GRPOConfig()
    logp = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    adv = group_advantages(torch.full((1, 4), 0.7, dtype=torch.float64), "grpo").flatten()
    loss, _ = policy_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(4, 3, dtype=torch.float64), cfg)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad.abs() < 1e-12).all()


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("cls", [GRPOConfig, RLOOConfig])
def test_short_run(tmp_path, nano_checkpoint, nano_rm_checkpoint, cls, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", 8)
    cfg = cls(out=str(tmp_path / "run"), policy=str(nano_checkpoint), reward_model=str(nano_rm_checkpoint),
              prompts=str(prompts), eval_prompts=str(prompts), n_eval_prompts=4, steps=2, prompts_per_step=4,
              micro_batch_prompts=2, group_size=3, epochs=2)
    cfg.sampling.max_new_tokens = 6
    seen = []
    out = grpo.run(cfg, show_progress=False, gold=lambda p, r: seen.append((p, r)) or float(len(r) % 3))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["result"]["episodes"] == 2 * 4 * 3
    start, end = summary["heldout"]
    assert start["kl"] == pytest.approx(0.0, abs=1e-4) and "gold" in end
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train) and "gold" in train[0]
    assert len(seen) == 2 * 4 + 2 * 4 * 3  # 4 held-out prompts before and after, and every training sample
    assert (out / "model" / "model.safetensors").is_file()


def test_bad_input_one_line(tmp_path, nano_checkpoint, nano_rm_checkpoint, cli, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    common = ["--set", f"policy={nano_checkpoint}", "--set", f"reward_model={nano_rm_checkpoint}", "--set",
              f"prompts={prompts}", "-q"]
    runs = {cmd: cli.start(cmd, *common, "--set", "group_size=1", "-o", tmp_path / cmd) for cmd in ("grpo", "rloo")}
    bad_mode = cli.start("grpo", *common, "--set", "kl_mode=both", "-o", tmp_path / "x")
    for cmd, future in runs.items():
        r = future.result()
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            "error: group_size must be at least 2 (a group baseline compares responses to one prompt), got 1"], r.stderr
        assert not (tmp_path / cmd).exists()
    r = bad_mode.result()
    assert r.returncode == 2 and r.stderr.strip() == "error: kl_mode: expected loss or reward, got 'both'"


def test_group_sampling_forwards_each_prompt_once_with_the_same_samples(nano_checkpoint):
    """sample(group=G) prefills each prompt once and repeats its cache: the same tokens and log-probs as
    forwarding every copy; prompts that are not runs of G copies are refused.

    Not bit for bit: prefilling one row and prefilling three are matrix products of other shapes, and a CPU's
    BLAS may block (and so round) them differently (seen on an Intel Xeon: one log-prob off by 1e-4 in its
    fourth decimal). The sampled tokens are equal: each is drawn with the same random number from
    distributions that differ by float rounding, which moves a draw only if that number falls within ~1e-6 of
    a boundary of the cumulative distribution."""
    from rlhf.data.chat import encode_prompt
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.rollout.engine import SamplingConfig, sample

    tok, model = load_tokenizer(nano_checkpoint), load_causal_lm(nano_checkpoint)
    model.eval()
    prompts = [encode_prompt(tok, p) for p in ("What is 2 plus 3?", "Name a city.", "Hi",
                                               "Tell me about the river Oru.")]
    flat = [p for p in prompts for _ in range(3)]
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0)
    a = sample(model, flat, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(5))
    b = sample(model, flat, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(5), group=3)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.prompt_ids, b.prompt_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=1e-4)  # fp32 rounding, with room
    with pytest.raises(ValueError, match="not runs of 3 identical copies"):
        sample(model, flat[1:] + flat[:1], cfg, tok.eos_token_id, tok.pad_token_id, group=3)


def test_group_scores_equal_the_separate_sequences_scores(nano_checkpoint, nano_rm_checkpoint):
    """sample_groups scores each prompt once beside its G responses: the scores of the separate
    prompt + response sequences (up to float rounding), normalization included."""
    from rlhf.data.chat import encode_prompt
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.models.reward import load_reward_model, score
    from rlhf.rollout.engine import SamplingConfig
    from rlhf.train.sampling import sample_groups

    tok, policy = load_tokenizer(nano_checkpoint), load_causal_lm(nano_checkpoint)
    rm = load_reward_model(nano_rm_checkpoint)
    rm.config.rlhf_reward_offset = 0.25  # a stored offset is applied the same way
    prompts = [encode_prompt(tok, p) for p in ("Where does person 1 live?", "What is 2 plus 2?", "Hi")]
    g = sample_groups(policy, rm, tok, prompts, 4, SamplingConfig(max_new_tokens=10, temperature=1.0),
                      torch.Generator().manual_seed(3))
    with torch.no_grad():
        separate = score(rm, g.roll.input_ids, g.roll.attention_mask)
    assert g.scores.shape == (12,) and torch.allclose(g.scores, separate, atol=1e-5), (g.scores, separate)
