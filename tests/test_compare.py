"""`rlhf study compare`: the aggregation on hand-made numbers, the matched budget, and a smoke-size run end to end
(tiny world, 2 methods, 2 seeds) that is reused when rerun."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf.errors import RLHFError
from rlhf.studies.compare import CompareConfig, METHODS, aggregate, method_config, parse_methods, rm_calls, table_rows
from tests.conftest import TINY_WORLD


def _row(stage, gold, se, kl, halluc, fact, secs):
    return {"stage": stage, "gold_mean": gold, "gold_se": se, "rm_score": gold + 1, "kl_to_sft": kl,
            "hallucination_rate": halluc, "fact_accuracy": fact, "train_seconds": secs}


# three hand-made seeds: (gold, gold_se, KL, hallucination rate, fact accuracy, seconds)
PER_SEED = [
    {"greedy": [_row("SFT", 0.1, 0.06, 0.0, 0.3, 0.3, 5), _row("GRPO", 0.4, 0.08, 1.0, 0.1, 0.5, 50),
                _row("DPO", 0.0, 0.06, 2.0, 0.5, 0.3, 20)], "seconds": {"SFT": 5, "GRPO": 60, "DPO": 25}},
    {"greedy": [_row("SFT", 0.0, 0.06, 0.0, 0.4, 0.4, 6), _row("GRPO", 0.2, 0.08, 2.0, 0.2, 0.4, 70),
                _row("DPO", 0.1, 0.06, 3.0, 0.3, 0.4, 22)], "seconds": {"SFT": 6, "GRPO": 80, "DPO": 27}},
    {"greedy": [_row("SFT", 0.2, 0.06, 0.0, 0.2, 0.4, 7), _row("GRPO", 0.3, 0.08, 3.0, 0.0, 0.6, 60),
                _row("DPO", 0.1, 0.06, 4.0, 0.2, 0.4, 21)], "seconds": {"SFT": 7, "GRPO": 70, "DPO": 26}},
]


def test_aggregate_on_hand_made_numbers():
    out = aggregate(PER_SEED, [0, 1, 2])
    assert "sampled" not in out and "targets" not in out["greedy"]
    g = out["greedy"]
    rows = {r["stage"]: r for r in g["stages"]}
    assert list(rows) == ["SFT", "GRPO", "DPO"]
    # GRPO gold 0.4, 0.2, 0.3: mean 0.3, sample sd 0.1, SE 0.1 / sqrt(3)
    assert rows["GRPO"]["gold_mean"] == pytest.approx({"mean": 0.3, "min": 0.2, "max": 0.4, "se": 0.0577}, abs=1e-4)
    assert rows["GRPO"]["kl_to_sft"] == pytest.approx({"mean": 2.0, "min": 1.0, "max": 3.0, "se": 0.5774}, abs=1e-4)
    assert rows["DPO"]["train_seconds"]["mean"] == pytest.approx(21.0)
    paired = {p["b"]: p for p in g["paired"]}
    assert set(paired) == {"GRPO", "DPO"} and all(p["a"] == "SFT" for p in g["paired"])
    # GRPO - SFT per seed: 0.3, 0.2, 0.1 -> mean 0.2, SE 0.1 / sqrt(3); positive in all three
    p = paired["GRPO"]
    assert [r["diff"] for r in p["per_seed"]] == pytest.approx([0.3, 0.2, 0.1])
    assert (p["mean"], p["se_seeds"], p["beats"]) == (pytest.approx(0.2), pytest.approx(0.0577, abs=1e-4), "3 of 3")
    assert p["pooled_se"] == pytest.approx(math.sqrt(3 * (0.06 ** 2 + 0.08 ** 2)) / 3, abs=1e-4)
    # DPO - SFT: -0.1, +0.1, -0.1: mean -0.033, neither better nor worse in every seed
    assert paired["DPO"]["mean"] == pytest.approx(-0.0333, abs=1e-4)
    assert [rows[s]["verdict"] for s in rows] == ["baseline", "beats SFT", "does not beat SFT"]
    assert [r["total"] for r in out["seconds"]] == [90, 113, 103]

    table = {r["method"]: r for r in table_rows(g)}
    assert table["GRPO"]["gold"] == "0.300 ± 0.058 [0.200, 0.400]"
    assert table["GRPO"]["gold - SFT (paired)"] == "+0.200 ± 0.058" and table["GRPO"]["positive seeds"] == "3 of 3"
    assert table["DPO"]["verdict"] == "does not beat SFT" and table["SFT"]["gold - SFT (paired)"] == ""
    assert table["GRPO"]["seconds"] == "60.0 ± 5.8 [50.0, 70.0]"

    worse = json.loads(json.dumps(PER_SEED))
    for s in worse:
        s["greedy"][1]["gold_mean"] = -1.0
    assert {r["stage"]: r["verdict"] for r in aggregate(worse,
                                                        [0, 1, 2])["greedy"]["stages"]}["GRPO"] == "worse than SFT"


def test_every_method_spends_the_same_reward_model_calls():
    cfg = CompareConfig(budget=1024)
    inputs = {"sft": "s", "rm": "r", "labels": "l", "world": cfg.pipeline.world}
    for key in METHODS:
        if key == "bon":
            continue
        c = method_config(cfg, key, 0, inputs, Path("o"))
        assert rm_calls(key, c) == (0 if key == "dpo" else 1024), key
        assert c.seed == 0 and c.policy == "s"
    assert method_config(cfg, "ppo-ptx", 0, inputs, Path("o")).ptx_coef == 2.0
    assert method_config(cfg, "ppo", 0, inputs, Path("o")).ptx_coef == 0.0
    with pytest.raises(RLHFError, match="less than one step of RAFT"):
        CompareConfig(budget=100, methods=["raft"]).validate()
    with pytest.raises(RLHFError, match="unknown method 'ppx'"):
        parse_methods("ppo,ppx")


SMOKE = [x for k, v in TINY_WORLD.items() for x in ("--set", f"pipeline.world.{k}={v}")] + [
    "--set", "pipeline.pretrain.steps=4", "--set", "pipeline.pretrain.batch_size=4", "--set",
    "pipeline.pretrain.seq_len=32",
    "--set", "pipeline.pretrain.vocab_size=384", "--set", "pipeline.pretrain.model.max_len=96",
    "--set", "pipeline.pretrain.eval_every=4", "--set", "pipeline.sft.epochs=0.5", "--set",
    "pipeline.labels.n_prompts=12",
    "--set", "pipeline.labels.k=3", "--set", "pipeline.labels.sampling.max_new_tokens=8",
    "--set", "pipeline.reward.batch_size=4", "--set", "pipeline.best_of_n=2", "--set",
    "pipeline.eval_sampling.max_new_tokens=8",
    "--set", "grpo.prompts_per_step=4", "--set", "grpo.group_size=2", "--set", "grpo.micro_batch_prompts=4",
    "--set", "grpo.sampling.max_new_tokens=8", "--set", "dpo.batch_size=4", "-q",
]


@pytest.mark.slow  # about a minute on the shared 2-core machine
def test_compare_smoke_runs_end_to_end_and_reuses_finished_runs(cli, tmp_path):
    out = tmp_path / "cmp"
    res = cli.run("study", "compare", "--seeds", "0,1", "--methods", "grpo,dpo", "--budget", "16", *SMOKE, "-o", out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    for name in ("greedy", "sampled"):
        rows = {r["stage"]: r for r in summary[name]["stages"]}
        assert list(rows) == ["SFT", "GRPO", "DPO"] and all(r["n_seeds"] == 2 for r in rows.values())
        assert rows["SFT"]["kl_to_sft"]["mean"] == pytest.approx(0.0, abs=1e-5)
        per_seed = {(r["stage"], r["seed"]): r for r in summary[name]["per_seed"]}
        # the table's mean is the mean of the two seeds' own numbers
        for stage in rows:
            golds = [per_seed[(stage, s)]["gold_mean"] for s in (0, 1)]
            assert rows[stage]["gold_mean"]["mean"] == pytest.approx(sum(golds) / 2, abs=1e-3)
            assert rows[stage]["verdict"] in ("baseline", "beats SFT", "does not beat SFT", "worse than SFT")
        assert {p["b"] for p in summary[name]["paired"]} == {"GRPO", "DPO"}
    assert summary["rm_calls"] == [{"seed": s, "SFT": 0, "GRPO": 16, "DPO": 0} for s in (0, 1)]
    for sub in ("seed-0/pipeline/sft/model/config.json", "seed-1/grpo/model/config.json", "seed-1/dpo/compare.json",
                "plots/gold_by_method.png", "plots/gold_vs_kl.png", "summary.md", "report.html"):
        assert (out / sub).exists(), sub
    md = (out / "summary.md").read_text()
    assert "16 reward-model calls per method" in md and "gold - SFT (paired)" in md

    again = cli.run("study", "compare", "--seeds", "0,1", "--methods", "grpo,dpo", "--budget", "16", *SMOKE, "-o", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "GRPO finished in" in again.stdout + again.stderr
    assert json.loads((out / "summary.json").read_text())["greedy"] == summary["greedy"]

    other = cli.run("study", "compare", "--seeds", "0", "--methods", "grpo", "--budget", "32", *SMOKE, "-o", out)
    assert other.returncode == 2 and "finished with other settings (settings.steps" in other.stderr
    assert "Traceback" not in other.stderr
    assert (out / "seed-1" / "grpo" / "compare.json").exists()  # nothing was lost


def test_bad_input_is_one_line(cli, tmp_path):
    (tmp_path / "study" / "seed-0" / "sft" / "model").mkdir(parents=True)
    res = cli.run("study", "compare", "--seeds", "0", "--methods", "grpo", "--from", tmp_path / "study", "-q", "-o",
                  tmp_path / "c")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "missing reward/model" in res.stderr, res.stderr
    res = cli.run("study", "compare", "--methods", "ppo,ppx", "-o", tmp_path / "c")
    assert res.returncode == 2 and "unknown method 'ppx'" in res.stderr and "Traceback" not in res.stderr
    res = cli.run("study", "compare", "--seeds", "0,0", "-o", tmp_path / "c")
    assert res.returncode == 2 and "seed 0 is given twice" in res.stderr
    assert not (tmp_path / "c").exists()
