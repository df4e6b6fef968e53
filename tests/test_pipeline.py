"""`rlhf pipeline`: a seconds-long smoke run of every stage, and (slow) the default run's outcome."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import TINY_WORLD

SMOKE = [x for k, v in TINY_WORLD.items() for x in ("--set", f"world.{k}={v}")] + [
    "--set", "pretrain.steps=4", "--set", "pretrain.batch_size=4", "--set", "pretrain.seq_len=32",
    "--set", "pretrain.vocab_size=384", "--set", "pretrain.model.max_len=96", "--set", "pretrain.eval_every=4",
    "--set", "sft.epochs=0.5", "--set", "labels.n_prompts=12", "--set", "labels.k=3",
    "--set", "labels.sampling.max_new_tokens=8", "--set", "reward.batch_size=4",
    "--set", "ppo.steps=2", "--set", "ppo.rollout_batch_size=8", "--set", "ppo.minibatch_size=8",
    "--set", "ppo.micro_batch_size=4", "--set", "ppo.ppo_epochs=1", "--set", "ppo.sampling.max_new_tokens=8",
    "--set", "best_of_n=4", "--set", "eval_sampling.max_new_tokens=8", "-q",
]


def test_pipeline_smoke_runs_every_stage_and_tabulates_gold(cli, tmp_path):
    out = tmp_path / "pipe"
    res = cli.run("pipeline", *SMOKE, "-o", out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = [row["stage"] for row in summary["table"]]
    averaged = "PPO-ptx (ptx_coef 2) + averaging (0.2 pretrained)"
    assert stages == ["pretrained", "SFT", "SFT + RM best-of-4", "PPO-ptx (ptx_coef 2)", averaged]
    assert [row["stage"] for row in summary["sampled_table"]] == ["pretrained", "SFT", "PPO-ptx (ptx_coef 2)", averaged]
    assert "ptx_loss" in (out / "ppo" / "metrics.jsonl").read_text()
    for row in summary["table"]:
        assert -4.0 <= row["gold_mean"] <= 3.0 and row["gold_se"] >= 0
    for sub in ("world/world.json", "pretrain/model/config.json", "sft/model/config.json",
                "labels/comparisons.jsonl", "reward/model/config.json", "ppo/model/config.json",
                "plots/gold_by_kind.png", "summary.md"):
        assert (out / sub).exists(), sub
    assert "eval_pairwise_accuracy" in summary["stages"]["reward"]
    assert not list(tmp_path.glob("*.partial-*"))
    # the report beside summary.md, its path printed; every stage folder read into it (tests/test_report.py opens one)
    assert res.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    data = json.loads((out / "report.html").read_text().split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert [p["name"] for p in data["runs"][0]["parts"]] == [".", "labels", "ppo", "pretrain", "reward", "reward/member-1",
                                                              "reward/member-2", "sft"]
    assert (out / "ppo" / "tensorboard").is_dir()  # the default tracker
    # the averaged policy is 0.8 x PPO + 0.2 x pretrained, tensor by tensor
    from safetensors.torch import load_file
    ppo, pre, avg = (load_file(out / d / "model" / "model.safetensors") for d in ("ppo", "pretrain", "ppo-averaged"))
    assert set(avg) == set(ppo)
    for k in avg:
        assert torch.allclose(avg[k], 0.8 * ppo[k] + 0.2 * pre[k], atol=1e-6), k
    assert not torch.equal(avg["model.embed_tokens.weight"], ppo["model.embed_tokens.weight"])


def test_pipeline_rejects_an_averaging_weight_outside_0_1(cli, tmp_path):
    res = cli.run("pipeline", "--set", "average_pretrained=1.5", "-o", tmp_path / "p")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: average_pretrained: expected a number in [0, 1) (the pretrained model's share), got 1.5"
    assert not (tmp_path / "p").exists()


def test_pipeline_rejects_an_unknown_stage(cli, tmp_path):
    res = cli.run("pipeline", "--set", "stages=[pretrain,dpoo]", "-o", tmp_path / "p")
    assert res.returncode == 2
    assert "unknown stage 'dpoo'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "p").exists()


def test_pipeline_rejects_an_unknown_reward_init(cli, tmp_path):
    res = cli.run("pipeline", "--set", "reward_init=base", "-o", tmp_path / "p")
    assert res.returncode == 2
    assert "reward_init: expected 'sft' or 'pretrain', got 'base'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "p").exists()


def test_reward_models_start_from_the_configured_stage(tmp_path):
    from rlhf.pipeline import PipelineConfig, _wire

    for init in ("sft", "pretrain"):
        cfg = PipelineConfig(reward_init=init)
        cfg.validate()
        _wire(cfg, tmp_path)
        assert cfg.reward.init == str(tmp_path / init / "model")
        assert cfg.ppo.policy == str(tmp_path / "sft" / "model")  # the policy always starts from SFT


@pytest.mark.slow
def test_default_pipeline_gain_holds_over_three_seeds(tmp_path):
    """The RL stage's gain on the embedded default, asserted where it holds on every machine. One seed's
    table differs between CPUs (their float kernels differ, so trajectories diverge); what the measured
    spread over seeds supports is asserted instead: `rlhf study seeds --seeds 0,1,2`, PPO-ptx beats SFT on
    mean gold in every seed, pooled over all seeds' prompts by more than 3 standard errors, and makes up
    answers about unknown entities at most half as often as SFT; averaged with the pretrained weights it
    still beats SFT by more than 3 pooled standard errors and answers more facts right than PPO-ptx alone
    (README: the measured table)."""
    out = tmp_path / "seeds"
    # all cores, as a user would run it (the CLI fixture pins one thread per process)
    res = subprocess.run([sys.executable, "-m", "rlhf.cli", "study", "seeds", "--seeds", "0,1,2", "-q", "-o", str(out)],
                         capture_output=True, text=True, timeout=4800)
    assert res.returncode == 0, res.stderr[-2000:]
    greedy = json.loads((out / "summary.json").read_text())["greedy"]
    gain = next(p for p in greedy["paired"] if p["a"] == "SFT" and p["b"].startswith("PPO"))
    assert gain["positive_seeds"] == gain["n_seeds"] == 3, gain["per_seed"]
    assert gain["pooled_z"] > 3, gain
    hallucination = {row["stage"]: row["hallucination_rate"]["mean"] for row in greedy["stages"]}
    assert hallucination[gain["b"]] <= 0.5 * hallucination["SFT"], hallucination
    # the policy averaged with the pretrained weights: still far above SFT, and it keeps more facts than PPO
    # alone (here +0.11, +0.12, +0.19 per seed; seed 3, held out when the weight was chosen: +0.31)
    avg = next(p for p in greedy["paired"] if p["a"] == "SFT" and "averaging" in p["b"])
    assert avg["pooled_z"] > 3, avg
    facts = {row["stage"]: row["fact_accuracy"]["mean"] for row in greedy["stages"]}
    assert facts[avg["b"]] > facts[gain["b"]], facts
