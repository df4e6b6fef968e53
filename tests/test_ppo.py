"""PPO (InstructGPT recipe): GAE, KL shaping, whitening, the adaptive KL controller, the clipped losses,
EOS masking in rollouts, exact resume, and the errors a user can cause.

Models are tiny (hidden 32, 2 layers) and built once per module as HF folders; every end-to-end run
takes a few seconds on one core.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rlhf.data.chat import encode_prompt
from rlhf.errors import RLHFError
from rlhf.models.lm import load_tokenizer, save_model
from rlhf.models.reward import init_reward_model
from rlhf.models.tokenizer import train_tokenizer
from rlhf.rollout.engine import SamplingConfig, response_logprobs, sample
from rlhf.rollout import experience
from rlhf.stages import PPOStage, run_ppo
from rlhf.train import ppo
from rlhf.train.watch import ensemble_score
from rlhf.train.ppo import AdaptiveKL, KLConfig, gae, masked_mean, masked_whiten, ppo_losses, shaped_rewards


# ---------------------------------------------------------------- GAE


def test_gae_matches_hand_computed_values():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0],  # the 4.0 sits after the last real token: must not leak
                            [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0],  # V past the end counts as 0, not 9
                           [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0, backwards: t=2: delta = 3 + 0.9*0 - 1.5 = 1.5, A = 1.5
    #                   t=1: delta = 2 + 0.9*1.5 - 1.0 = 2.35, A = 2.35 + 0.72*1.5 = 3.43
    #                   t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4,  A = 1.4 + 0.72*3.43 = 3.8696
    # row 1:            t=3: delta = 1 - 0.4 = 0.6, A = 0.6
    #                   t=2: delta = 0.9*0.4 - 0.3 = 0.06, A = 0.06 + 0.72*0.6 = 0.492
    #                   t=1: delta = 0.9*0.3 - 0.2 = 0.07, A = 0.07 + 0.72*0.492 = 0.42424
    #                   t=0: delta = 0.9*0.2 - 0.1 = 0.08, A = 0.08 + 0.72*0.42424 = 0.3854528
    want_adv = torch.tensor([[3.8696, 3.43, 1.5, 0.0], [0.3854528, 0.42424, 0.492, 0.6]], dtype=torch.float64)
    want_ret = torch.tensor([[4.3696, 4.43, 3.0, 0.0], [0.4854528, 0.62424, 0.792, 1.0]], dtype=torch.float64)
    assert torch.allclose(adv, want_adv, atol=1e-6), adv
    assert torch.allclose(ret, want_ret, atol=1e-6), ret


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    torch.manual_seed(0)
    r, v = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5], dtype=torch.float64)
    adv, ret = gae(r * mask, v, mask, 1.0, 1.0)
    togo = (r * mask).flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, (togo - v) * mask, atol=1e-10)
    assert torch.allclose(ret, togo * mask, atol=1e-10)


# ---------------------------------------------------------------- KL shaping


def test_shaped_rewards_kl_per_token_and_score_on_last_real_token():
    beta = 0.1
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -3.0, -9.0], [-1.0, -0.25, -0.5, -0.75]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # row 0: EOS at t=1, PAD after
    scores = torch.tensor([2.0, -3.0])
    rewards, kl = shaped_rewards(logp, ref, scores, mask, beta)
    want_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.5, -0.25, 0.0, 0.25]])
    assert torch.allclose(kl, want_kl)
    want = torch.tensor([[-0.05, 0.1 + 2.0, 0.0, 0.0],  # score on t=1 (the EOS), nothing after
                         [-0.05, 0.025, 0.0, -0.025 - 3.0]])
    assert torch.allclose(rewards, want, atol=1e-6), rewards
    # the score is added exactly once per row, and only where the mask is on
    assert torch.allclose(rewards.sum(1), -beta * kl.sum(1) + scores, atol=1e-6)
    assert (rewards[mask == 0] == 0).all()


def test_shaped_rewards_does_not_modify_inputs():
    logp, ref = torch.zeros(1, 3), torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    shaped_rewards(logp, ref, torch.tensor([1.0]), mask, 0.5)
    assert (logp == 0).all() and (ref == 0).all()


# ---------------------------------------------------------------- whitening


def test_masked_whiten_mean_zero_std_one_over_masked_entries():
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 3 + 5
    mask = (torch.rand(4, 7) > 0.3).double()
    mask[0, 0] = 1
    x_poisoned = x.masked_fill(mask == 0, 1e6)  # masked entries must not influence the statistics
    for inp in (x, x_poisoned):
        w = masked_whiten(inp, mask)
        vals = w[mask == 1]
        assert abs(vals.mean().item()) < 1e-9
        assert abs(vals.std(unbiased=True).item() - 1) < 1e-6
        assert (w[mask == 0] == 0).all()
    assert torch.allclose(masked_whiten(x, mask), masked_whiten(x_poisoned, mask))
    # shift_mean=False (lm-human-preferences): unit std, the original mean added back
    w = masked_whiten(x, mask, shift_mean=False)
    assert w[mask == 1].mean().item() == pytest.approx(x[mask == 1].mean().item(), abs=1e-9)
    assert w[mask == 1].std().item() == pytest.approx(1.0, abs=1e-6)


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert torch.allclose(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))


# ---------------------------------------------------------------- adaptive KL


@pytest.mark.parametrize("kl,expected_error", [
    (9.0, 0.2),     # KL/target - 1 = 0.5, clipped to +0.2
    (6.6, 0.1),     # 0.1, inside the clip range
    (5.4, -0.1),    # -0.1
    (0.0, -0.2),    # -1, clipped to -0.2
])
def test_adaptive_kl_update(kl, expected_error):
    ctl = AdaptiveKL(KLConfig(beta=0.1, adaptive=True, target=6.0, horizon=10_000))
    ctl.update(kl, 64)
    assert ctl.beta == pytest.approx(0.1 * (1 + expected_error * 64 / 10_000), rel=1e-12)
    # and a second update compounds multiplicatively
    before = ctl.beta
    ctl.update(kl, 500)
    assert ctl.beta == pytest.approx(before * (1 + expected_error * 500 / 10_000), rel=1e-12)


def test_fixed_kl_does_not_move():
    ctl = AdaptiveKL(KLConfig(beta=0.1, adaptive=False, target=6.0))
    ctl.update(100.0, 64)
    assert ctl.beta == 0.1


# ---------------------------------------------------------------- clipped losses


def test_ppo_policy_loss_clipping_on_hand_made_ratios():
    cliprange = 0.2
    ratios = torch.tensor([[1.5, 0.5, 1.0, 1.5, 0.5, 1.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.float64)  # last entry masked out
    old = torch.full_like(ratios, -2.0)
    new = (old + ratios.log()).requires_grad_(True)
    zeros = torch.zeros_like(ratios)
    pg, vf, stats = ppo_losses(new, old, adv, zeros, zeros, zeros, mask, cliprange, 0.2)
    # per token: max(-A r, -A clip(r))
    #   A=+1 r=1.5: max(-1.5, -1.2) = -1.2  (clipped: no gain from pushing further)
    #   A=+1 r=0.5: max(-0.5, -0.8) = -0.5  (unclipped: pessimistic branch)
    #   A=+1 r=1.0: -1
    #   A=-1 r=1.5: max( 1.5,  1.2) =  1.5  (unclipped)
    #   A=-1 r=0.5: max( 0.5,  0.8) =  0.8  (clipped)
    per_token = torch.tensor([-1.2, -0.5, -1.0, 1.5, 0.8], dtype=torch.float64)
    assert pg.item() == pytest.approx(per_token.mean().item(), abs=1e-9)
    assert stats["clipfrac"] == pytest.approx(4 / 5)  # |r - 1| > 0.2 for all but r = 1.0
    pg.backward()
    g = new.grad[0]
    # d/d logp of -A r = -A r / 5 where unclipped; 0 where the clipped branch is taken or masked
    assert g[0].item() == 0 and g[4].item() == 0 and g[5].item() == 0
    assert g[1].item() == pytest.approx(-1.0 * 0.5 / 5)
    assert g[2].item() == pytest.approx(-1.0 * 1.0 / 5)
    assert g[3].item() == pytest.approx(1.0 * 1.5 / 5)
    assert stats["approx_kl"] > 0


def test_ppo_value_loss_clipping():
    old_v = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    vpred = torch.tensor([[0.5, 0.5, 0.1, -0.5]])
    ret = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.ones(1, 4)
    zeros = torch.zeros(1, 4)
    _, vf, stats = ppo_losses(zeros, zeros, zeros, vpred, old_v, ret, mask, 0.2, 0.2)
    # clipped predictions: 0.2, 0.2, 0.1, -0.2; loss per token = max(unclipped^2, clipped^2)
    #   t0: max(0.25, 0.64) = 0.64   t1: max(2.25, 1.44) = 2.25   t2: 0.81   t3: max(2.25, 1.44) = 2.25
    assert vf.item() == pytest.approx(0.5 * (0.64 + 2.25 + 0.81 + 2.25) / 4, abs=1e-6)
    assert stats["vf_clipfrac"] == pytest.approx(3 / 4)


def test_ppo_losses_at_ratio_one_is_minus_mean_advantage():
    torch.manual_seed(0)
    logp = torch.randn(3, 5)
    adv = torch.randn(3, 5)
    mask = torch.ones(3, 5)
    pg, _, stats = ppo_losses(logp, logp, adv, logp, logp, logp, mask, 0.2, 0.2)
    assert pg.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert stats["clipfrac"] == 0 and stats["approx_kl"] == pytest.approx(0, abs=1e-7)


# ---------------------------------------------------------------- rollout engine: EOS masking


class LogitBias(torch.nn.Module):
    """Wraps a causal LM and adds a fixed bias to its logits (here: to make EOS likely)."""

    def __init__(self, model, bias: torch.Tensor):
        super().__init__()
        self.inner = model
        self.register_buffer("bias", bias)

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits + self.bias
        return out


def _tiny_llama(tok, seed=0, hidden=32, layers=2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _prompts(tok):
    return [encode_prompt(tok, q) for q in ("Where does Kalo live?", "Hi", "What is 3 plus 4 and what is 5 plus 6?",
                                              "Spell cat.")]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_masks_after_eos_and_logprobs_match_full_forward(tiny_tokenizer, temperature):
    tok = tiny_tokenizer
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 4.0 * temperature  # the same pull towards EOS after tempering
    model = LogitBias(_tiny_llama(tok), bias).eval()
    prompts = _prompts(tok) * 3
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    roll = sample(model, prompts, SamplingConfig(max_new_tokens=12, temperature=temperature), tok.eos_token_id,
                  tok.pad_token_id, torch.Generator().manual_seed(3))
    ids, mask, lp = roll.response_ids, roll.response_mask, roll.logprobs
    eos_pos = []
    for i in range(len(prompts)):
        hits = (ids[i] == tok.eos_token_id).nonzero().flatten().tolist()
        if hits:
            e = hits[0]
            eos_pos.append(e)
            assert roll.finished[i]
            assert mask[i, : e + 1].tolist() == [1] * (e + 1)  # up to and including EOS
            assert (mask[i, e + 1:] == 0).all()
            assert (ids[i, e + 1:] == tok.pad_token_id).all()  # PAD after EOS, never a second EOS
            assert (lp[i, e + 1:] == 0).all()
            assert (lp[i, : e + 1] < 0).all()
        else:
            assert not roll.finished[i] and (mask[i] == 1).all() and (ids[i] != tok.pad_token_id).all()
    assert len(set(eos_pos)) >= 2, "the test needs rows finishing at different times"
    assert not roll.finished.all(), "the test needs a row that never finishes"
    # one full forward over the left-padded prompt + response gives the same log-probs
    P = roll.prompt_ids.shape[1]
    full = response_logprobs(model, roll.input_ids, roll.attention_mask, P, temperature) * mask
    assert torch.allclose(full, lp, atol=1e-4), (full - lp).abs().max()


# ---------------------------------------------------------------- end-to-end fixtures


@pytest.fixture(scope="module")
def one_thread():
    """Both runs of a comparison happen in this process with the same thread count anyway; one thread makes
    the results independent of OMP_NUM_THREADS (CPU reductions split work by thread count, which changes
    float rounding) and avoids oversubscribing shared cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ppo_models(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama policy (hidden 32, 2 layers) and a reward model built from it, as HF folders."""
    root = tmp_path_factory.mktemp("ppo_models")
    policy = root / "policy"
    save_model(_tiny_llama(tiny_tokenizer, seed=0), tiny_tokenizer, policy)
    rm = init_reward_model(policy, seed=1)
    rm.save_pretrained(str(root / "rm"), safe_serialization=True)
    tiny_tokenizer.save_pretrained(str(root / "rm"))
    return {"policy": policy, "rm": root / "rm", "root": root}


@pytest.fixture(scope="module")
def other_vocab_rm(tmp_path_factory, tiny_world):
    """A reward model on a different (smaller) tokenizer than the policy's."""
    root = tmp_path_factory.mktemp("other_vocab")
    tok = train_tokenizer(tiny_world.corpus(), vocab_size=320)
    save_model(_tiny_llama(tok, seed=5), tok, root / "lm")
    rm = init_reward_model(root / "lm", seed=2)
    rm.save_pretrained(str(root / "rm"), safe_serialization=True)
    tok.save_pretrained(str(root / "rm"))
    return root / "rm"


def cfg_for(models, out, world, **kw) -> PPOStage:
    base = dict(out=str(out), seed=0, policy=str(models["policy"]), reward_model=str(models["rm"]), world=world,
                steps=4, rollout_batch_size=8, minibatch_size=4, micro_batch_size=2, ppo_epochs=2,
                sampling=SamplingConfig(max_new_tokens=8, temperature=1.0), whiten_advantages="batch",
                samples_every=0, eval_every=0, no_eos_score=None)
    base.update(kw)
    return PPOStage(**base)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (k, (wa[k] - wb[k]).abs().max())


@pytest.fixture(scope="module")
def full_run(ppo_models, tiny_world_config, tmp_path_factory, one_thread):
    """4 steps in one go, a checkpoint after every step."""
    out = tmp_path_factory.mktemp("full") / "run"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, save_every=1), show_progress=False)
    return out


