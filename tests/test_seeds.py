"""`rlhf study seeds`: the aggregation on hand-made per-seed numbers, resuming, and same seed = same tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rlhf.errors import RLHFError
from rlhf.studies.seeds import aggregate, parse_seeds
from tests.test_pipeline import SMOKE

PPO = "PPO-ptx (ptx_coef 2)"


def _row(stage, gold, se, halluc, fact):
    return {"stage": stage, "gold_mean": gold, "gold_se": se, "fact_accuracy": fact, "hallucination_rate": halluc}


def _summary(pre, sft, ppo, seconds, ppo_kl):
    table = [_row("pretrained", *pre), _row("SFT", *sft), _row(PPO, *ppo)]
    return {"table": table, "sampled_table": [],
            "stages": {"reward": {"eval_pairwise_accuracy": 0.75}, "ppo": {"kl": ppo_kl, "stopped": "no"}},
            "seconds": seconds}


# three hand-made seeds: (gold, gold_se, hallucination rate, fact accuracy) per stage
SUMMARIES = [
    _summary((-0.6, 0.07, 1.0, 0.8), (0.1, 0.06, 0.3, 0.3), (0.4, 0.08, 0.1, 0.7), {"pretrain": 100, "ppo": 200}, 1.5),
    _summary((-0.7, 0.07, 1.0, 0.8), (0.0, 0.06, 0.4, 0.4), (-0.1, 0.08, 0.0, 0.1), {"pretrain": 100, "ppo": 550}, 5.2),
    _summary((-0.5, 0.07, 1.0, 0.9), (0.2, 0.06, 0.2, 0.4), (0.5, 0.08, 0.2, 0.9), {"pretrain": 90, "ppo": 210}, 2.0),
]


def test_aggregate_on_hand_made_numbers():
    out = aggregate(SUMMARIES, seeds=[0, 1, 7])
    g = out["greedy"]
    assert "sampled" not in out  # no sampled tables given
    stages = {row["stage"]: row for row in g["stages"]}
    assert list(stages) == ["pretrained", "SFT", PPO] and stages["SFT"]["n_seeds"] == 3
    # SFT gold 0.1, 0.0, 0.2: mean 0.1, sample sd 0.1, SE 0.1 / sqrt(3)
    assert stages["SFT"]["gold_mean"] == pytest.approx({"mean": 0.1, "min": 0.0, "max": 0.2, "se": 0.0577}, abs=1e-4)
    # PPO fact accuracy 0.7, 0.1, 0.9: mean 0.5667, deviations .1333 -.4667 .3333 -> SE sqrt(.3467 / 2 / 3) = 0.2404
    assert stages[PPO]["fact_accuracy"] == pytest.approx({"mean": 0.5667, "min": 0.1, "max": 0.9, "se": 0.2404},
                                                         abs=1e-4)
    assert "gold_se" not in stages[PPO]  # a within-seed SE is not averaged as if it were a metric
    assert ([(r["stage"], r["seed"]) for r in g["per_seed"]][:3]
            == [("pretrained", 0), ("pretrained", 1), ("pretrained", 7)])

    paired = {p["comparison"]: p for p in g["paired"]}
    assert list(paired) == ["SFT - pretrained", f"{PPO} - SFT"]
    p = paired[f"{PPO} - SFT"]
    # differences 0.3, -0.1, 0.3: mean 1/6; deviations 2/15, -4/15, 2/15 -> SE sqrt(0.10667 / 2 / 3) = 0.1333; t = 1.25
    assert [r["diff"] for r in p["per_seed"]] == pytest.approx([0.3, -0.1, 0.3])
    assert (p["mean"], p["se_seeds"], p["t"]) == pytest.approx((0.1667, 0.1333, 1.25), abs=1e-4)
    assert p["positive_seeds"] == 2 and p["beats"] == "2 of 3"
    # pooled over prompts: each seed's difference has SE sqrt(.06^2 + .08^2) = 0.1; mean of 3 -> sqrt(3 * .01) / 3
    assert [r["se"] for r in p["per_seed"]] == pytest.approx([0.1] * 3)
    assert p["pooled_se"] == pytest.approx(math.sqrt(0.03) / 3, abs=1e-4)
    assert p["pooled_z"] == pytest.approx(2.89, abs=0.01)
    assert p["per_seed"][1]["hallucination_rate_a"] == 0.4 and p["per_seed"][1]["hallucination_rate_b"] == 0.0
    q = paired["SFT - pretrained"]  # 0.7 in every seed: no spread, so no t
    assert (q["mean"], q["se_seeds"], q["t"], q["beats"]) == (0.7, 0.0, None, "3 of 3")
    assert q["pooled_se"] == pytest.approx(math.sqrt(3 * (0.07 ** 2 + 0.06 ** 2)) / 3, abs=1e-4)

    met = [t["met"] for t in out["targets"]]
    # beats in 2 of 3 (no); pooled z 2.89 (no); hallucination 0.3 -> 0.1 = 67% down (yes); above SFT's on
    # no seed (0.1 < 0.3, 0.0 < 0.4, 0.2 = 0.2: yes); fact accuracy 0.833 -> 0.567, gap -0.267 (no); slowest
    # seed 650 s > 600 s (no)
    assert met == [False, False, True, True, False, False], out["targets"]
    assert "67% down" in out["targets"][2]["value"] and "1: 100%" in out["targets"][2]["value"]
    assert out["targets"][3]["value"] == "at or below on all 3 seeds"
    assert "gap -0.267" in out["targets"][4]["value"]
    assert [r["total"] for r in out["seconds"]] == [300, 650, 300]
    # each seed's extra pipeline numbers, flattened, so a reader can see why seed 1 differs
    assert [r["ppo.kl"] for r in out["per_seed_stages"]] == [1.5, 5.2, 2.0]
    assert out["per_seed_stages"][0]["reward.eval_pairwise_accuracy"] == 0.75


def test_targets_are_reported_for_every_rl_row():
    """PPO and PPO averaged with the pretrained weights each get the issue's targets, judged on their own numbers."""
    avg = f"{PPO} + averaging (0.2 pretrained)"
    summaries = [json.loads(json.dumps(s)) for s in SUMMARIES]
    for s, fact in zip(summaries, (0.8, 0.78, 0.9)):  # pretrained 0.8, 0.8, 0.9: gap -0.0067
        s["table"].append(_row(avg, s["table"][1]["gold_mean"] + 0.3, 0.06, 0.1, fact))
    targets = aggregate(summaries)["targets"]
    facts = [t for t in targets if t["target"].startswith("fact accuracy")]
    assert [t["target"] for t in facts] == [f"fact accuracy {PPO} within 5 points of pretrained (gap >= -0.05)",
                                           f"fact accuracy {avg} within 5 points of pretrained (gap >= -0.05)"]
    assert [t["met"] for t in facts] == [False, True] and "gap -0.007" in facts[1]["value"]
    beats = [t for t in targets if t["target"].endswith("beats SFT on mean gold in every seed")]
    assert [(t["value"], t["met"]) for t in beats] == [("2 of 3", False), ("3 of 3", True)]
    assert len(targets) == 2 * 5 + 1  # five per RL row, then the time per seed
    # one seed where the RL row makes up more answers than SFT fails "above SFT's on no seed"
    summaries[1]["table"][3]["hallucination_rate"] = 0.5  # SFT 0.4 on seed 1
    above = [t for t in aggregate(summaries)["targets"]
             if t["target"] == f"hallucination rate {avg} above SFT's on no seed"]
    assert [(t["met"], t["value"]) for t in above] == [(False, "above on 1: 0.40 -> 0.50")]


