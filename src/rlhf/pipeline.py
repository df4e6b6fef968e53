"""`rlhf pipeline`: world -> tokenizer -> pretrain -> SFT -> simulated labels -> reward model -> PPO ->
the final policy (PPO averaged with the pretrained weights, the share chosen per run without the gold reward),
then one table of gold metrics per stage (pretrained, SFT, RM best-of-N, PPO, final) on held-out prompts.

`reuse` points at a finished pipeline run: its leading stages whose configs equal this run's (paths inside
either run compared relative to it) are linked in instead of run again, up to the first stage that differs;
every stage after it runs anew. The code is assumed the same: reuse is for changing later stages' settings."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from rlhf.config import to_dict
from rlhf.errors import RLHFError
from rlhf.eval.averaging import AveragingConfig, candidate_scores, choose
from rlhf.eval.gold_eval import evaluate_policy, plot_gold_by_kind, score_responses, summarize
from rlhf.eval.reward_eval import best_of_n, heldout_gold_accuracy, plot_reward_eval
from rlhf.feedback import simulate
from rlhf.models.average import average_models
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model
from rlhf.progress import console
from rlhf.report import write_report
from rlhf.rollout import SamplingConfig
from rlhf.rundir import RunDir, rebase_paths
from rlhf.stages import PPOStage, PretrainStage, SFTStage, run_ppo, run_pretrain, run_sft
from rlhf.train import reward
from rlhf.world import World, WorldConfig


@dataclass
class PipelineConfig:
    out: str = "runs/pipeline"
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    sft: SFTStage = field(default_factory=SFTStage)
    labels: simulate.SimulateConfig = field(default_factory=simulate.SimulateConfig)
    # the world's reward model normalizes on every training response (a few thousand, seconds); a real
    # model's run bounds it (RewardConfig.normalize_sample)
    reward: reward.RewardConfig = field(default_factory=lambda: reward.RewardConfig(normalize_sample=0))
    # PPO-ptx (InstructGPT): the pretraining loss mixed in keeps what pretraining taught (set ppo.ptx_coef=0
    # for plain PPO). PPO optimizes the mean of the reward_ensemble reward models (Coste et al. 2024), which
    # it over-optimizes less than one RM (docs/results.md); ppo.ensemble_reward=first: one RM.
    ppo: PPOStage = field(default_factory=lambda: PPOStage(ptx_coef=2.0, ensemble_reward="mean"))
    # reward models trained on the same comparisons with other seeds (and so other held-out splits): PPO
    # optimizes their mean and logs their disagreement on its samples
    reward_ensemble: int = 3
    # what the reward models start from: "pretrain" (as in lm-human-preferences: the pretrained LM, which still
    # knows the facts SFT partly overwrote, so it can better tell a right answer from a made-up one) or "sft"
    # (InstructGPT); "pretrain" gave PPO-ptx the larger gain in every run compared (docs/results.md).
    reward_init: str = "pretrain"
    # the final policy: PPO's weights averaged with the pretrained model's (WiSE-FT; Lin et al. 2024),
    # (1 - w) * PPO + w * pretrained, evaluated as its own row; the share w chosen per run by the reward-model
    # ensemble on validation prompts (eval/averaging.py), or fixed, or off
    average: AveragingConfig = field(default_factory=AveragingConfig)
    best_of_n: int = 16
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=0.0))
    # a second table sampled at the policies' own temperature: greedy decoding picks a distribution's mode
    # ("I don't know" beats seven different made-up answers), so both views are shown (None: greedy only)
    eval_sampled_temperature: float | None = 0.7
    stages: list[str] = field(default_factory=lambda: ["pretrain", "sft", "labels", "reward", "ppo"])
    # a finished pipeline run whose matching leading stages are linked in, not run again (module docstring)
    reuse: str | None = None

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise RLHFError(f"stages: unknown stage '{unknown[0]}'; stages are {', '.join(STAGES)}")
        if self.reward_init not in ("sft", "pretrain"):
            raise RLHFError(f"reward_init: expected 'sft' or 'pretrain', got '{self.reward_init}'")
        self.average.validate()
        if self.average.select == "reward" and "ppo" in self.stages and "reward" not in self.stages:
            raise RLHFError("average.select: 'reward' needs the reward stage (its models choose the share); "
                            "use average.select=fixed or off")
        if self.reuse is not None and not (Path(self.reuse) / "config.yaml").is_file():
            raise RLHFError(f"reuse: {self.reuse} is not a finished pipeline run (no config.yaml)")
        if self.reward_ensemble < 1:
            raise RLHFError(f"reward_ensemble: at least 1 reward model, got {self.reward_ensemble}")
        if self.reward_ensemble == 1 and self.ppo.ensemble_reward != "first":
            self.ppo.ensemble_reward = "first"  # one reward model: nothing to combine
        for name in STAGES:
            getattr(getattr(self, name), "validate", lambda: None)()


# where the averaged policy is written (beside the stages' folders)
AVERAGED = "ppo-averaged"

# the stages in order, each with its runner
STAGES = {"pretrain": run_pretrain, "sft": run_sft, "labels": simulate.run, "reward": reward.run, "ppo": run_ppo}


def _wire(cfg: PipelineConfig, root: Path) -> None:
    """Point every stage at the pipeline's world, seed and the previous stage's output."""
    for name in STAGES:
        stage = getattr(cfg, name)
        stage.seed, stage.out = cfg.seed, str(root / name)
        if hasattr(stage, "world"):
            stage.world = cfg.world
    cfg.sft.init = str(root / "pretrain" / "model")
    cfg.labels.policy = str(root / "sft" / "model")
    cfg.reward.init = str(root / cfg.reward_init / "model")
    cfg.reward.data = str(root / "labels" / "comparisons.jsonl")
    cfg.ppo.policy = str(root / "sft" / "model")
    cfg.ppo.reward_model = str(root / "reward" / "model")
    cfg.ppo.ensemble = [str(root / "reward" / f"member-{k}" / "model") for k in range(1, cfg.reward_ensemble)]


def run(cfg: PipelineConfig, show_progress: bool = True) -> Path:
    cfg.validate()
    with RunDir(cfg.out, cfg) as run_dir:
        root = run_dir.path
        _wire(cfg, root)
        world = World(cfg.world)
        world.save(root / "world")
        timings, reused, reusing = {}, [], cfg.reuse is not None
        for name, run_stage in STAGES.items():
            if name not in cfg.stages:
                continue
            console.rule(f"[bold]{name}")
            t = time.time()
            reusing = reusing and _link_finished_stage(cfg, name, root)
            if reusing:
                reused.append(name)
            else:
                run_stage(getattr(cfg, name), show_progress)
                if name == "reward":
                    for k in range(1, cfg.reward_ensemble):
                        reward.run(replace(cfg.reward, seed=cfg.seed + 1000 * k,
                                           out=str(root / "reward" / f"member-{k}")),
                                   show_progress)
            timings[name] = round(time.time() - t, 1)
        averaged = cfg.average.select != "off" and {"pretrain", "ppo"} <= set(cfg.stages)
        if averaged:
            console.rule("[bold]final policy")
            t = time.time()
            averaging = _final_policy(cfg, root, world)
            timings["average"] = round(time.time() - t, 1)
        console.rule("[bold]evaluation")
        t = time.time()
        eval_prompts = world.prompts("eval")
        table, sampled_table, all_rows = [], [], {}

        def add(name: str, metrics: dict, rows: list[dict], into: list | None = None) -> None:
            (table if into is None else into).append({"stage": name,
                                                      **{k: round(v, 3) for k, v in metrics.items() if k != "n"}})
            if into is None:
                all_rows[name] = rows

        stage_labels = {"pretrain": "pretrained", "sft": "SFT", "ppo": _ppo_label(cfg)}
        evaluated = {name: label for name, label in stage_labels.items() if name in cfg.stages}
        if averaged:
            evaluated[AVERAGED] = _averaged_label(cfg)
        for name, label in evaluated.items():
            path = root / name / "model"
            tok, model = load_tokenizer(path), load_causal_lm(path)
            metrics, rows = evaluate_policy(model, tok, world, eval_prompts, cfg.eval_sampling, cfg.seed)
            add(label, metrics, rows)
            if cfg.eval_sampled_temperature is not None:
                sampled = replace(cfg.eval_sampling, temperature=cfg.eval_sampled_temperature)
                add(label, *evaluate_policy(model, tok, world, eval_prompts, sampled, cfg.seed),
                    into=sampled_table)
            if name == "sft" and "reward" in cfg.stages:
                bon = best_of_n(model, load_reward_model(root / "reward" / "model"), tok, world,
                                eval_prompts, cfg.best_of_n, cfg.labels.sampling, seed=cfg.seed)
                rows = score_responses(world, eval_prompts, bon["responses"])
                add(f"SFT + RM best-of-{cfg.best_of_n}", summarize(rows), rows)
                (root / "best_of_n.json").write_text(json.dumps(bon["curve"], indent=1))
                rm_eval = _reward_vs_gold(cfg, root, world)
                plot_reward_eval(bon["curve"], rm_eval.pop("rm_by_kind"), run_dir.sub("plots/reward_model.png"))
        timings["evaluation"] = round(time.time() - t, 1)
        plot_gold_by_kind(all_rows, run_dir.sub("plots/gold_by_kind.png"))
        stage_summaries = {}
        for name in ("reward", "labels", "ppo"):
            f = root / name / "summary.json"
            if f.exists():
                stage_summaries[name] = json.loads(f.read_text()).get("result", {})
        if averaged:
            stage_summaries["average"] = averaging
        if "reward" in cfg.stages and "sft" in cfg.stages:
            stage_summaries["reward"].update({k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in rm_eval.items()})
        headline = _headline(table)
        run_dir.write_summary("RLHF pipeline", {
            "gold metrics on held-out prompts (greedy decoding)": table,
            "headline": headline,
            f"the same, sampled at T={cfg.eval_sampled_temperature}": sampled_table or "not run",
            "headline (sampled)": _headline(sampled_table) if sampled_table else "not run",
            "simulated labels": stage_summaries.get("labels", {}),
            "reward model": stage_summaries.get("reward", {}),
            "PPO": stage_summaries.get("ppo", {}),
            "final policy": stage_summaries.get("average", "not run"),
            "stage seconds": timings | ({"reused": ", ".join(reused)} if reused else {})},
            {"table": table, "headline": headline, "sampled_table": sampled_table, "stages": stage_summaries,
             "seconds": timings, "reused": reused})
    write_report([cfg.out])  # report.html beside summary.md
    return Path(cfg.out)


def _reward_vs_gold(cfg: PipelineConfig, root: Path, world: World) -> dict:
    """The reward stage's own held-out split, judged against the gold reward."""
    path = root / "reward" / "model"
    return heldout_gold_accuracy(load_reward_model(path), load_tokenizer(path), world, reward.held_out(cfg.reward))