# ---------------------------------------------------------------- exact resume


def test_resume_reproduces_the_uninterrupted_run(full_run, ppo_models, tiny_world_config, tmp_path, one_thread):
    assert {p.name for p in (full_run / "checkpoints").iterdir()} == {"step-1", "step-2", "step-3", "step-4"}
    state = json.loads((full_run / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["step"] == 2
    out = tmp_path / "resumed"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, save_every=1,
                    resume=str(full_run / "checkpoints" / "step-2")), show_progress=False)
    # same final policy and value model. Bit-for-bit is expected (same ops, same thread count, every RNG and
    # the data cursor restored); a tiny tolerance guards only against platform kernels, not logic.
    assert_same_weights(full_run / "model", out / "model", atol=1e-6)
    assert_same_weights(full_run / "checkpoints" / "step-4" / "value", out / "checkpoints" / "step-4" / "value",
                        atol=1e-6)
    # the resumed run logged steps 3 and 4 with the same metrics as the uninterrupted one

    def rows(d):
        return {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}

    a, b = rows(full_run), rows(out)
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for key in ("rm_score", "kl", "beta", "pg_loss", "vf_loss", "response_length"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-7), (step, key)
    sa = json.loads((full_run / "checkpoints" / "step-4" / "state.json").read_text())
    sb = json.loads((out / "checkpoints" / "step-4" / "state.json").read_text())
    assert sa == sb


