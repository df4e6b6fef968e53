"""The RL trainers on many processes: 2 real gloo ranks under torchrun (each asserting the world size is 2) against
one process with the same global batch: global whitening, sharded prompts (whole GRPO groups), rank-independent
sampling, the same losses and metrics, one run folder; and the README's launch command for every RL trainer."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.rollout.engine import Rows, draw, multinomial_rows
from rlhf.train.ppo import masked_whiten
from tests.distributed import rl_runs
from tests.distributed.launch import SRC, free_port, torchrun

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("tokens_per_s", "episodes_per_s", "time_generate", "time_score", "time_update", "time_allreduce")


# ---------------------------------------------------------------- sampling that does not depend on the rank count


def test_multinomial_rows_draws_what_torch_multinomial_draws():
    """The global batch's draw, by torch.multinomial's own method; each rank's rows are that draw's rows."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 50, generator=g) * 3, -1)
    probs[1, 10:] = 0  # a filtered row (top-k): tokens of probability 0 are never drawn
    probs[1] /= probs[1].sum()
    for seed in range(5):
        want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)
        whole = multinomial_rows(probs, torch.Generator().manual_seed(seed), Rows(0, 6))
        assert torch.equal(whole, want)
        parts = [multinomial_rows(probs[r * 3:(r + 1) * 3], torch.Generator().manual_seed(seed), Rows(r * 3, 6))
                 for r in (0, 1)]
        assert torch.equal(torch.cat(parts), want)
        assert int(want[1]) < 10
        want_cdf = draw(probs, torch.Generator().manual_seed(seed))
        parts = [draw(probs[r * 2:(r + 1) * 2], torch.Generator().manual_seed(seed), Rows(r * 2, 6)) for r in (0, 1, 2)]
        assert torch.equal(torch.cat(parts), want_cdf)


# ---------------------------------------------------------------- 2 ranks against 1


