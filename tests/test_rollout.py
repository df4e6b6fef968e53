"""The rollout engine: seeded determinism, greedy = argmax continuation without a cache, top-k / top-p
filtering, and generate_texts keeping prompt order. Tiny random Llama and GPT-2 models (hidden 32)."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf.data.chat import encode_prompt
from rlhf.rollout.engine import (SamplingConfig, _filter, draw, generate_texts, left_pad, position_ids,
                                 response_logprobs, sample)

QUESTIONS = ("Where does Kalo live?", "Hi", "What is 3 plus 4 and what is 5 plus 6?", "Spell cat.", "Who is Mira?")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(tok, arch: str, seed: int = 0):
    # initializer_range 0.3 (not 0.02): a default-init tiny model repeats one token for every prompt
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                          intermediate_size=64, max_position_embeddings=128, initializer_range=0.3, **common)
        return LlamaForCausalLM(cfg).eval()
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, initializer_range=0.3, **common)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tiny_tokenizer):
    return _model(tiny_tokenizer, request.param)


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    p = [encode_prompt(tiny_tokenizer, q) for q in QUESTIONS]
    assert len({len(x) for x in p}) > 2
    return p


def _sample(model, prompts, tok, cfg, seed):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, g)


# ---------------------------------------------------------------- the categorical draw


def test_draw_matches_the_distribution():
    """200,000 draws from 3 rows: each token's frequency within 5 binomial standard errors of its probability,
    and tokens of probability 0 (filtered by top-k / top-p) never drawn."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.125, 0.125, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                          [1e-3, 0.0, 0.2, 0.0, 0.599, 0.2]])
    n = 200_000
    counts = torch.zeros_like(probs, dtype=torch.float64)
    for _ in range(n // 1000):
        tok = draw(probs.repeat(1000, 1), g).view(1000, 3)
        for r in range(3):
            counts[r] += torch.bincount(tok[:, r], minlength=6).double()
    freq = counts / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert (counts[probs == 0] == 0).all()
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-12).all(), (freq, probs)


def test_draw_never_takes_a_zero_probability_token_at_the_edges():
    """u = 0 lands on the first token of positive probability, u -> 1 on the last, even with the row's
    total off 1 by rounding."""
    probs = torch.tensor([[0.0, 0.0, 0.3, 0.7, 0.0, 0.0]])

    for u, want in ((0.0, 2), (1 - 2 ** -53, 3), (0.31, 3), (0.29, 2)):
        orig = torch.rand
        try:
            torch.rand = lambda *a, **k: torch.full((1, 1), u, dtype=torch.float64)
            assert draw(probs).item() == want, u
            assert draw(probs * (1 + 1e-7)).item() == want, u
        finally:
            torch.rand = orig


def test_draw_uses_the_generator_and_its_device():
    probs = torch.softmax(torch.randn(8, 50), -1)
    a = draw(probs, torch.Generator().manual_seed(3))
    b = draw(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (8,)


def test_inverse_cdf_sampling_is_seeded_and_respects_top_k(model, prompts, tiny_tokenizer):
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, draw="inverse_cdf")
    a, b = _sample(model, prompts, tiny_tokenizer, cfg, 5), _sample(model, prompts, tiny_tokenizer, cfg, 5)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    multinomial = _sample(model, prompts, tiny_tokenizer, SamplingConfig(max_new_tokens=8, draw="multinomial"), 5)
    assert not torch.equal(a.response_ids, multinomial.response_ids)  # another (equally exact) draw
    # top-k = 1 leaves one token of positive probability: the draw must take it, i.e. greedy decoding
    top1 = _sample(model, prompts, tiny_tokenizer, SamplingConfig(max_new_tokens=8, top_k=1, draw="inverse_cdf"), 5)
    greedy = _sample(model, prompts, tiny_tokenizer, SamplingConfig(max_new_tokens=8, temperature=0), None)
    assert torch.equal(top1.response_ids, greedy.response_ids)


def test_unknown_draw_is_a_clear_error(model, prompts, tiny_tokenizer):
    from rlhf.errors import RLHFError

    with pytest.raises(RLHFError, match="sampling.draw: expected one of multinomial, inverse_cdf, got 'gumbel'"):
        _sample(model, prompts, tiny_tokenizer, SamplingConfig(draw="gumbel"), 0)


# ---------------------------------------------------------------- determinism


def test_sampling_is_deterministic_with_a_seeded_generator(model, prompts, tiny_tokenizer):
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    torch.manual_seed(123)
    a = _sample(model, prompts, tiny_tokenizer, cfg, seed=7)
    torch.manual_seed(456)  # the global RNG plays no part
    b = _sample(model, prompts, tiny_tokenizer, cfg, seed=7)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.response_mask, b.response_mask)
    c = _sample(model, prompts, tiny_tokenizer, cfg, seed=8)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_generator_state_advances_between_batches(model, prompts, tiny_tokenizer):
    """Two batches from one generator are not copies of each other (the generator is consumed)."""
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    a = sample(model, prompts, cfg, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id, g)
    b = sample(model, prompts, cfg, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id, g)
    assert not torch.equal(a.response_ids, b.response_ids)