def test_policy_moved_during_training(full_run, ppo_models):
    """Guard for the resume test: a run that changed nothing would compare equal trivially."""
    w0, w1 = weights(ppo_models["policy"]), weights(full_run / "model")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_resume_from_a_non_checkpoint_is_a_clear_error(ppo_models, tiny_world_config, tmp_path):
    with pytest.raises(RLHFError, match="not a PPO checkpoint"):
        run_ppo(cfg_for(ppo_models, tmp_path / "r", tiny_world_config, steps=1, resume=str(tmp_path)),
                show_progress=False)


# ---------------------------------------------------------------- bad input


def test_rm_with_another_vocabulary_is_rejected(ppo_models, other_vocab_rm, tiny_world_config, tmp_path, one_thread):
    out = tmp_path / "run"
    with pytest.raises(RLHFError, match="vocabulary") as e:
        run_ppo(cfg_for(ppo_models, out, tiny_world_config, reward_model=str(other_vocab_rm), steps=1),
                show_progress=False)
    assert "retokenize" in str(e.value)
    assert not out.exists()


def test_rm_with_another_vocabulary_works_with_retokenize(ppo_models, other_vocab_rm, tiny_world_config, tmp_path,
                                                           one_thread):
    out = tmp_path / "run"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, reward_model=str(other_vocab_rm), retokenize=True,
                    value_init="sft", steps=1), show_progress=False)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and math.isfinite(row["rm_score"])


