"""The supervised trainers on 2 real processes (torchrun, gloo, each asserting the world size is 2) against one
process with the same global batch: SFT and the reward model under DDP, pretraining a tiny GPT-2 under FSDP2,
and sharded (DCP) checkpoints resumed with another number of processes (2 -> 1 and 1 -> 2).

Tolerances: the two sides compute the same sums in another order (each rank's slice, then the average over
ranks; SFT pads each slice to its own widest row), so float32 results agree to rounding, not bit for bit:
losses to 1e-5, weights to 1e-4 after a few AdamW steps.

Slow: the launches and the one-process references take 3-5 minutes on the 2-core development machine.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.data.jsonl import write_jsonl
from rlhf.train import pretrain, reward, sft
from tests.distributed.launch import torchrun

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes run
    yield
    torch.set_num_threads(old)


def metrics(run: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        out.setdefault(row["step"], {}).update(row)
    return out


def same_metrics(a: Path, b: Path, keys: tuple[str, ...], steps=None, tol: float = 1e-5) -> None:
    ma, mb = metrics(a), metrics(b)
    steps = steps or sorted(ma)
    assert set(steps) <= set(mb), (sorted(ma), sorted(mb))
    for step in steps:
        for key in keys:
            assert mb[step][key] == pytest.approx(ma[step][key], rel=tol, abs=tol), (step, key)


def close_weights(a: Path, b: Path, atol: float = 1e-4) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), (k, (wa[k] - wb[k]).abs().max())


@pytest.fixture(scope="module")
def runs(tiny_world, nano_checkpoint, tmp_path_factory, one_thread):
    """One process's runs here, then the same configs (and resumes of the one-process checkpoints) in one
    torchrun launch of 2 ranks."""
    tmp = tmp_path_factory.mktemp("dp")
    write_jsonl(tmp / "demos.jsonl", [{"messages": d["messages"]} for d in tiny_world.demonstrations()])
    write_jsonl(tmp / "corpus.jsonl", [{"text": t} for t in tiny_world.corpus()[:12]])
    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    write_jsonl(tmp / "pairs.jsonl", [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 3)),
                                       "rejected": " ".join(rng.sample(words, 5))}
                                      for p in tiny_world.prompts("train")[:40]])
    cfgs = {
        # 64 dialogues, 16 a step: 6 steps over an epoch boundary, a checkpoint every 2
        "sft": ("sft", dict(init=str(nano_checkpoint), data=str(tmp / "demos.jsonl"), epochs=1.5, batch_size=16,
                            max_len=64, save_every=2)),
        "reward": ("reward", dict(init=str(nano_checkpoint), data=str(tmp / "pairs.jsonl"), batch_size=4,
                                  max_len=64)),
        # a tiny GPT-2 (tied embeddings) from scratch; under FSDP2 on 2 ranks
        "pretrain": ("pretrain", dict(corpus=str(tmp / "corpus.jsonl"), steps=4, batch_size=4, seq_len=32,
                                      vocab_size=384, eval_every=2, save_every=2, eval_fraction=0.25,
                                      model={"size": "nano", "arch": "gpt2", "max_len": 64})),
    }
    one = {}
    for name, (trainer, cfg) in cfgs.items():
        module, cls = {"sft": (sft, sft.SFTConfig), "reward": (reward, reward.RewardConfig),
                       "pretrain": (pretrain, pretrain.PretrainConfig)}[trainer]
        one[name] = module.run(cls(out=str(tmp / f"one-{name}"), **{k: v for k, v in cfg.items() if k != "model"},
                                   **({"model": pretrain.ModelConfig(**cfg["model"])} if "model" in cfg else {})),
                               False)
    fsdp = {"parallel": {"strategy": "fsdp2"}}
    spec = [{"trainer": "sft", "config": {**cfgs["sft"][1], "out": str(tmp / "two-sft")}},
            {"trainer": "reward", "config": {**cfgs["reward"][1], "out": str(tmp / "two-reward")}},
            {"trainer": "pretrain", "config": {**cfgs["pretrain"][1], **fsdp, "out": str(tmp / "two-pretrain")}},
            # 1 -> 2: one process's checkpoints resumed by 2 ranks, under DDP and under FSDP2
            {"trainer": "sft", "config": {**cfgs["sft"][1], "out": str(tmp / "one-two-sft"),
                                          "resume": str(one["sft"] / "checkpoints/step-4")}},
            {"trainer": "pretrain", "config": {**cfgs["pretrain"][1], **fsdp, "out": str(tmp / "one-two-pretrain"),
                                               "resume": str(one["pretrain"] / "checkpoints/step-2")}}]
    (tmp / "spec.json").write_text(json.dumps(spec))
    torchrun(["tests/distributed/check_train.py", str(tmp / "spec.json")], cwd=ROOT)
    return tmp, cfgs, one


def test_two_ranks_ran(runs):
    tmp, _, _ = runs
    assert [json.loads((tmp / f"rank-{r}.json").read_text())["world_size"] for r in (0, 1)] == [2, 2]
    for name in ("two-sft", "two-reward", "two-pretrain", "one-two-sft", "one-two-pretrain"):
        assert not list(tmp.glob(f"{name}.partial-*"))  # one folder per run, renamed into place
        assert (tmp / name / "model" / "model.safetensors").is_file() and (tmp / name / "summary.json").is_file()


def test_sft_on_two_ranks_equals_one_process(runs):
    tmp, _, one = runs
    same_metrics(one["sft"], tmp / "two-sft", ("loss", "lr"))
    close_weights(one["sft"] / "model", tmp / "two-sft" / "model")


def test_reward_model_on_two_ranks_equals_one_process(runs):
    tmp, _, one = runs
    same_metrics(one["reward"], tmp / "two-reward", ("loss", "train_accuracy", "grad_norm"))
    close_weights(one["reward"] / "model", tmp / "two-reward" / "model")
    a, b = (json.loads((r / "summary.json").read_text())["result"] for r in (one["reward"], tmp / "two-reward"))
    assert b["pairs_trained"] == a["pairs_trained"]
    assert b["reward_offset"] == pytest.approx(a["reward_offset"], abs=1e-4)  # a mean of 72 scores after 9 steps


def test_fsdp2_gpt2_on_two_ranks_equals_one_process(runs):
    tmp, _, one = runs
    two = tmp / "two-pretrain"
    same_metrics(one["pretrain"], two, ("loss", "grad_norm", "eval_loss"), steps=[2, 4])
    same_metrics(one["pretrain"], two, ("loss", "grad_norm"))
    close_weights(one["pretrain"] / "model", two / "model")
    assert (two / "checkpoints/step-2/dcp/.metadata").is_file()  # sharded checkpoint


def test_checkpoints_resume_across_rank_counts(runs):
    tmp, cfgs, one = runs
    # 1 -> 2: one process's checkpoint, resumed on 2 ranks (DDP; FSDP2 shards the full tensors)
    same_metrics(one["sft"], tmp / "one-two-sft", ("loss",), steps=[5, 6])
    same_metrics(one["pretrain"], tmp / "one-two-pretrain", ("loss", "grad_norm"), steps=[3, 4])
    # 2 -> 1: the sharded checkpoints of 2 ranks (DDP; FSDP2), resumed by one process
    cfg = dict(cfgs["sft"][1])
    resumed = sft.run(sft.SFTConfig(out=str(tmp / "two-one-sft"), resume=str(tmp / "two-sft/checkpoints/step-4"),
                                    **cfg), False)
    same_metrics(tmp / "two-sft", resumed, ("loss",), steps=[5, 6])
    cfg = {k: v for k, v in cfgs["pretrain"][1].items() if k != "model"}
    resumed = pretrain.run(pretrain.PretrainConfig(out=str(tmp / "two-one-pretrain"),
                                                   resume=str(tmp / "two-pretrain/checkpoints/step-2"),
                                                   model=pretrain.ModelConfig(**cfgs["pretrain"][1]["model"]), **cfg),
                           False)
    same_metrics(tmp / "two-pretrain", resumed, ("loss", "grad_norm"), steps=[3, 4])


# ---------------------------------------------------------------- the CLI under torchrun, as users launch it


def _cli(args: list):
    """`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m rlhf.cli ...` from the repository's root."""
    return torchrun(["-m", "rlhf.cli", *map(str, args)], cwd=ROOT)