def test_aggregate_counts_the_seeds_a_stage_has_and_skips_missing_values():
    two = [json.loads(json.dumps(s)) for s in SUMMARIES[:2]]
    two[1]["table"] = [r for r in two[1]["table"] if r["stage"] != PPO]
    two[0]["table"][1]["hallucination_rate"] = float("nan")  # no unknown-entity prompts in that seed
    g = aggregate(two)["greedy"]
    stages = {row["stage"]: row for row in g["stages"]}
    assert stages[PPO]["n_seeds"] == 1 and stages[PPO]["gold_mean"]["se"] is None
    assert stages["SFT"]["hallucination_rate"] == {"mean": 0.4, "min": 0.4, "max": 0.4, "se": None}
    p = next(p for p in g["paired"] if p["b"] == PPO)
    assert p["n_seeds"] == 1 and p["beats"] == "1 of 1" and p["se_seeds"] is None
    # a pipeline run with fewer stages (`stages=[pretrain]`) has no comparison and no target to report
    only = aggregate([{"table": [_row("pretrained", -0.6, 0.07, 1.0, 0.8)]}])
    assert only["greedy"]["paired"] == [] and only["targets"] == [] and only["seconds"] == [{"seed": 0, "total": None}]


@pytest.mark.parametrize("text", ["", "0,x", "1.5", "-1", "0,,1", "2,2"])
def test_bad_seed_lists_are_rejected(text):
    with pytest.raises(RLHFError, match="--seeds"):
        parse_seeds(text)