def test_retokenize_with_value_from_rm_is_handled(ppo_models, other_vocab_rm, tiny_world_config, tmp_path, one_thread):
    out = tmp_path / "run"
    with pytest.raises(RLHFError, match="value_init=sft"):
        run_ppo(cfg_for(ppo_models, out, tiny_world_config, reward_model=str(other_vocab_rm), retokenize=True,
                        steps=1), show_progress=False)
    assert not out.exists()


def _nan_rm(ppo_models, root: Path) -> Path:
    rm = init_reward_model(ppo_models["policy"], seed=1)
    rm.score.weight.data.fill_(float("nan"))  # a corrupted reward head: every score is NaN
    rm.save_pretrained(str(root / "nan_rm"), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(ppo_models["policy"])).save_pretrained(str(root / "nan_rm"))
    return root / "nan_rm"


def test_nan_loss_names_the_step_and_keeps_a_checkpoint(ppo_models, tiny_world_config, tmp_path, one_thread):
    out = tmp_path / "run"
    # no_eos_score=None (cfg_for's default) keeps the RM's own score for responses without EOS, so every NaN
    # reaches the loss
    cfg = cfg_for(ppo_models, out, tiny_world_config, reward_model=str(_nan_rm(ppo_models, tmp_path)), steps=2)
    with pytest.raises(RLHFError, match=r"nan at step 1\b") as e:
        run_ppo(cfg, show_progress=False)
    assert str(out) in str(e.value)
    ckpt = out / "checkpoints" / "step-0"
    assert (ckpt / "state.json").is_file() and (ckpt / "policy" / "model.safetensors").is_file()
    assert_same_weights(ppo_models["policy"], ckpt / "policy")  # nothing was applied: the initial policy
    assert (out / "model" / "config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert "step 1" in summary["result"]["stopped"]


def _nan_scores_from_call(monkeypatch, first_bad_call: int):
    calls = {"n": 0}
    real = experience.score_responses

    def score_responses(*a, **k):
        calls["n"] += 1
        s = real(*a, **k)
        return s * float("nan") if calls["n"] >= first_bad_call else s

    monkeypatch.setattr(experience, "score_responses", score_responses)


def test_nan_at_a_later_step_keeps_the_last_good_checkpoint(full_run, ppo_models, tiny_world_config, tmp_path,
                                                             monkeypatch, one_thread):
    _nan_scores_from_call(monkeypatch, first_bad_call=3)  # steps 1 and 2 fine, step 3 NaN
    out = tmp_path / "run"
    with pytest.raises(RLHFError, match=r"at step 3\b"):
        run_ppo(cfg_for(ppo_models, out, tiny_world_config, save_every=1), show_progress=False)
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "step-2" in ckpts and "step-3" not in ckpts
    # the kept step-2 policy is exactly the uninterrupted run's step-2 policy
    assert_same_weights(full_run / "checkpoints" / "step-2" / "policy", out / "checkpoints" / "step-2" / "policy",
                        atol=1e-6)


def test_nan_mid_step_does_not_overwrite_the_last_good_checkpoint(full_run, ppo_models, tiny_world_config, tmp_path,
                                                                  monkeypatch, one_thread):
    # step 2's loss turns NaN in its second PPO epoch, after epoch 1 already updated the policy
    calls = {"n": 0}
    real = ppo.ppo_losses
    per_step = 2 * (8 // 2)  # ppo_epochs * micro-batches per epoch

    def ppo_losses(*a, **k):
        calls["n"] += 1
        pg, vf, s = real(*a, **k)
        return (pg * float("nan") if calls["n"] == per_step + per_step // 2 + 1 else pg), vf, s

    monkeypatch.setattr(ppo, "ppo_losses", ppo_losses)
    out = tmp_path / "run"
    with pytest.raises(RLHFError, match=r"at step 2\b"):
        run_ppo(cfg_for(ppo_models, out, tiny_world_config, save_every=1), show_progress=False)
    assert_same_weights(full_run / "checkpoints" / "step-1" / "policy", out / "checkpoints" / "step-1" / "policy",
                        atol=1e-6)


def test_empty_prompt_file_is_a_clear_error(ppo_models, tiny_world_config, tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(RLHFError, match="prompt set is empty"):
        run_ppo(cfg_for(ppo_models, tmp_path / "run", tiny_world_config, prompts=str(empty)), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_prompt_line_without_prompt_is_a_clear_error(ppo_models, tiny_world_config, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"prompt": "Where does Kalo live?"}) + "\n" + json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(RLHFError, match=r"prompts\.jsonl:2: missing 'prompt'"):
        run_ppo(cfg_for(ppo_models, tmp_path / "run", tiny_world_config, prompts=str(bad)), show_progress=False)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(RLHFError, match="not found"):
        run_ppo(cfg_for(ppo_models, tmp_path / "run", tiny_world_config, prompts=str(missing)), show_progress=False)


@pytest.mark.parametrize("sizes,match", [
    (dict(rollout_batch_size=10, minibatch_size=4, micro_batch_size=2),
     r"rollout_batch_size \(10\).*minibatch_size \(4\)"),
    (dict(rollout_batch_size=8, minibatch_size=4, micro_batch_size=3), r"minibatch_size \(4\).*micro_batch_size \(3\)"),
    (dict(rollout_batch_size=8, minibatch_size=4, micro_batch_size=4, whiten_advantages="minibatch"),
     "minibatch_size >= 8"),
    (dict(whiten_advantages="episode"), "whiten_advantages"),
])
def test_batch_sizes_that_do_not_divide_are_clear_errors(ppo_models, tiny_world_config, tmp_path, sizes, match):
    cfg = cfg_for(ppo_models, tmp_path / "run", tiny_world_config, **sizes)
    with pytest.raises(RLHFError, match=match):
        cfg.validate()
    with pytest.raises(RLHFError, match=match):  # and run() checks before loading anything
        run_ppo(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_shaping_and_gae_on_gpu_tensors():
    """PPO runs its rollout tensors on the accelerator's device; shaping and GAE must not mix in CPU tensors."""
    dev = torch.device("cuda")
    mask = torch.tensor([[1.0, 1.0, 0.0]], device=dev)
    r, kl = shaped_rewards(torch.zeros(1, 3, device=dev), torch.zeros(1, 3, device=dev), torch.ones(1, device=dev),
                           mask, 0.1)
    adv, ret = gae(r, torch.zeros(1, 3, device=dev), mask, 1.0, 1.0)
    assert adv.device.type == "cuda" and adv[0, 0].item() == pytest.approx(1.0)


def test_value_head_on_the_policy_trains_and_resumes_exactly(ppo_models, tiny_world_config, tmp_path, one_thread):
    """value_init=policy: one backbone gives log-probs and values; its head is checkpointed and resumed."""
    full = tmp_path / "full"
    run_ppo(cfg_for(ppo_models, full, tiny_world_config, value_init="policy", steps=2, save_every=1),
            show_progress=False)
    head = weights(full / "checkpoints" / "step-2" / "value")
    assert set(head) == {"weight", "bias"} and head["weight"].abs().sum() > 0  # trained away from its zero init
    resumed = tmp_path / "resumed"
    run_ppo(cfg_for(ppo_models, resumed, tiny_world_config, value_init="policy", steps=2, save_every=1,
                    resume=str(full / "checkpoints" / "step-1")), show_progress=False)
    assert_same_weights(full / "checkpoints" / "step-2" / "policy", resumed / "checkpoints" / "step-2" / "policy",
                        atol=1e-6)
    assert_same_weights(full / "checkpoints" / "step-2" / "value", resumed / "checkpoints" / "step-2" / "value",
                        atol=1e-6)
    with pytest.raises(RLHFError, match="value_init differs"):
        run_ppo(cfg_for(ppo_models, tmp_path / "bad", tiny_world_config, value_init="reward", steps=2,
                        resume=str(full / "checkpoints" / "step-1")), show_progress=False)


def test_ppo_ptx_mixes_in_the_pretraining_loss(full_run, ppo_models, tiny_world_config, tmp_path, one_thread):
    """PPO-ptx: the LM loss on pretraining text is logged and its gradient changes the update."""
    out = tmp_path / "ptx"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, ptx_coef=1.0, ptx_batch_size=2, ptx_seq_len=16, save_every=1),
            show_progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["ptx_loss"]) and r["ptx_loss"] > 0 for r in rows if "pg_loss" in r)
    plain = weights(full_run / "checkpoints" / "step-1" / "policy")
    mixed = weights(out / "checkpoints" / "step-1" / "policy")
    assert any(not torch.allclose(plain[k], mixed[k]) for k in plain)


def test_hooks_add_metrics_evaluate_and_stop_the_run(ppo_models, tiny_world_config, tmp_path, one_thread):
    """on_iteration adds metrics and may stop the run (cleanly, with a checkpoint); evaluate runs on schedule."""
    seen, evaluated = [], []

    def on_iteration(step, metrics, batch):
        seen.append((step, len(batch.texts), "rm_score" in metrics))
        return {"mean_words": sum(len(t.split()) for t in batch.texts) / len(batch.texts),
                **({"stop": "enough"} if step == 2 else {})}

    def evaluate(models):
        evaluated.append(models.value is None)
        return {"probe": 1.5}

    out = tmp_path / "run"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, eval_every=1), show_progress=False,
            on_iteration=on_iteration, evaluate=evaluate)
    assert seen == [(1, 8, True), (2, 8, True)]
    assert evaluated == [True, True, True]  # before step 1, after steps 1 and 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "mean_words" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval_probe" in r] == [0, 1, 2]
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-2"}
    summary = json.loads((out / "summary.json").read_text())["result"]
    assert summary["steps"] == 2 and summary["stopped"] == "enough"