# ---------------------------------------------------------------- greedy


def _argmax_continuation(model, prompt: list[int], n: int, eos: int) -> tuple[list[int], list[float]]:
    """Reference: no padding, no KV cache, one full forward per new token."""
    ids, out, lps = list(prompt), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            nxt = int(logits.argmax())
            out.append(nxt)
            lps.append(float(torch.log_softmax(logits, -1)[nxt]))
            ids.append(nxt)
            if nxt == eos:
                break
    return out, lps


def test_greedy_equals_argmax_continuation(model, prompts, tiny_tokenizer):
    tok = tiny_tokenizer
    n = 12
    roll = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=n, temperature=0.0), seed=None)
    for i, p in enumerate(prompts):
        want, want_lp = _argmax_continuation(model, p, n, tok.eos_token_id)
        got = roll.response_ids[i][roll.response_mask[i].bool()].tolist()
        assert got == want, (i, got, want)
        assert roll.logprobs[i, : len(want)].tolist() == pytest.approx(want_lp, abs=1e-4)
    # greedy ignores the generator entirely
    again = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=n, temperature=0.0), seed=99)
    assert torch.equal(again.response_ids, roll.response_ids)


def test_top_k_one_is_greedy(model, prompts, tiny_tokenizer):
    tok = tiny_tokenizer
    greedy = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=8, temperature=0.0), seed=None)
    k1 = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=8, temperature=1.3, top_k=1), seed=5)
    assert torch.equal(greedy.response_ids, k1.response_ids)
    # the single candidate has probability 1
    assert torch.allclose(k1.logprobs, torch.zeros_like(k1.logprobs), atol=1e-6)


# ---------------------------------------------------------------- top-k / top-p filters


def test_filter_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = _filter(logits, top_k=2, top_p=1.0)
    keep = torch.isfinite(out)
    assert keep.tolist() == [[False, True, False, True, False], [True, True, False, False, False]]
    assert torch.equal(out[keep], logits[keep])  # kept logits unchanged
    assert torch.equal(_filter(logits, 0, 1.0), logits)  # off by default
    assert torch.isfinite(_filter(logits, 50, 1.0)).all()  # k beyond the vocabulary keeps everything


@pytest.mark.parametrize("top_p,kept", [(0.4, 1), (0.7, 2), (0.9, 3), (0.99, 4)])
def test_filter_top_p_keeps_the_smallest_nucleus(top_p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    perm = torch.tensor([2, 0, 3, 1])  # shuffled vocabulary positions: the filter must sort and scatter back
    logits = probs.log()[perm][None]
    out = _filter(logits, top_k=0, top_p=top_p)
    keep = torch.isfinite(out)[0]
    kept_probs = sorted(probs[perm][keep].tolist(), reverse=True)
    assert kept_probs == pytest.approx(probs[:kept].tolist())  # the most probable `kept` tokens
    # the nucleus covers top_p, and is the smallest such set
    assert sum(kept_probs) >= top_p - 1e-6 and sum(kept_probs[:-1]) < top_p


def test_top_k_sampling_draws_only_from_the_top_k_with_renormalized_logprobs(model, prompts, tiny_tokenizer):
    tok, k, temperature = tiny_tokenizer, 3, 0.8
    roll = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=8, temperature=temperature, top_k=k), seed=1)
    P = roll.prompt_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask,
                       position_ids=position_ids(roll.attention_mask)).logits[:, P - 1:-1].float() / temperature
    top = logits.topk(k, -1)
    mask = roll.response_mask.bool()
    in_top = (top.indices == roll.response_ids[..., None]).any(-1)
    assert in_top[mask].all()
    renorm = torch.log_softmax(top.values, -1)  # log-probs within the top k
    want = (renorm * (top.indices == roll.response_ids[..., None])).sum(-1)
    assert torch.allclose(roll.logprobs[mask], want[mask], atol=1e-4)


def test_top_p_sampling_stays_in_the_nucleus(model, prompts, tiny_tokenizer):
    tok, top_p = tiny_tokenizer, 0.5
    roll = _sample(model, prompts, tok, SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=top_p), seed=2)
    P = roll.prompt_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask,
                       position_ids=position_ids(roll.attention_mask)).logits[:, P - 1:-1].float()
    probs = logits.softmax(-1)
    p_tok = probs.gather(-1, roll.response_ids[..., None]).squeeze(-1)
    mass_above = (probs * (probs > p_tok[..., None])).sum(-1)  # mass of strictly more probable tokens
    mask = roll.response_mask.bool()
    assert (mass_above[mask] <= top_p + 1e-5).all()


# ---------------------------------------------------------------- generate_texts


def test_generate_texts_preserves_prompt_order(model, tiny_tokenizer):
    tok = tiny_tokenizer
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0)
    qs = list(QUESTIONS)
    batched = generate_texts(model, tok, qs, cfg, batch_size=2)
    one_by_one = [generate_texts(model, tok, [q], cfg, batch_size=1)[0] for q in qs]
    assert batched == one_by_one
    assert len(set(batched)) > 1, "the prompts should not all give the same text"
    assert generate_texts(model, tok, qs[::-1], cfg, batch_size=3) == batched[::-1]
    # messages work as prompts too and equal the plain-string form
    msgs = [[{"role": "user", "content": q}] for q in qs]
    assert generate_texts(model, tok, msgs, cfg, batch_size=4) == batched