def _ppo_label(cfg: PipelineConfig) -> str:
    return f"PPO-ptx (ptx_coef {cfg.ppo.ptx_coef:g})" if cfg.ppo.ptx_coef > 0 else "PPO"


def _averaged_label(cfg: PipelineConfig) -> str:
    if cfg.average.select == "fixed":
        return f"{_ppo_label(cfg)} + averaging ({cfg.average.weights[0]:g} pretrained)"
    return f"{_ppo_label(cfg)} + averaging (share chosen by the reward models)"


def _final_policy(cfg: PipelineConfig, root: Path, world: World) -> dict:
    """PPO's weights averaged with the pretrained model's into ppo-averaged/model: the share fixed, or chosen by
    the reward-model ensemble on validation prompts (eval/averaging.py; 0 keeps the PPO policy as it is)."""
    ppo_dir, pre_dir, out = root / "ppo" / "model", root / "pretrain" / "model", root / AVERAGED
    if cfg.average.select == "fixed":
        average_models(ppo_dir, pre_dir, cfg.average.weights[0], out / "model")
        return {"select": "fixed", "weight": cfg.average.weights[0]}
    rm_dirs = [root / "reward" / "model"] + [root / "reward" / f"member-{k}" / "model"
                                             for k in range(1, cfg.reward_ensemble)]
    prompts = [p["prompt"] for p in world.prompts("valid", cfg.average.prompts)]
    policy, pretrained, tok = load_causal_lm(ppo_dir), load_causal_lm(pre_dir), load_tokenizer(ppo_dir)
    with torch.no_grad():
        rows = candidate_scores(policy, pretrained, tok, [load_reward_model(d) for d in rm_dirs],
                                load_tokenizer(rm_dirs[0]), prompts, cfg.average.weights, cfg.eval_sampling,
                                cfg.average.temperature, cfg.seed)
    weight, table = choose(rows, cfg.average.margin)
    average_models(ppo_dir, pre_dir, weight, out / "model")
    (out / "selection.json").write_text(json.dumps({"weight": weight, "margin": cfg.average.margin,
                                                    "prompts": len(prompts), "candidates": table}, indent=1))
    with open(out / "candidates.jsonl", "w") as f:
        for row in rows:
            for name in ("greedy", "sampled"):
                for prompt, response, score in zip(prompts, row[name]["responses"], row[name]["scores"]):
                    f.write(json.dumps({"weight": row["weight"], "decoding": name, "prompt": prompt,
                                        "response": response, "rm_ensemble": round(score, 4)}) + "\n")
    console.print(f"final policy: pretrained share {weight:g} (candidates "
                  f"{', '.join(f'{w:g}' for w in cfg.average.weights)})")
    return {"select": "reward", "weight": weight,
            "qualifying": [row["weight"] for row in table if row["qualifies"]]}