# ---------------------------------------------------------------- reward-model ensemble and gold-free stops


def test_ensemble_score_modes_on_hand_made_members():
    members = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]])  # (K=3 members, B=2 responses)
    assert torch.equal(ensemble_score(members, "first", 1.0), torch.tensor([1.0, 2.0]))
    assert torch.allclose(ensemble_score(members, "mean", 1.0), torch.tensor([2.0, 1.0]))
    assert torch.equal(ensemble_score(members, "min", 1.0), torch.tensor([1.0, 0.0]))
    # unbiased std across members is 1.0 for both columns
    assert torch.allclose(ensemble_score(members, "uwo", 0.5), torch.tensor([1.5, 0.5]))


@pytest.fixture(scope="module")
def second_rm(ppo_models):
    rm = init_reward_model(ppo_models["policy"], seed=7)
    path = ppo_models["root"] / "rm2"
    rm.save_pretrained(str(path), safe_serialization=True)
    load_tokenizer(ppo_models["rm"]).save_pretrained(str(path))
    return path


def test_kl_budget_stops_before_training_on_the_batch_that_spent_it(ppo_models, second_rm, tiny_world_config,
                                                                     tmp_path, one_thread):
    """Step 1 samples from the reference itself (KL exactly 0); a large learning rate moves the policy so far
    that step 2's batch exceeds the budget, and the run stops without updating on it: the saved policy is the
    one after step 1."""
    out = tmp_path / "run"
    optim = dataclasses.replace(ppo.PPOConfig().optim, lr=3e-2)
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, kl_budget=0.05, save_every=1, ensemble=[str(second_rm)],
                    optim=optim), show_progress=False)
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["steps"] == 2 and result["stopped"].startswith("KL budget spent")
    assert_same_weights(out / "model", out / "checkpoints" / "step-1" / "policy")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.05
    assert all(r["ens_disagreement"] > 0 and r["ens_min"] <= r["ens_mean"] for r in rows)
    assert result["ens_disagreement_start"] > 0


