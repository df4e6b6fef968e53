"""Exact resume for the supervised trainers (PPO's is in test_ppo.py): a run interrupted at a checkpoint and
resumed ends with the same weights and logs the same metrics as the run that was never interrupted.

Each trainer runs a few steps of a nano model on the tiny world, a checkpoint after every step.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.train import pretrain, reward, sft


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions independent of the thread count
    yield
    torch.set_num_threads(old)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), (k, (wa[k] - wb[k]).abs().max())


def metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def check_resumed(full: Path, resumed: Path, from_step: int, keys: tuple[str, ...]) -> None:
    same_weights(full / "model", resumed / "model")
    a, b = metrics(full), metrics(resumed)
    assert sorted(b) == [s for s in sorted(a) if s > from_step]
    for step in b:
        for key in keys:
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-7), (step, key)
    # a guard: training moved the weights, so equal weights are not trivially equal
    w0, w1 = (load_file(str(full / d / "model.safetensors")) for d in (f"checkpoints/step-{from_step}/model", "model"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_pretrain_resumes_exactly_across_a_corpus_pass(tiny_world, tmp_path, one_thread):
    docs = tiny_world.corpus()[:12]  # small: the stream reshuffles and repacks the corpus within the run
    texts = [m["content"] for d in tiny_world.demonstrations() for m in d["messages"]]
    cfg = dict(steps=6, batch_size=4, seq_len=32, vocab_size=384, eval_every=3, save_every=1, eval_fraction=0.25,
               model=pretrain.ModelConfig(size="nano", max_len=64))
    full = pretrain.run(pretrain.PretrainConfig(out=str(tmp_path / "full"), **cfg), False, docs=docs,
                        tokenizer_texts=texts)
    assert json.loads((full / "summary.json").read_text())["result"]["corpus_passes"] >= 2
    resumed = pretrain.run(pretrain.PretrainConfig(out=str(tmp_path / "resumed"), resume=str(full / "checkpoints/step-2"),
                                                   **cfg), False, docs=docs, tokenizer_texts=texts)
    check_resumed(full, resumed, 2, ("loss", "grad_norm", "lr"))


def test_sft_resumes_exactly_across_an_epoch(tiny_world, nano_checkpoint, tmp_path, one_thread):
    dialogues = [d["messages"] for d in tiny_world.demonstrations()]  # 64: an epoch is 4 steps of 16
    cfg = dict(init=str(nano_checkpoint), epochs=1.5, batch_size=16, max_len=64, save_every=1)
    full = sft.run(sft.SFTConfig(out=str(tmp_path / "full"), **cfg), False, dialogues=dialogues)
    resumed = sft.run(sft.SFTConfig(out=str(tmp_path / "resumed"), resume=str(full / "checkpoints/step-3"), **cfg),
                      False, dialogues=dialogues)
    check_resumed(full, resumed, 3, ("loss", "lr"))


def test_sft_with_pretraining_mix_resumes_exactly(tiny_world, nano_checkpoint, tmp_path, one_thread):
    """The ptx stream's generator is part of the checkpoint: the resumed run draws the same LM batches."""
    dialogues = [d["messages"] for d in tiny_world.demonstrations()]
    cfg = dict(init=str(nano_checkpoint), epochs=1.5, batch_size=16, max_len=64, save_every=1, ptx_coef=1.0,
               ptx_batch_size=4, ptx_seq_len=32)
    docs = tiny_world.corpus()
    full = sft.run(sft.SFTConfig(out=str(tmp_path / "full"), **cfg), False, dialogues=dialogues, ptx_docs=docs)
    resumed = sft.run(sft.SFTConfig(out=str(tmp_path / "resumed"), resume=str(full / "checkpoints/step-3"), **cfg),
                      False, dialogues=dialogues, ptx_docs=docs)
    check_resumed(full, resumed, 3, ("loss", "ptx_loss", "lr"))
    with pytest.raises(RLHFError, match="ptx_coef > 0 needs pretraining text"):
        sft.run(sft.SFTConfig(out=str(tmp_path / "x"), **cfg), False, dialogues=dialogues)


def test_reward_model_resumes_exactly(tiny_world, nano_checkpoint, tmp_path, one_thread):
    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    rows = [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 3)), "rejected": " ".join(rng.sample(words, 5))}
            for p in tiny_world.prompts("train")[:40]]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = dict(init=str(nano_checkpoint), data=str(tmp_path / "pairs.jsonl"), batch_size=4, max_len=64,
               save_every=1, normalize=True)
    full = reward.run(reward.RewardConfig(out=str(tmp_path / "full"), **cfg), False)
    resumed = reward.run(reward.RewardConfig(out=str(tmp_path / "resumed"), resume=str(full / "checkpoints/step-4"),
                                             **cfg), False)
    check_resumed(full, resumed, 4, ("loss", "train_accuracy"))
    assert json.loads((full / "summary.json").read_text())["result"]["reward_offset"] == pytest.approx(
        json.loads((resumed / "summary.json").read_text())["result"]["reward_offset"], abs=1e-6)


def test_resume_from_a_finished_or_foreign_folder_is_a_clear_error(tiny_world, nano_checkpoint, tmp_path):
    dialogues = [d["messages"] for d in tiny_world.demonstrations()]
    with pytest.raises(RLHFError, match="not a SFT checkpoint"):
        sft.run(sft.SFTConfig(out=str(tmp_path / "x"), init=str(nano_checkpoint), resume=str(tmp_path)), False,
                dialogues=dialogues)
    assert not (tmp_path / "x").exists()
