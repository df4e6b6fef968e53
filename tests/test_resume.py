"""Exact resume: a run interrupted at a checkpoint and resumed ends with the same weights and logs the same
metrics as the run that was never interrupted. The supervised trainers resume in process (PPO's in-process
resume is in test_ppo.py); DPO, GRPO, RLOO, RAFT and RRHF are killed for real (SIGKILL to the `rlhf`
process once a checkpoint is on disk) and resumed through the CLI, to weights bit-identical to an
uninterrupted run (both runs: one process, one thread, the same operations on the same shapes).

Each trainer runs a few steps of a nano model on the tiny world, a checkpoint after every step.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import _cli_env
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
    resumed = pretrain.run(pretrain.PretrainConfig(out=str(tmp_path / "resumed"),
                                                   resume=str(full / "checkpoints/step-2"),
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
    rows = [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 3)),
             "rejected": " ".join(rng.sample(words, 5))}
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


# ---------------------------------------------------------------- kill -9 and resume through the CLI


def start_and_kill(args: list, out: Path, log: Path, timeout: float = 240) -> Path:
    """Run `rlhf *args -o out` in a subprocess and SIGKILL it as soon as a checkpoint is complete on disk
    (state.json is written last); returns the latest complete checkpoint of the killed run."""
    with open(log, "w") as err:
        cmd = [sys.executable, "-c", "from rlhf.cli import main; main()", *map(str, args), "-o", str(out)]
        proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=err)
    partial = out.with_name(f"{out.name}.partial-{proc.pid}")  # the run directory until the run succeeds
    deadline = time.time() + timeout
    while not list(partial.glob("checkpoints/step-*/state.json")):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint before the run ended (exit {proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed: give it more steps"
    assert not out.exists()  # killed runs never reach their final directory
    done = sorted(partial.glob("checkpoints/step-*/state.json"), key=lambda f: int(f.parent.name[5:]))
    return done[-1].parent


def identical_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), (k, (wa[k] - wb[k]).abs().max())


@pytest.fixture(scope="module")
def pairs_file(tiny_world, tmp_path_factory) -> Path:
    rng = random.Random(0)
    words = " ".join(tiny_world.corpus()).split()
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, [{"prompt": p["prompt"], "chosen": " ".join(rng.sample(words, 3)),
                        "rejected": " ".join(rng.sample(words, 5))} for p in tiny_world.prompts("train")[:16]])
    return path


def logged(run: Path) -> dict[int, dict]:
    """step -> every metric logged at that step (training and held-out rows merged), throughput aside."""
    out: dict[int, dict] = {}
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        out.setdefault(row["step"], {}).update({k: v for k, v in row.items() if not k.endswith("_per_s")})
    return out


def _sets(**kw) -> list[str]:
    return [x for k, v in kw.items() for x in ("--set", f"{k}={v}")]


GROUP = dict(no_eos_score="null", eval_prompts="null", save_every=1, **{"sampling.max_new_tokens": 6})
KILL_RUNS = {  # command -> its settings: a few steps, a checkpoint after each
    "dpo": dict(batch_size=2, epochs=1.0, max_len=48, kl_prompts=0, eval_fraction=0.25, save_every=1),
    "grpo": dict(GROUP, steps=6, prompts_per_step=2, group_size=2, micro_batch_prompts=1, epochs=2, n_eval_prompts=2),
    "rloo": dict(GROUP, steps=6, prompts_per_step=2, group_size=2, micro_batch_prompts=2),
    "raft": dict(GROUP, iterations=5, prompts_per_iteration=2, k=2, keep_fraction=0.5, sample_batch_prompts=2,
                 batch_size=1),
    "rrhf": dict(GROUP, steps=6, prompts_per_step=2, k=2),
}


@pytest.mark.parametrize("command", list(KILL_RUNS))
def test_killed_run_resumes_to_identical_weights(command, nano_checkpoint, nano_rm_checkpoint, pairs_file,
                                                 write_prompts,
                                                 tmp_path, cli):
    prompts = write_prompts(tmp_path / "p.jsonl", 8)
    if command == "dpo":
        data = dict(policy=nano_checkpoint, data=pairs_file)
    else:
        data = dict(policy=nano_checkpoint, reward_model=nano_rm_checkpoint, prompts=prompts)
    if command == "grpo":  # held-out KL before the first step: its row must survive the kill into the summary
        data["eval_prompts"] = prompts
    args = [command, "-q", *_sets(**{**KILL_RUNS[command], **data})]
    full = cli.start(*args, "-o", tmp_path / "full")  # the uninterrupted run, beside the one that is killed
    checkpoint = start_and_kill(args, tmp_path / "killed", tmp_path / "killed.log")
    r = cli.run(*args, "--set", f"resume={checkpoint}", "-o", tmp_path / "resumed")
    assert r.returncode == 0, r.stderr
    r = full.result()
    assert r.returncode == 0, r.stderr
    identical_weights(tmp_path / "full" / "model", tmp_path / "resumed" / "model")
    # a guard: the steps after the checkpoint moved the weights, so equal weights are not trivially equal
    w0 = load_file(str(checkpoint / "policy" / "model.safetensors"))
    w1 = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # the resumed run logged the remaining steps with the same metrics (throughput aside)
    step = int(checkpoint.name[5:])
    a, b = logged(tmp_path / "full"), logged(tmp_path / "resumed")
    assert sorted(b) == [s for s in sorted(a) if s > step]
    for s in b:
        assert b[s] == a[s], s
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("full", "resumed"))
    assert sa.get("heldout") == sb.get("heldout") and sa.get("iterations") == sb.get("iterations")