def test_disagreement_stop_after_the_first_iterations(ppo_models, second_rm, tiny_world_config, tmp_path, one_thread):
    out = tmp_path / "run"
    run_ppo(cfg_for(ppo_models, out, tiny_world_config, kl_budget=0, disagreement_stop=1e-9, ensemble=[str(second_rm)]),
            show_progress=False)
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["steps"] == 4 and "ensemble disagreement" in result["stopped"]  # 3 iterations set the baseline


def test_stop_windows_survive_a_resume(ppo_models, second_rm, tiny_world_config, tmp_path, one_thread):
    """The disagreement baseline (first 3 iterations) and the KL window are part of the checkpoint: a run
    resumed at step 2 stops at step 4 as the uninterrupted run does (a fresh window would need 3 more steps)."""
    kw = dict(kl_budget=0, disagreement_stop=1e-9, ensemble=[str(second_rm)], save_every=1, steps=5)
    run_ppo(cfg_for(ppo_models, tmp_path / "full", tiny_world_config, **kw), show_progress=False)
    run_ppo(cfg_for(ppo_models, tmp_path / "resumed", tiny_world_config,
                    resume=str(tmp_path / "full" / "checkpoints" / "step-2"), **kw), show_progress=False)
    for run in ("full", "resumed"):
        result = json.loads((tmp_path / run / "summary.json").read_text())["result"]
        assert result["steps"] == 4 and "ensemble disagreement" in result["stopped"], run