def _link_finished_stage(cfg: PipelineConfig, name: str, root: Path) -> bool:
    """Link `reuse`'s finished stage folder into this run if its config equals this run's; False otherwise.
    A run written before configs named final paths names `<run>.partial-PID`: read as the run itself."""
    src = Path(cfg.reuse) / name
    try:
        have = yaml.safe_load((src / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    want = yaml.safe_load(yaml.safe_dump(to_dict(getattr(cfg, name)), sort_keys=False))
    if rebase_paths(have, cfg.reuse, "<run>") != rebase_paths(want, str(root), "<run>"):
        return False
    if name == "reward" and not all((src / f"member-{k}" / "model").is_dir() for k in range(1, cfg.reward_ensemble)):
        return False
    shutil.copytree(src, root / name, copy_function=_link_or_copy)
    for path in (root / name).rglob("config.yaml"):  # the copies name this run's paths (a new file, not the link)
        text = yaml.safe_dump(rebase_paths(yaml.safe_load(path.read_text()), cfg.reuse, str(root)), sort_keys=False)
        path.unlink()
        path.write_text(text)
    console.print(f"{name}: linked in from {src} (same config)")
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _headline(table: list[dict]) -> dict:
    by = {row["stage"]: row for row in table}
    ppo_rows = [row["stage"] for row in table if row["stage"].startswith("PPO")]
    out = {}
    for a, b in (("pretrained", "SFT"), *(("SFT", row) for row in ppo_rows)):
        if a in by and b in by:
            diff = by[b]["gold_mean"] - by[a]["gold_mean"]
            se = (by[a]["gold_se"] ** 2 + by[b]["gold_se"] ** 2) ** 0.5
            out[f"{b} - {a} gold"] = f"{diff:+.3f} ({diff / se:+.1f} standard errors)" if se else f"{diff:+.3f}"
            out[f"{b} vs {a} hallucination rate"] = (f"{by[a]['hallucination_rate']:.2f} -> "
                                                     f"{by[b]['hallucination_rate']:.2f}")
    return out
