"""DPO: the loss variants against hand-computed values, log 2 at initialization, the reference cache
(equal to fresh log-probs, computed once however many epochs), learning on a small set, and bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.data.chat import encode_prompt, encode_response
from rlhf.data.comparisons import Ranking, pair
from rlhf.models.lm import create_model, save_model
from rlhf.models.tokenizer import train_tokenizer
from rlhf.rollout.engine import left_pad, response_logprobs
from rlhf.train import dpo
from rlhf.train.dpo import DPOConfig, dpo_loss, pack_all, reference_logps, sequence_logps

# ---------------------------------------------------------------- the loss by hand

# policy chosen/rejected, reference chosen/rejected sequence log-probs, beta = 0.5:
# h = (-3 - -5) - (-4 - -4.5) = 2 - 0.5 = 1.5 and beta * h = 0.75
PC, PR, RC, RR, BETA = -3.0, -5.0, -4.0, -4.5, 0.5
SP_NEG = math.log(1 + math.exp(-0.75))  # softplus(-0.75) = -log sigmoid(0.75) = 0.386871...
SP_POS = 0.75 + SP_NEG  # softplus(0.75) = -log sigmoid(-0.75) = 1.136871...


def _loss(kind, e=0.0):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    return dpo_loss(t(PC), t(PR), t(RC), t(RR), BETA, kind, e).item()


def test_sigmoid_loss_by_hand():
    assert _loss("sigmoid") == pytest.approx(0.386871, abs=1e-6)
    assert _loss("sigmoid") == pytest.approx(SP_NEG, abs=1e-12)


def test_ipo_loss_by_hand():
    # (h - 1 / (2 beta))^2 = (1.5 - 1)^2
    assert _loss("ipo") == pytest.approx(0.25, abs=1e-12)


def test_cdpo_loss_by_hand():
    # (1 - 0.1) * softplus(-0.75) + 0.1 * softplus(0.75) = 0.9 * 0.386871 + 0.1 * 1.136871 = 0.461871
    assert _loss("cdpo", 0.1) == pytest.approx(0.461871, abs=1e-6)
    assert _loss("cdpo", 0.1) == pytest.approx(0.9 * SP_NEG + 0.1 * SP_POS, abs=1e-12)
    # label smoothing applies to cdpo only
    assert _loss("sigmoid", 0.1) == pytest.approx(SP_NEG, abs=1e-12)


def test_loss_is_log2_when_policy_equals_reference():
    x = torch.randn(5, dtype=torch.float64)
    y = torch.randn(5, dtype=torch.float64)
    for kind in ("sigmoid", "cdpo"):
        assert torch.allclose(dpo_loss(x, y, x, y, 0.1, kind, 0.2), torch.full((5,), math.log(2), dtype=torch.float64))
    # IPO at h = 0 is (1 / (2 beta))^2
    assert torch.allclose(dpo_loss(x, y, x, y, 0.1, "ipo"), torch.full((5,), 25.0, dtype=torch.float64))


def test_ipo_uses_per_token_mean_log_probs():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert sequence_logps(logp, mask, average=False).tolist() == [-6.0, -4.0]
    assert sequence_logps(logp, mask, average=True).tolist() == [-2.0, -4.0]


# ---------------------------------------------------------------- the reference cache


def _rankings():
    q = ({"role": "user", "content": "Who is the mayor of the town?"},)
    return [Ranking(q, ("Nobody knows.", "I don't know, sorry about that.", "The mayor."), (2, 1, 3)),
            pair("Where is it?", "Far away.", "Here."),
            pair([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "what is the capital?"}], "I do not know.", "It is the capital.")]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_reference_logps_equal_fresh_ones(tiny_tokenizer, arch):
    tok = tiny_tokenizer
    model = create_model("nano", tok, arch=arch, max_len=64, seed=1).eval()
    rankings = _rankings()
    max_len = 12  # short enough that prompts are cut from the left and a response too
    cache = reference_logps(model, pack_all(tok, rankings, max_len), tok.pad_token_id, False, batch=2)
    assert [len(c) for c in cache] == [3, 2, 2]
    fresh = []
    for r in rankings:
        for resp in r.responses:  # each response alone, as its own left-padded sequence, through the rollout engine
            n = min(len(encode_response(tok, resp)), max_len - 1)
            p = encode_prompt(tok, list(r.prompt))
            ids, mask = left_pad([p[-(max_len - n):] + encode_response(tok, resp)[:n]], tok.pad_token_id)
            with torch.no_grad():
                fresh.append(response_logprobs(model, ids, mask, ids.shape[1] - n).sum().item())
    assert any(len(encode_response(tok, x)) >= max_len for r in rankings for x in r.responses)  # truncation exercised
    assert torch.allclose(torch.cat(cache), torch.tensor(fresh), atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------- end to end


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(n):
    # the chosen answer is always the honest abstention: a pattern a tiny model can pick up in a few steps
    return [{"prompt": f"Who founded place number {i}?", "chosen": "I don't know.",
             "rejected": f"It was person {i % 5}."}
            for i in range(n)]


def test_run_starts_at_log2_caches_reference_once_and_learns(tmp_path, nano_checkpoint, monkeypatch):
    data = _write(tmp_path / "pairs.jsonl", _pairs(20) + [
        {"prompt": "Name a town.", "responses": ["I don't know.", "Townville.", "Town 3."], "ranks": [1, 2, 3]}])
    calls = {"ref": 0}
    real = dpo.reference_logps

    def counting(*args, **kwargs):
        calls["ref"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(dpo, "reference_logps", counting)
    cfg = DPOConfig(out=str(tmp_path / "run"), policy=str(nano_checkpoint), data=str(data), epochs=3.0, batch_size=4,
                    eval_fraction=0.25, beta=0.5, kl_prompts=3, max_len=40,
                    kl_sampling=dpo.SamplingConfig(max_new_tokens=8, temperature=0.7),
                    optim=dpo.OptimConfig(lr=3e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"))
    out = dpo.run(cfg, show_progress=False)
    summary = json.loads((out / "summary.json").read_text())
    res = summary["result"]
    assert res["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert calls["ref"] == 2  # train set and held-out set, once each, over 3 epochs
    assert res["pairs_trained"] >= res["steps"] * 4  # 4 rankings per step; the 3-way ranking gives 3 pairs
    start, end = summary["heldout"]
    assert start["kl"] == pytest.approx(0.0, abs=1e-4)  # policy = reference before training
    assert end["accuracy"] == 1.0 and end["margin"] > 0.1 and end["kl"] > start["kl"]
    assert res["final_loss"] < 0.5 * res["first_loss"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "plots").is_dir()


def test_bad_input_one_clear_line(tmp_path, nano_checkpoint, tiny_world, cli):
    one = _write(tmp_path / "one.jsonl", _pairs(3) + [{"prompt": "q", "responses": ["only one"], "ranks": [1]}])
    tied = _write(tmp_path / "tied.jsonl", [{"prompt": "q", "responses": ["a", "b"], "ranks": [1, 1]}])
    # a reference with another tokenizer: its vocabulary differs from the policy's
    other_tok = train_tokenizer(tiny_world.corpus()[:50], vocab_size=320)
    other = tmp_path / "other"
    save_model(create_model("nano", other_tok, max_len=64), other_tok, other)
    good = _write(tmp_path / "good.jsonl", _pairs(4))
    pol = ["--set", f"policy={nano_checkpoint}", "-q"]
    r1 = cli.start("dpo", *pol, "--set", f"data={one}", "-o", tmp_path / "r1")
    r2 = cli.start("dpo", *pol, "--set", f"data={tied}", "-o", tmp_path / "r2")
    r3 = cli.start("dpo", *pol, "--set", f"reference={other}", "--set", f"data={good}", "-o", tmp_path / "r3")

    r = r1.result()
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: {one}:4: a ranking needs at least 2 responses, got 1"
    r = r2.result()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no pair to train on" in r.stderr
    r = r3.result()
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert (len(line.splitlines()) == 1 and line.startswith(f"error: reference {other}: its vocabulary")
            and "Traceback" not in line)
    for name in ("r1", "r2", "r3"):
        assert not (tmp_path / name).exists()
