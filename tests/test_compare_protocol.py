"""`rlhf study compare tune | test | protocol`: the declared search, the seed and prompt separation between tuning
and testing, the curve and over-optimization arithmetic on hand-made numbers, and a tiny protocol end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf.config import load_config
from rlhf.errors import RLHFError
from rlhf.studies import protocol
from rlhf.studies.compare import METHODS
from rlhf.studies.protocol import SEARCH, TRIALS, ProtocolConfig
from tests.conftest import TINY_WORLD

# a tiny world and nano models; GRPO 8 RM calls a step (x2 in its larger-group trials), PPO 8 a step
TINY = [f"pipeline.world.{k}={v}" for k, v in TINY_WORLD.items()] + [
    "pipeline.pretrain.steps=4", "pipeline.pretrain.batch_size=4", "pipeline.pretrain.seq_len=32",
    "pipeline.pretrain.vocab_size=384", "pipeline.pretrain.model.max_len=96", "pipeline.pretrain.eval_every=4",
    "pipeline.sft.epochs=0.5", "pipeline.labels.n_prompts=12", "pipeline.labels.k=3",
    "pipeline.labels.sampling.max_new_tokens=8", "pipeline.reward.batch_size=4", "pipeline.best_of_n=2",
    "pipeline.eval_sampling.max_new_tokens=8", "grpo.prompts_per_step=4", "grpo.group_size=2",
    "grpo.micro_batch_prompts=4", "grpo.sampling.max_new_tokens=8", "dpo.batch_size=4", "ppo.rollout_batch_size=8",
    "ppo.minibatch_size=8", "ppo.micro_batch_size=8", "ppo.sampling.max_new_tokens=8", "ppo.ptx_batch_size=4",
    "valid_prompts=6", "points=2"]


def tiny_config(out: Path, *overrides: str) -> ProtocolConfig:
    cfg = load_config(ProtocolConfig, None, [*TINY, *overrides, "budget=32", "tune_budget=16"])
    cfg.out = str(out)
    return cfg


def test_every_method_has_the_same_number_of_declared_trials():
    cfg = ProtocolConfig()
    assert set(SEARCH) == set(METHODS)
    for key in METHODS:
        rows = protocol.trials(cfg, key)
        assert len(rows) == TRIALS, key
        assert all(f == 1 for f in rows[0]["factors"].values()), key  # trial 0: the configured defaults
        assert len({json.dumps(r["settings"], sort_keys=True) for r in rows}) == TRIALS, key  # all different
        space = SEARCH[key]
        if len(space) in (2, 3):  # two levels per key: each level in half of the trials, each pair once
            for k in space:
                assert sorted(r["factors"][k] for r in rows) == sorted(space[k] * 2), (key, k)
            keys = list(space)
            for a in range(len(keys)):
                for b in range(a + 1, len(keys)):
                    pairs = {(r["factors"][keys[a]], r["factors"][keys[b]]) for r in rows}
                    assert len(pairs) == 4, (key, keys[a], keys[b])
    ptx = {r["trial"]: r["settings"] for r in protocol.trials(cfg, "ppo-ptx")}
    assert ptx[0] == {"ppo.kl.beta": 0.1, "ppo.optim.lr": 5e-05, "ptx_coef": 2.0}
    assert ptx[3] == {"ppo.kl.beta": 0.05, "ppo.optim.lr": 1e-4, "ptx_coef": 2.0}
    assert protocol.trials(cfg, "grpo")[1]["settings"]["grpo.group_size"] == 4  # integers stay integers
    assert protocol.trials(cfg, "grpo")[3]["settings"]["grpo.group_size"] == 8
    # every trial fits the default budget points: budget 2560 in 5 points of 512, tuning at 1024 calls
    assert protocol.budget_points(cfg) == [512, 1024, 1536, 2048, 2560]
    cfg.validate()


def test_tune_and_test_seeds_must_be_disjoint(tmp_path, cli):
    with pytest.raises(RLHFError, match="share seed 1: the test seeds must take no part in tuning"):
        ProtocolConfig(seeds=[0, 1, 2], tune_seeds=[1, 7]).validate()
    # the test step refuses a choice made on one of its seeds
    cfg = ProtocolConfig(out=str(tmp_path), seeds=[3, 4], tune_seeds=[5])
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "choice.yaml").write_text(yaml.safe_dump({"tune_seeds": [4, 5], "methods": {
        k: {"settings": {}} for k in METHODS}}))
    with pytest.raises(RLHFError, match="tuned on seed 4, which is a test seed now"):
        protocol.read_choice(cfg)
    res = cli.run("study", "compare", "protocol", "--tune-seeds", "0,9", "--test-seeds", "0,1,2", "-o", tmp_path / "p")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "share seed 0" in res.stderr, res.stderr
    res = cli.run("study", "compare", "tune", "--tune-seeds", "x", "-o", tmp_path / "p")
    assert res.returncode == 2 and "--tune-seeds: expected comma-separated" in res.stderr, res.stderr
    res = cli.run("study", "compare", "test", "-o", tmp_path / "nothing")
    assert res.returncode == 2 and "cannot read the tuning choice" in res.stderr, res.stderr
    assert not (tmp_path / "p").exists()


def test_tuning_reads_validation_prompts_never_test_prompts(tmp_path, monkeypatch):
    """The tuning step asks the world for its training and validation prompts only, every prompt it evaluates
    on is a validation prompt (none a test prompt), and the choice is the trial with the best score."""
    from rlhf.studies import compare
    from rlhf.world import World

    cfg = tiny_config(tmp_path / "p", "methods=[grpo,bon]", "tune_seeds=[3]", "seeds=[0]")
    protocol.set_draw(cfg, cfg.draw)
    inputs = protocol._inputs(cfg, 3, False)  # built before the watch: the pipeline's own tables read test prompts
    world = World(inputs["world"])
    test_prompts = {p["prompt"] for p in world.prompts("eval")}
    valid_prompts = {p["prompt"] for p in world.prompts("valid", cfg.valid_prompts)}

    asked, evaluated, depth = [], [], [0]
    original = World.prompts

    def watched(self, split, n=None):
        if depth[0] == 0:
            asked.append(split)
        depth[0] += 1  # World.prompts("valid") reads the test split itself, to keep its prompts out of it
        try:
            return original(self, split, n)
        finally:
            depth[0] -= 1

    def watched_evaluate(model, tokenizer, w, prompts, *args):
        evaluated.extend(p["prompt"] for p in prompts)
        return evaluate(model, tokenizer, w, prompts, *args)

    def watched_bon(c, s, ns):
        evaluated.extend(p["prompt"] for p in s.prompts)
        return best_of_n(c, s, ns)

    evaluate, best_of_n = compare._evaluate, protocol._best_of_n
    monkeypatch.setattr(World, "prompts", watched)
    monkeypatch.setattr(compare, "_evaluate", watched_evaluate)
    monkeypatch.setattr(protocol, "_best_of_n", watched_bon)
    choice = protocol.tune(cfg, show_progress=False)
    monkeypatch.undo()

    assert set(asked) == {"train", "valid"}, asked
    assert evaluated and set(evaluated) <= valid_prompts and not set(evaluated) & test_prompts
    written = yaml.safe_load((tmp_path / "p" / "tune" / "choice.yaml").read_text())
    assert written == choice and written["tune_seeds"] == [3] and written["test_seeds"] == [0]
    for key in ("grpo", "bon"):
        m = written["methods"][key]
        assert m["space"] == SEARCH[key] and len(m["trials"]) == TRIALS
        scores = [t["score"] for t in m["trials"]]
        assert all(isinstance(s, float) for s in scores)
        assert m["chosen"] == scores.index(max(scores)) and m["settings"] == m["trials"][m["chosen"]]["settings"]
        for t in m["trials"]:  # the score is the mean of the greedy and the sampled validation gold
            (r,) = t["per_seed"]
            assert t["score"] == pytest.approx((r["greedy_gold"] + r["sampled_gold"]) / 2)
    # a rerun reuses every finished trial
    again = protocol.tune(cfg, show_progress=False)
    assert again["methods"] == choice["methods"]


def _pt(budget, gold, rm, kl, cpu, rm_calls=None):
    return {"budget": budget, "rm_calls": budget if rm_calls is None else rm_calls, "labels": 0,
            "train_cpu_seconds": cpu, "train_seconds": cpu * 2,
            "greedy": {"gold_mean": gold, "gold_se": 0.05, "rm_score": rm, "kl_to_sft": kl},
            "sampled": {"gold_mean": gold - 0.1, "gold_se": 0.05, "rm_score": rm, "kl_to_sft": kl}}


def test_curves_and_the_over_optimization_point_on_hand_made_numbers():
    curves = {
        "sft": {0: {"points": [_pt(0, 0.1, 0.0, 0.0, 0.0)], "seconds": 1},
                1: {"points": [_pt(0, 0.0, 0.0, 0.0, 0.0)], "seconds": 1}},
        # gold rises then falls while the RM score keeps rising: over-optimized after 200 calls
        "ppo": {0: {"points": [_pt(100, 0.3, 0.5, 1.0, 10), _pt(200, 0.5, 1.0, 2.0, 20), _pt(300, 0.2, 2.0, 3.0, 30)],
                    "seconds": 40},
                1: {"points": [_pt(100, 0.1, 0.3, 1.0, 12), _pt(200, 0.3, 0.8, 2.0, 24), _pt(300, 0.2, 1.5, 3.0, 36)],
                    "seconds": 50}},
        # gold and RM score fall together: not over-optimization by the definition
        "grpo": {0: {"points": [_pt(100, 0.2, 0.5, 0.1, 5), _pt(200, 0.1, 0.4, 0.2, 10), _pt(300, 0.1, 0.3, 0.3, 15)],
                     "seconds": 20},
                 1: {"points": [_pt(100, 0.2, 0.5, 0.1, 5), _pt(200, 0.1, 0.4, 0.2, 10), _pt(300, 0.1, 0.3, 0.3, 15)],
                     "seconds": 20}},
    }
    rows = protocol.curve_rows(curves, {0: 0.1, 1: 0.0})
    ppo = [r for r in rows if r["method"] == "PPO"]
    assert [r["budget"] for r in ppo] == [100, 200, 300]
    assert ppo[1]["gold"] == pytest.approx({"mean": 0.4, "se": 0.1, "min": 0.3, "max": 0.5})
    assert ppo[2]["cpu_seconds"]["mean"] == pytest.approx(33.0)
    # gold gained over SFT per CPU-second, per seed then averaged: (0.5 - 0.1) / 20 and (0.3 - 0.0) / 24
    assert ppo[1]["gain_per_cpu_s"] == pytest.approx((0.4 / 20 + 0.3 / 24) / 2, abs=1e-6)
    over = {r["method"]: r for r in protocol.overoptimization(rows, curves)}
    assert over["PPO"]["over-optimization"].startswith("after 200 RM calls: gold +0.400 -> +0.200 at 300")
    assert over["PPO"]["highest gold"] == "+0.400 at 200 RM calls"
    assert over["GRPO"]["over-optimization"] == "none within the budget"
    # gold falls on one seed only: within the spread, not over-optimization
    one_seed = json.loads(json.dumps(curves), object_hook=lambda d: {int(k) if k.isdigit() else k: v
                                                                     for k, v in d.items()})
    one_seed["ppo"][1]["points"][2]["greedy"]["gold_mean"] = 0.35
    over = {r["method"]: r for r in protocol.overoptimization(protocol.curve_rows(one_seed, {0: 0.1, 1: 0.0}),
                                                               one_seed)}
    assert over["PPO"]["over-optimization"] == "none within the budget"

    result = protocol.final_tables(curves, [0, 1])
    paired = {p["b"]: p for p in result["greedy"]["paired"]}
    # the table is the last point: PPO - SFT per seed 0.2 - 0.1 and 0.2 - 0.0
    assert [r["diff"] for r in paired["PPO"]["per_seed"]] == pytest.approx([0.1, 0.2])
    table = {r["method"]: r for r in protocol.headline(result["greedy"])}
    assert table["PPO"]["gold - SFT"] == "+0.150 ± 0.050" and table["PPO"]["seeds better"] == "2 of 2"
    assert table["PPO"]["verdict"] == "beats SFT" and table["SFT"]["verdict"] == "baseline"


def test_draw_reaches_every_sampler():
    cfg = ProtocolConfig()
    protocol.set_draw(cfg, "multinomial")
    for s in (cfg.pipeline.labels.sampling, cfg.pipeline.eval_sampling, cfg.ppo.sampling, cfg.grpo.sampling,
              cfg.rloo.sampling, cfg.raft.sampling, cfg.rrhf.sampling, cfg.dpo.kl_sampling):
        assert s.draw == "multinomial"


@pytest.mark.slow  # about two minutes on the shared 2-core machine
def test_protocol_end_to_end_on_a_tiny_world(cli, tmp_path):
    out = tmp_path / "p"
    sets = [x for s in TINY for x in ("--set", s)]
    args = ("study", "compare", "protocol", "--tune-seeds", "5", "--test-seeds", "0,1", "--methods",
            "ppo-ptx,dpo,bon,grpo", "--budget", "32", "--tune-budget", "16", *sets, "-q", "-o", out)
    res = cli.run(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "tuning seeds: 5; test seeds: 0, 1" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tune_seeds"] == [5] and summary["test_seeds"] == [0, 1] and summary["points"] == [16, 32]
    rows = {(r["method"], r["point"]): r for r in summary["curve"]}
    for m in ("PPO-ptx", "GRPO"):
        assert [rows[(m, i)]["rm_calls"]["mean"] for i in (1, 2)] == [16, 32]
        assert rows[(m, 1)]["cpu_seconds"]["mean"] < rows[(m, 2)]["cpu_seconds"]["mean"]
    assert rows[("DPO", 1)]["labels"]["mean"] < rows[("DPO", 2)]["labels"]["mean"]
    assert {r["stage"] for r in summary["greedy"]["stages"]} == {"SFT", "PPO-ptx", "DPO", "best-of-N", "GRPO"}
    # the table's gold is the last budget point's, seed by seed
    curve = json.loads((out / "test" / "seed-1" / "grpo" / "curve.json").read_text())
    per_seed = {(r["stage"], r["seed"]): r for r in summary["greedy"]["per_seed"]}
    assert per_seed[("GRPO", 1)]["gold_mean"] == pytest.approx(curve["points"][-1]["greedy"]["gold_mean"], abs=1e-4)
    for f in ("plots/budget_curves.png", "plots/gold_vs_cpu.png", "plots/gold_by_method.png", "report.html",
              "tune/choice.yaml", "inputs/seed-5/pipeline/summary.json", "test/seed-0/ppo-ptx/model/config.json"):
        assert (out / f).exists(), f
    assert not (out / "test" / "seed-0" / "ppo-ptx" / "checkpoints").exists()
    md = (out / "summary.md").read_text()
    assert "tuning seeds 5, test seeds 0, 1 (disjoint" in md and "over-optimization per method" in md

    again = cli.run(*args)  # every trial and test run is reused
    assert again.returncode == 0, again.stderr[-2000:]
    assert "GRPO finished in" in again.stdout + again.stderr
    assert json.loads((out / "summary.json").read_text())["greedy"] == summary["greedy"]


def test_compare_is_a_group_that_still_runs_the_single_budget_study():
    import typer

    from rlhf.cli import app

    group = typer.main.get_command(app).commands["study"].commands["compare"]
    assert set(group.commands) == {"tune", "test", "protocol"}
    assert group.invoke_without_command  # `rlhf study compare --seeds ...` runs the single-budget comparison