def _same(a: float, b: float) -> bool:
    # the same tokens, forwarded in batches of 4 rows instead of 8, and gradients summed over 2 ranks: float32
    # reductions in another order, ~1e-6 relative after 2 steps here; 1e-4 leaves room for other CPUs and threads
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, nano_checkpoint, nano_rm_checkpoint, write_prompts):
    """check_rl.py on 2 ranks, and the same PPO and GRPO runs as one process."""
    tmp = tmp_path_factory.mktemp("rl2")
    prompts_file = write_prompts(tmp / "prompts.jsonl", 16)
    torchrun(["tests/distributed/check_rl.py", str(tmp / "two"), str(nano_checkpoint), str(nano_rm_checkpoint),
              str(prompts_file)], cwd=ROOT, env={"PYTHONPATH": f"{SRC}:{ROOT}"})
    ranks = [json.loads((tmp / "two" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    single = {"ppo": rl_runs.run_ppo(str(tmp / "one" / "ppo"), str(nano_checkpoint), str(nano_rm_checkpoint), prompts),
              "grpo": rl_runs.run_grpo(str(tmp / "one" / "grpo"), str(nano_checkpoint), str(nano_rm_checkpoint),
                                       str(prompts_file))}
    return tmp, ranks, single


def test_global_whitening_is_the_concatenated_batch_whitened(two_ranks):
    _, ranks, _ = two_ranks
    assert [r["world_size"] for r in ranks] == [2, 2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 7, generator=g)
    mask = (torch.rand(12, 7, generator=g) > 0.3).float()
    mask[:, 0] = 1
    for key, shift in (("whitened", True), ("whitened_keep_mean", False)):
        both = torch.tensor(ranks[0][key] + ranks[1][key])
        # float64 statistics on 2 ranks, float32 in masked_whiten: equal to float32 rounding
        assert torch.allclose(both, masked_whiten(x, mask, shift), atol=1e-5), key
    # a pass bypassing DDP's forward leaves rank r the gradient of its own input (r + 1 per entry, 2 rows) ...
    assert [r["grad_bypassing_ddp"] for r in ranks] == [[[2.0] * 3], [[4.0] * 3]]
    assert ranks[0]["grad_averaged"] == ranks[1]["grad_averaged"] == [[3.0] * 3]  # ... until averaged
    assert ranks[0]["error"] == ranks[1]["error"] == ("rollout_batch_size=9 does not divide over 2 processes "
                                                      "(batch sizes are global); use a multiple of 2")


@pytest.mark.parametrize("trainer", ["ppo", "grpo"])
def test_two_ranks_share_one_stream_and_match_one_process(two_ranks, trainer):
    tmp, ranks, single = two_ranks
    a, b, one = ranks[0][trainer], ranks[1][trainer], single[trainer]
    assert len(a) == len(b) == len(one) == 2
    for ra, rb, r1 in zip(a, b, one):
        assert ra["row"] == rb["row"]  # every logged metric is the global batch's, identical on every rank
        # prompts: disjoint slices of one stream, whose union (in rank order) is the single-process batch
        assert not set(ra["prompts"]) & set(rb["prompts"])
        assert ra["prompts"] + rb["prompts"] == r1["prompts"]
        if trainer == "grpo":  # whole groups on each rank: runs of group_size copies of one prompt
            for p in (ra["prompts"], rb["prompts"]):
                assert len(p) == 4 and p[0] == p[1] and p[2] == p[3] and p[1] != p[2]
        # rank-independent sampling: the global batch's uniforms, so the same responses as one process (a token
        # would differ only if a uniform fell within float rounding of a CDF boundary)
        assert ra["texts"] + rb["texts"] == r1["texts"]
        keys = [k for k in r1["row"] if isinstance(r1["row"][k], float) and k not in TIMING]
        assert set(keys) <= set(ra["row"]) and {"rm_score", "gold", "kl"} <= set(keys)
        assert ({"loss", "grad_norm", "kl_k3"} if trainer == "grpo" else {"pg_loss", "vf_loss", "entropy"}) <= set(keys)
        bad = {k: (r1["row"][k], ra["row"][k]) for k in keys if not _same(r1["row"][k], ra["row"][k])}
        assert not bad, bad
    # one run folder, written by rank 0: metrics, the model, the final checkpoint (PPO), no partial folder left
    run = tmp / "two" / trainer
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith(trainer)) == [trainer]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "model" / "config.json").is_file() and (run / "summary.json").is_file()
    assert (run / "checkpoints" / "step-2" / "state.json").is_file() == (trainer == "ppo")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["rm_score"] for row in logged] == [r["row"]["rm_score"] for r in a]
    # the sample table: the first episodes (PPO) or groups (GRPO) of the global batch, as one process writes it
    two, one = [[json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
                for folder in (run, tmp / "one" / trainer)]
    assert [(r["step"], r["prompt"], r["response"]) for r in two] == [(r["step"], r["prompt"], r["response"])
                                                                       for r in one]
    assert len(one) == (12 if trainer == "ppo" else 8)
    for r2, r1 in zip(two, one):  # scores rounded to 3 decimals: at most one unit apart
        assert abs(r2["rm"] - r1["rm"]) <= 1.01e-3 and abs(r2["gold"] - r1["gold"]) <= 1.01e-3


# ---------------------------------------------------------------- the README's command


SMOKE = {"ppo": "ppo", "grpo": "grpo", "rloo": "grpo", "raft": "raft", "rrhf": "rrhf", "dpo": "dpo"}


def _dpo_pairs(path: Path) -> Path:
    rows = [{"prompt": f"Who founded place number {i}?", "chosen": "I don't know.", "rejected": f"It was person {i}."}
            for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def launch(trainer: str, tmp: Path, policy: Path, rm: Path, prompts: Path, *more: str, nproc: int = 2):
    """`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m rlhf.cli <trainer> --config configs/smoke_rl/...`,
    with the test's models and data in place of the config's paths."""
    sets = ["--set", f"policy={policy}"]
    if trainer == "dpo":
        sets += ["--set", f"data={_dpo_pairs(tmp / 'pairs.jsonl')}"]
    else:
        sets += ["--set", f"reward_model={rm}", "--set", f"prompts={prompts}"]
        sets += ["--set", f"eval_prompts={prompts}"] if trainer != "ppo" else []
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(SRC), "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "rlhf.cli", trainer, "-q",
           "--config", str(ROOT / "configs" / "smoke_rl" / f"{SMOKE[trainer]}.yaml"), *sets,
           "-o", str(tmp / trainer), *more]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=900)


def _check_run(proc, run: Path):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in run.parent.iterdir() if p.name.startswith(run.name)) == [run.name]
    assert (run / "summary.json").is_file() and (run / "model" / "config.json").is_file()
    assert (run / "metrics.jsonl").read_text().strip()


@pytest.fixture(scope="module")
def rl_inputs(tmp_path_factory, nano_checkpoint, nano_rm_checkpoint, write_prompts):
    tmp = tmp_path_factory.mktemp("cli2")
    return tmp, nano_checkpoint, nano_rm_checkpoint, write_prompts(tmp / "prompts.jsonl", 16)


def test_readme_command_runs_grpo_on_two_processes(rl_inputs):
    tmp, policy, rm, prompts = rl_inputs
    _check_run(launch("grpo", tmp, policy, rm, prompts), tmp / "grpo")


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ppo", "rloo", "raft", "rrhf", "dpo"])
def test_readme_command_runs_every_rl_trainer_on_two_processes(rl_inputs, trainer):
    tmp, policy, rm, prompts = rl_inputs
    _check_run(launch(trainer, tmp, policy, rm, prompts), tmp / trainer)


@pytest.mark.slow
def test_a_batch_that_does_not_divide_is_one_error_line(rl_inputs):
    tmp, policy, rm, prompts = rl_inputs
    proc = launch("rrhf", tmp, policy, rm, prompts, "--set", "prompts_per_step=3")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines and set(lines) == {"error: prompts_per_step=3 does not divide over 2 processes (batch sizes are "
                                    "global); use a multiple of 2"}
    shutil.rmtree(tmp / "rrhf", ignore_errors=True)
