"""`sampling.backend` (engine | vllm) and the accelerate config files for GPU users.

vLLM and DeepSpeed do not run on a CPU-only machine: here `backend: vllm` must be one line naming the key,
the vLLM module's pure parts (its outputs in the engine's `Rollout` layout, the log-prob mismatch, the
truncated importance weights) are checked on numbers, the engine generator equals `engine.sample`, and the
shipped accelerate files parse with accelerate's own config loader and launch-argument validation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhf.errors import RLHFError
from rlhf.rollout.engine import SamplingConfig, sample, vllm_problem
from rlhf.rollout.vllm import logprob_mismatch, make_generator, to_rollout, truncated_is_weights

ROOT = Path(__file__).resolve().parents[1]
NO_VLLM = vllm_problem() is not None  # this machine: no CUDA GPU, no vllm


@pytest.mark.skipif(not NO_VLLM, reason="checks the error on machines that cannot run vLLM")
@pytest.mark.parametrize("cmd, key", [("pipeline", "ppo.sampling.backend"), ("grpo", "sampling.backend")])
def test_vllm_backend_without_a_gpu_is_one_line_naming_the_key(cli, tmp_path, cmd, key):
    res = cli.run(cmd, "--set", f"{key}=vllm", "-o", tmp_path / "run")
    assert res.returncode == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"error: {key}: 'vllm' needs a CUDA GPU") and "backend: engine" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not NO_VLLM, reason="checks the error on machines that cannot run vLLM")
@pytest.mark.parametrize("module, cls, key", [
    ("rlhf.stages", "PPOStage", "sampling.backend"), ("rlhf.train.grpo", "GRPOConfig", "sampling.backend"),
    ("rlhf.train.grpo", "RLOOConfig", "sampling.backend"), ("rlhf.train.raft", "RAFTConfig", "sampling.backend"),
    ("rlhf.eval.bon", "BestOfNConfig", "sampling.backend"),
    ("rlhf.feedback.simulate", "SimulateConfig", "sampling.backend"),
    ("rlhf.pipeline", "PipelineConfig", "labels.sampling.backend"),
    ("rlhf.pipeline", "PipelineConfig", "eval_sampling.backend")])
def test_every_sampling_method_takes_the_backend_key(module, cls, key):
    """PPO, GRPO/RLOO, RAFT, best-of-N and label generation read `backend`; `vllm` fails when read, here."""
    import importlib

    from rlhf.config import load_config

    config_cls = getattr(importlib.import_module(module), cls)
    assert load_config(config_cls, None, [f"{key}=engine"]) is not None
    with pytest.raises(RLHFError) as err:
        load_config(config_cls, None, [f"{key}=vllm"])
    assert str(err.value).startswith(f"{key}: 'vllm' needs a CUDA GPU")


def test_unknown_backend_names_the_key_and_the_choices():
    from rlhf.config import load_config
    from rlhf.pipeline import PipelineConfig

    with pytest.raises(RLHFError) as err:
        load_config(PipelineConfig, None, ["ppo.sampling.backend=sglang"])
    assert str(err.value) == "ppo.sampling.backend: expected one of engine, vllm, got 'sglang'"
    assert SamplingConfig().backend == "engine"


def test_an_unwired_call_never_samples_silently_with_the_engine():
    """A config that passed the check on a GPU machine but reaches the built-in engine is an error."""
    cfg = SamplingConfig(max_new_tokens=4)
    cfg.backend = "vllm"  # as if read on a GPU machine with vllm installed (set after the config's check)
    with pytest.raises(RLHFError, match="sampling.backend: 'vllm' is not wired into this sampling call"):
        sample(torch.nn.Linear(1, 1), [[1, 2]], cfg, eos_id=0, pad_id=0)


def test_engine_generator_samples_as_engine_sample(nano_checkpoint):
    from rlhf.models.lm import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(nano_checkpoint).eval(), load_tokenizer(nano_checkpoint)
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0)
    prompts = [[5, 6, 7], [8, 9]]
    gen = make_generator(cfg, model, tok)
    a = gen.sample(prompts, torch.Generator().manual_seed(3))
    b = sample(model, prompts, cfg, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(3))
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with gen.training(model):  # the engine samples from the live weights: nothing to free or load
        pass


def test_to_rollout_has_the_engine_layout():
    eos, pad = 2, 0
    roll = to_rollout([[5, 6, 7], [8]], [[11, 2, 12], [13, 14]], [[-0.5, -0.25, -3.0], [-1.0, -2.0]], eos, pad,
                      max_new_tokens=4)
    assert roll.prompt_ids.tolist() == [[5, 6, 7], [pad, pad, 8]]
    assert roll.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # EOS kept, what follows it dropped; the longest response sets the width
    assert roll.response_ids.tolist() == [[11, 2, pad], [13, 14, pad]]
    assert roll.response_mask.tolist() == [[1, 1, 0], [1, 1, 0]]
    assert roll.logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, 0.0]]
    assert roll.finished.tolist() == [True, False]
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        to_rollout([[1]], [[3, 4]], [[-1.0]], eos, pad, 4)


def test_logprob_mismatch_and_truncated_weights_on_known_numbers():
    sampler = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, 0.0]])
    trainer = torch.tensor([[-1.0, -1.5, 0.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    m = logprob_mismatch(sampler, trainer, mask)
    d = [0.0, 0.5, 0.0, -1.0]  # trainer - sampler on the four response tokens
    assert m["mismatch/abs_mean"] == pytest.approx(sum(map(abs, d)) / 4)
    assert m["mismatch/abs_max"] == pytest.approx(1.0)
    assert m["mismatch/mean"] == pytest.approx(sum(d) / 4)
    assert m["mismatch/ratio_max"] == pytest.approx(math.exp(0.5))
    assert m["mismatch/kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in d) / 4)
    same = logprob_mismatch(trainer, trainer, mask)
    assert same["mismatch/abs_max"] == 0 and same["mismatch/ratio_mean"] == 1 and same["mismatch/kl_k3"] == 0
    w = truncated_is_weights(sampler, trainer, mask, cap=1.5)
    assert w.flatten().tolist() == pytest.approx([1.0, 1.5, 0.0, 1.0, math.exp(-1.0), 0.0])
    assert logprob_mismatch(sampler, trainer, torch.zeros_like(mask)) == {}


ACCELERATE = {"ddp.yaml": ("MULTI_GPU", None), "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
              "deepspeed_zero3.yaml": ("DEEPSPEED", 3)}


@pytest.mark.parametrize("name", sorted(ACCELERATE))
def test_accelerate_config_files_parse_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ROOT / "configs" / "accelerate" / name
    kind, stage = ACCELERATE[name]
    cfg = load_config_from_file(str(path))  # unknown keys are an error there
    assert isinstance(cfg, ClusterConfig) and cfg.distributed_type == kind and cfg.num_processes == 8
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "rlhf.cli", "ppo"])
    _validate_launch_command(args)  # what `accelerate launch` does with the file before it starts anything
    assert args.num_processes == 8 and not args.cpu
    if stage is None:
        assert args.multi_gpu and not args.use_deepspeed
    else:
        assert args.use_deepspeed and int(args.zero_stage) == stage and args.mixed_precision == "bf16"
        assert cfg.deepspeed_config["zero3_init_flag"] is (stage == 3)
