"""RAFT keeps exactly the configured top fraction per prompt; RRHF's ranking + SFT loss on a hand-made case;
short end-to-end runs of both."""
from __future__ import annotations

import json

import pytest
import torch

from rlhf.errors import RLHFError
from rlhf.train import raft, rrhf
from rlhf.train.raft import RAFTConfig, keep_count, select_top
from rlhf.train.rrhf import RRHFConfig, rrhf_loss


def test_raft_keeps_exactly_the_top_fraction():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
                           [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.0, 0.0]])
    for fraction, want in ((0.125, [[1], [0], [4]]), (0.25, [[1, 4], [0, 1], [4, 5]]),
                           (0.5, [[1, 4, 6, 2], [0, 1, 2, 3], [4, 5, 0, 1]])):
        keep = keep_count(8, fraction)
        top = select_top(scores, keep)
        assert keep == 8 * fraction and top.shape == (3, keep)
        assert top.tolist() == want  # the highest scores, best first; ties keep the earlier sample
        for row, kept in zip(scores, top):  # every kept score >= every dropped score
            dropped = [i for i in range(8) if i not in kept.tolist()]
            assert row[kept].min() >= row[dropped].max()
    for bad in (0.3, 0.0, 1.5, 0.05):
        with pytest.raises(RLHFError, match="keep_fraction"):
            keep_count(8, bad)


def test_rrhf_loss_by_hand():
    # three responses with per-token log-probs; length-normalized scores p = [-1.0, -2.0, -0.5]
    logp = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, -2.0, -2.0], [-0.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)  # RM order: 1 > 2 > 0
    loss, rank, sft = rrhf_loss(logp, mask, rewards)
    # pairs (worse, better): (0, 1): max(0, -1 - -2) = 1; (0, 2): max(0, -1 - -0.5) = 0; (2, 1): max(0, -0.5 - -2) = 1.5
    assert rank.item() == pytest.approx(2.5, abs=1e-12)
    assert sft.item() == pytest.approx(2.0, abs=1e-12)  # the best (1): mean token NLL 2
    assert loss.item() == pytest.approx(4.5, abs=1e-12)
    # rank_coef and length_penalty 0 (summed log-probs: p = [-2, -6, -0.5])
    loss, rank, _ = rrhf_loss(logp, mask, rewards, rank_coef=0.5, length_penalty=0.0)
    assert rank.item() == pytest.approx((-2 + 6) + 0 + (-0.5 + 6), abs=1e-12)
    assert loss.item() == pytest.approx(0.5 * 9.5 + 2.0, abs=1e-12)
    # equal rewards make no pair
    _, rank, _ = rrhf_loss(logp, mask, torch.ones(3, dtype=torch.float64))
    assert rank.item() == 0.0


def test_raft_short_run(tmp_path, nano_checkpoint, nano_rm_checkpoint, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    cfg = RAFTConfig(out=str(tmp_path / "raft"), policy=str(nano_checkpoint), reward_model=str(nano_rm_checkpoint),
                     prompts=str(prompts), eval_prompts=str(prompts), n_eval_prompts=2, iterations=2,
                     prompts_per_iteration=4, k=4, keep_fraction=0.5, sample_batch_prompts=3, batch_size=2)
    cfg.sampling.max_new_tokens = 6
    out = raft.run(cfg, show_progress=False)
    s = json.loads((out / "summary.json").read_text())
    assert [it["kept"] for it in s["iterations"]] == [8, 8] and [it["sampled"] for it in s["iterations"]] == [16, 16]
    assert all(it["rm_kept"] >= it["rm_all"] for it in s["iterations"])
    assert s["result"]["sft_steps"] == 4 and (out / "model" / "model.safetensors").is_file()


def test_rrhf_short_run(tmp_path, nano_checkpoint, nano_rm_checkpoint, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    cfg = RRHFConfig(out=str(tmp_path / "rrhf"), policy=str(nano_checkpoint), reward_model=str(nano_rm_checkpoint),
                     prompts=str(prompts), eval_prompts=None, steps=2, prompts_per_step=3, k=3)
    cfg.sampling.max_new_tokens = 6
    out = rrhf.run(cfg, show_progress=False, gold=lambda p, r: 0.5)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["gold"] == 0.5 and r["rank_loss"] >= 0 for r in rows)
    assert (out / "model" / "model.safetensors").is_file()


def test_best_of_n_cli(tmp_path, nano_checkpoint, nano_rm_checkpoint, tiny_world_sets, cli, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    r = cli.run("best-of-n", "--set", f"policy={nano_checkpoint}", "--set", f"reward_model={nano_rm_checkpoint}",
                "--set", f"prompts={prompts}", "--set", "n=4", "--set", "sampling.max_new_tokens=6", *tiny_world_sets,
                "-o", tmp_path / "bon", "-q")
    assert r.returncode == 0, r.stderr
    picks = [json.loads(line) for line in (tmp_path / "bon" / "responses.jsonl").read_text().splitlines()]
    sft = [json.loads(line) for line in (tmp_path / "bon" / "sft_data.jsonl").read_text().splitlines()]
    assert len(picks) == len(sft) == 3
    assert all(s["messages"][-1]["content"] == p["response"] for s, p in zip(sft, picks))
    curve = json.loads((tmp_path / "bon" / "summary.json").read_text())["curve"]
    assert [c["n"] for c in curve] == [1, 2, 4]
    assert all(b["proxy"] >= a["proxy"] - 1e-6 for a, b in zip(curve, curve[1:]))
    bad = cli.run("best-of-n", "--set", f"policy={nano_checkpoint}", "--set", f"reward_model={nano_rm_checkpoint}",
                  "--set", "n=0", "-o", tmp_path / "bad", "-q")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: n must be at least 1, got 0"