def test_cli_stages_on_two_processes(tiny_world, tmp_path):
    """pretrain -> sft -> reward on the smoke settings, each `torchrun --nproc_per_node 2 -m rlhf.cli <stage>`:
    one run folder each, written by rank 0; a global batch that does not divide is one clear line."""
    from tests.conftest import TINY_WORLD_SETS

    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 3)),
                                            "rejected": " ".join(rng.sample(words, 5))}
                                           for p in tiny_world.prompts("train")[:24]])
    _cli(["pretrain", "-q", "-c", ROOT / "configs/smoke.yaml", "-o", tmp_path / "pt"])
    _cli(["sft", "-q", "--set", f"init={tmp_path / 'pt/model'}", "--set", "epochs=0.5", *TINY_WORLD_SETS,
          "-o", tmp_path / "sft"])
    _cli(["reward", "-q", "--set", f"init={tmp_path / 'sft/model'}", "--set", f"data={tmp_path / 'pairs.jsonl'}",
          "--set", "batch_size=4", "--set", "max_len=64", "-o", tmp_path / "rm"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "pt", "rm", "sft"]
    for run, rows in (("pt", 3), ("sft", 1), ("rm", 5)):
        assert (tmp_path / run / "model" / "model.safetensors").is_file()
        assert len((tmp_path / run / "metrics.jsonl").read_text().splitlines()) == rows, run
        assert json.loads((tmp_path / run / "summary.json").read_text())["result"]
    with pytest.raises(AssertionError) as failed:
        _cli(["pretrain", "-q", "-c", ROOT / "configs/smoke.yaml", "--set", "batch_size=3", "-o", tmp_path / "bad"])
    assert "error: batch_size=3 does not divide over 2 processes" in str(failed.value)
    assert "RLHFError" not in str(failed.value)  # the line, no Python traceback from the ranks
    assert not list(tmp_path.glob("bad*"))