def test_generate_texts_seeded(model, tiny_tokenizer):
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    a = generate_texts(model, tiny_tokenizer, list(QUESTIONS), cfg, batch_size=2, seed=3)
    b = generate_texts(model, tiny_tokenizer, list(QUESTIONS), cfg, batch_size=2, seed=3)
    assert a == b and len(a) == len(QUESTIONS)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_response_logprobs_match_sampling_at_temperature(model, prompts, tiny_tokenizer):
    roll = _sample(model, prompts, tiny_tokenizer, SamplingConfig(max_new_tokens=10, temperature=0.6), seed=4)
    full = response_logprobs(model, roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1], 0.6)
    assert torch.allclose(full * roll.response_mask, roll.logprobs, atol=1e-4)
    lp, ent = response_logprobs(model, roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1], 0.6, True)
    assert (ent >= -1e-6).all() and (ent <= math.log(len(tiny_tokenizer)) + 1e-4).all()


# ---------------------------------------------------------------- the decoding step's cache and mask


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("draw_kind", ["multinomial", "inverse_cdf"])
def test_fast_step_samples_what_the_generic_step_samples(model, prompts, tiny_tokenizer, monkeypatch, group, draw_kind):
    """GPT-2 and Llama decode with one preallocated cache and a ready 4-D mask (engine.FAST_STEP_MODELS);
    every other model through HF's own cache and 2-D mask. Both paths give the same tokens and the same
    log-probs with left padding, groups and EOS inside the response: equal up to float rounding, since the
    fast path's keys and values are views into a larger buffer (other strides), which a CPU's BLAS may block
    differently (bit-equal on the AMD EPYC the defaults were measured on, not promised elsewhere)."""
    import rlhf.rollout.engine as engine
    from transformers.cache_utils import DynamicLayer

    cfg = SamplingConfig(max_new_tokens=10, temperature=0.8, draw=draw_kind)
    flat = [p for p in prompts for _ in range(group)]
    seen = []
    original = engine._SlabLayer.convert

    def convert(layer, g, room):
        seen.append(type(layer))
        original(layer, g, room)

    monkeypatch.setattr(engine._SlabLayer, "convert", convert)
    fast = sample(model, flat, cfg, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id,
                  torch.Generator().manual_seed(3), group=group)
    assert seen and all(t is DynamicLayer for t in seen)  # the fast path ran, on every layer
    monkeypatch.setattr(engine, "FAST_STEP_MODELS", ())
    seen.clear()
    generic = sample(model, flat, cfg, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id,
                     torch.Generator().manual_seed(3), group=group)
    assert not seen  # ... and this one did not
    assert torch.equal(fast.response_ids, generic.response_ids)
    assert torch.equal(fast.response_mask, generic.response_mask)
    torch.testing.assert_close(fast.logprobs, generic.logprobs, rtol=0, atol=1e-5)  # fp32 rounding, with room


def test_decoding_forwards_no_token_after_the_last(model, prompts, tiny_tokenizer):
    """max_new_tokens = N costs one prompt forward and N - 1 one-token forwards: the N-th token's logits
    would have nothing left to draw."""
    calls = []
    handle = model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[1]),
                                         with_kwargs=True)
    try:
        roll = _sample(model, prompts, tiny_tokenizer, SamplingConfig(max_new_tokens=6, temperature=0), None)
    finally:
        handle.remove()
    steps = roll.response_ids.shape[1]
    assert calls[0] > 1 and calls[1:] == [1] * (steps - 1)


@pytest.mark.parametrize("precision", ["autocast-bf16", "bf16-weights"])
def test_fast_step_is_the_generic_step_in_bf16_too(tiny_tokenizer, prompts, monkeypatch, precision):
    import rlhf.rollout.engine as engine

    model = _model(tiny_tokenizer, "llama")
    if precision == "bf16-weights":
        model = model.to(torch.bfloat16)
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0)
    rolls = []
    for fast in (True, False):
        monkeypatch.setattr(engine, "FAST_STEP_MODELS", ("gpt2", "llama") if fast else ())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast-bf16"):
            rolls.append(_sample(model, prompts, tiny_tokenizer, cfg, 4))
    # bf16 keeps 8 bits of mantissa: a kernel that blocks the strided cache differently may move a log-prob by
    # a few 1e-3 (and so a draw near a boundary of the cumulative distribution): most rows keep every token,
    # and where they do, the log-probs agree within bf16 rounding
    a, b = rolls
    same = (a.response_ids == b.response_ids).all(dim=1)
    assert same.float().mean() >= 0.75, (a.response_ids, b.response_ids)
    torch.testing.assert_close(a.logprobs[same].float(), b.logprobs[same].float(), rtol=0, atol=3e-2)