def test_seed_lists():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 3, 1") == [3, 1]


def _snapshot(d: Path) -> dict:
    return {str(f.relative_to(d)): (f.stat().st_mtime_ns, f.stat().st_ino, f.stat().st_size)
            for f in sorted(d.rglob("*"))}


def _md_section(md: str, heading: str) -> str:
    body = md.split(f"## {heading}", 1)[1]
    return body.split("\n## ", 1)[0]


def test_seeds_study_resumes_and_same_seed_gives_identical_tables(cli, tmp_path):
    out = tmp_path / "seeds"
    study = cli.start("study", "seeds", "--seeds", "0,1", *SMOKE, "-o", out)
    # the same seed through `rlhf pipeline` itself, at the same time (one thread each)
    single = cli.start("pipeline", *SMOKE, "--set", "seed=1", "--set", "world.seed=1", "-o", tmp_path / "pipe-1")
    bad = [cli.start("study", "seeds", "--seeds", s, *SMOKE, "-o", tmp_path / "bad") for s in ("0,x", "1,1")]
    res, res1 = study.result(), single.result()
    assert res.returncode == 0, res.stderr[-2000:]
    assert res1.returncode == 0, res1.stderr[-2000:]
    for b in bad:
        b = b.result()
        assert b.returncode == 2 and "--seeds" in b.stderr and "Traceback" not in b.stderr
        assert len(b.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()

    # same seed, same machine: byte-identical tables (the JSON and the markdown)
    a, b = out / "seed-1", tmp_path / "pipe-1"
    ja, jb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("table", "sampled_table", "headline"):
        assert json.dumps(ja[key]) == json.dumps(jb[key]), key
    ma, mb = ((d / "summary.md").read_text() for d in (a, b))
    for heading in ("gold metrics on held-out prompts", "headline", "the same, sampled"):
        assert _md_section(ma, heading) == _md_section(mb, heading)
    # ... and each seed is its own world and training seed
    for s in (0, 1):
        seed_cfg = yaml.safe_load((out / f"seed-{s}" / "config.yaml").read_text())
        assert (seed_cfg["seed"], seed_cfg["world"]["seed"], seed_cfg["ppo"]["steps"]) == (s, s, 2)
    assert (out / "seed-0" / "world" / "world.json").read_text() != (a / "world" / "world.json").read_text()
    assert (a / "world" / "world.json").read_text() == (b / "world" / "world.json").read_text()
    j0 = json.loads((out / "seed-0" / "summary.json").read_text())

    result = json.loads((out / "summary.json").read_text())
    assert result["seeds"] == [0, 1] and result["ran_now"] == [0, 1] and result["reused"] == []
    assert result == {**aggregate([j0, ja], [0, 1]), "ran_now": [0, 1], "reused": []}
    assert {r["n_seeds"] for r in result["greedy"]["stages"]} == {2}
    assert res.stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    for sub in ("config.yaml", "summary.md", "plots/gold_by_seed.png", "seed-0/ppo/model/config.json", "report.html",
                "seed-0/report.html"):
        assert (out / sub).exists(), sub
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seeds"] == [0, 1] and config["pipeline"]["ppo"]["steps"] == 2
    assert not list(tmp_path.rglob("*.partial-*")) and not list(tmp_path.rglob("*.old-*"))

    # resume: seed 0 is reused untouched, only seed 2 runs; seed 1 (not asked for) is kept as it was
    before = {s: _snapshot(out / f"seed-{s}") for s in (0, 1)}
    res = cli.run("study", "seeds", "--seeds", "0,2", *SMOKE, "-o", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "not rerun" in res.stderr
    assert {s: _snapshot(out / f"seed-{s}") for s in (0, 1)} == before
    result = json.loads((out / "summary.json").read_text())
    assert result["seeds"] == [0, 2] and result["ran_now"] == [2] and result["reused"] == [0]
    assert (out / "seed-2" / "summary.json").exists()
    assert not list(tmp_path.rglob("*.partial-*"))

    # a finished seed with another config is an error naming the key, and nothing changes
    before = _snapshot(out)
    res = cli.run("study", "seeds", "--seeds", "2,0", *SMOKE, "--set", "ppo.steps=3", "-o", out)
    assert res.returncode == 2
    assert "seed-2" in res.stderr and "ppo.steps: 2 there, 3 now" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(out) == before