def test_optimizing_the_ensemble_mean_changes_the_reward(ppo_models, second_rm, tiny_world_config, tmp_path,
                                                         one_thread):
    out_first, out_mean = tmp_path / "first", tmp_path / "mean"
    for out, how in ((out_first, "first"), (out_mean, "mean")):
        run_ppo(cfg_for(ppo_models, out, tiny_world_config, steps=1, ensemble=[str(second_rm)], ensemble_reward=how),
                show_progress=False)
    first, mean = (json.loads((o / "metrics.jsonl").read_text().splitlines()[0]) for o in (out_first, out_mean))
    assert first["ens_mean"] == pytest.approx(mean["ens_mean"])  # same samples, same members
    assert weights(out_first / "model").keys() == weights(out_mean / "model").keys()
    assert any(not torch.equal(a, b)
               for a, b in zip(weights(out_first / "model").values(), weights(out_mean / "model").values()))


@pytest.mark.parametrize("kw, match", [({"ensemble_reward": "mean"}, "needs ensemble"),
                                       ({"ensemble_reward": "max", "ensemble": ["x"]},
                                        "expected first, mean, min or uwo")])
def test_ensemble_settings_are_checked(ppo_models, tiny_world_config, tmp_path, kw, match):
    with pytest.raises(RLHFError, match=match):
        run_ppo(cfg_for(ppo_models, tmp_path / "r", tiny_world_config, **kw), show_progress=False)


def test_ensemble_member_with_another_vocabulary_is_rejected(ppo_models, other_vocab_rm, tiny_world_config, tmp_path):
    with pytest.raises(RLHFError, match="another vocabulary"):
        run_ppo(cfg_for(ppo_models, tmp_path / "r", tiny_world_config, ensemble=[str(other_vocab_rm)]),
                show_progress=False)
