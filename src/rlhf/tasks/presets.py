"""`rlhf pipeline --preset NAME`: load a real task's config, run it end to end, write its summary table.

The tasks with a programmatic gold scorer (sentiment, instructions) share one flow, `run_gold_task`:
  start policy (a local HF model)  -> gold on held-out prompts (mean and SE over prompts)
  K samples per training prompt    -> simulated labelers (Bradley-Terry on gold, calibrated noise) -> rankings
  rankings                         -> reward model (`train/reward.py`), held-out accuracy vs labels and vs gold
  start policy + RM                -> best-of-N on held-out prompts (`eval/reward_eval.best_of_n`)
  start policy + RM                -> PPO (`train/ppo.py`; `ppo.model.lora.r` for LoRA), gold logged per step
  PPO policy                       -> gold on the same held-out prompts, KL to the start policy
Every stage reuses the world pipeline's code; a task only brings prompts and a gold function, which the
world-shaped helpers read through `GoldScorer` (`.score(prompt, response).total`).
"""
from __future__ import annotations

import importlib
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from rlhf.config import load_config
from rlhf.data.comparisons import write_rankings
from rlhf.errors import RLHFError
from rlhf.eval.drift import proxy_gold_kl
from rlhf.eval.reward_eval import best_of_n, heldout_gold_accuracy
from rlhf.feedback.labelers import LabelerPool, LabelerPoolConfig, label_rankings
from rlhf.feedback.simulate import measured_agreement, sample_items, within_prompt_pairs
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model
from rlhf.progress import console, progress_bar
from rlhf.report import write_report
from rlhf.rollout import SamplingConfig, generate_texts
from rlhf.rollout.experience import Models
from rlhf.rundir import RunDir
from rlhf.tasks import PRESETS
from rlhf.train import ppo, reward


def run_preset(name: str, config: str | Path | None = None, overrides: list[str] | None = None,
               out: str | None = None, show_progress: bool = True) -> Path:
    """The preset's config (its dataclass defaults, then the YAML file if given, then --set), run."""
    if name not in PRESETS:
        raise RLHFError(f"--preset: unknown preset '{name}'; presets are {', '.join(PRESETS)}")
    module_name, cls_name = PRESETS[name]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, cls_name), config, overrides)
    if out is not None:
        cfg.out = out
    path = module.run(cfg, show_progress)
    write_report([path])  # report.html beside summary.md
    return path


# ---------------------------------------------------------------- configs shared by the gold tasks


@dataclass
class LabelOptions:
    n_prompts: int = 400  # training prompts sampled for comparisons
    k: int = 4  # responses per prompt, ranked by one simulated labeler
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=1.0))
    pool: LabelerPoolConfig = field(default_factory=lambda: LabelerPoolConfig(length_bias=0.0, length_bias_spread=0.0,
                                                                              shared_taste=0.0))


def ppo_defaults() -> ppo.PPOConfig:
    cfg = ppo.PPOConfig(steps=30, rollout_batch_size=16, minibatch_size=8, micro_batch_size=4, ppo_epochs=2,
                        sampling=SamplingConfig(max_new_tokens=32, temperature=1.0), value_init="reward",
                        eval_every=0, samples_every=5)
    cfg.model.lora.r, cfg.model.lora.alpha = 16, 32.0
    cfg.optim.lr = 1e-4  # LoRA adapters take a larger step than full fine-tuning
    cfg.kl.beta = 0.05
    return cfg


@dataclass
class GoldTaskConfig:
    """Keys every gold task shares. `reward` and `ppo` are the trainers' own configs: their out, init/data,
    policy and reward_model are filled in by the preset (root/reward, root/labels, the start policy)."""
    out: str = "runs/preset"
    seed: int = 0
    size: str = "full"  # full | smoke (a few prompts, a few tokens, one PPO step: the preset's plumbing in seconds)
    policy: str = "runs/smollm2"  # any local HF causal LM: `rlhf models import-gguf` writes SmolLM2-135M-Instruct here
    reward_init: str | None = None  # the reward model's backbone (default: the policy)
    n_eval: int = 64  # held-out prompts for every gold table
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=1.0))
    best_of_n: int = 8  # 0: skip best-of-N
    stages: list[str] = field(default_factory=lambda: ["labels", "reward", "best_of_n", "ppo"])
    labels: LabelOptions = field(default_factory=LabelOptions)
    reward: reward.RewardConfig = field(default_factory=lambda: reward.RewardConfig(
        epochs=2.0, batch_size=8, max_len=256, eval_fraction=0.15,
        optim=reward.OptimConfig(lr=3e-5, warmup_steps=5, weight_decay=0.0, schedule="linear", betas=(0.9, 0.999))))
    ppo: ppo.PPOConfig = field(default_factory=ppo_defaults)

    def validate(self) -> None:
        if self.size not in ("full", "smoke"):
            raise RLHFError(f"size: expected full or smoke, got '{self.size}'")
        bad = [s for s in self.stages if s not in ("labels", "reward", "best_of_n", "ppo")]
        if bad:
            raise RLHFError(f"stages: unknown stage '{bad[0]}'; stages are labels, reward, best_of_n, ppo")
        need = {"reward": "labels", "best_of_n": "reward", "ppo": "reward"}
        for stage, before in need.items():
            if stage in self.stages and before not in self.stages:
                raise RLHFError(f"stages: '{stage}' needs '{before}'")
        self.reward.validate()
        self.ppo.validate()


def shrink_for_smoke(cfg: GoldTaskConfig) -> None:
    """size=smoke: a handful of prompts and tokens everywhere, one PPO step."""
    tokens = SamplingConfig(max_new_tokens=8, temperature=1.0)
    cfg.n_eval, cfg.eval_sampling, cfg.best_of_n = 4, tokens, 2
    cfg.labels.n_prompts, cfg.labels.k, cfg.labels.sampling = 12, 3, tokens
    cfg.reward.epochs, cfg.reward.batch_size, cfg.reward.eval_fraction = 1.0, 4, 0.25
    cfg.ppo.steps, cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size, cfg.ppo.micro_batch_size = 1, 8, 8, 8
    cfg.ppo.ppo_epochs, cfg.ppo.sampling, cfg.ppo.eval_every, cfg.ppo.samples_every = 1, tokens, 0, 1


# ---------------------------------------------------------------- gold scoring and statistics


class GoldScorer:
    """A task's gold function, shaped as the world the shared evaluators read: `.score(prompt, response)`
    gives an object with `.total` (the gold) and `.kind` (for per-kind groupings: the task's name)."""

    def __init__(self, fn: Callable[[object, str], float], kind: str):
        self.fn, self.kind = fn, kind

    def score(self, prompt, response: str):
        return SimpleNamespace(total=float(self.fn(prompt, response)), kind=self.kind)


def device() -> torch.device:
    """Where the preset's own sampling and scoring run (the trainers place their models through accelerate)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def prompt_text(prompt) -> str:
    """The last user turn of a prompt (a string or a message list)."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


@dataclass
class GoldTask:
    """What a task brings to `run_gold_task`: prompts ({"prompt": messages, "kind": ...}), a gold function,
    optional extra per-response metrics (name -> fn(prompt, response) -> float) and notes for the summary."""
    title: str
    train: list[dict]
    eval: list[dict]
    gold: Callable[[object, str], float]
    metrics: dict[str, Callable[[object, str], float]] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def gold_rows(task: GoldTask, prompts: list[dict], responses: list[str]) -> list[dict]:
    rows = []
    for p, r in zip(prompts, responses):
        row = {"prompt": prompt_text(p["prompt"]), "response": r, "gold": task.gold(p["prompt"], r)}
        row.update({k: fn(p["prompt"], r) for k, fn in task.metrics.items()})
        rows.append(row)
    return rows


def stage_row(stage: str, rows: list[dict], extra: list[str], **more) -> dict:
    m, se = mean_se([r["gold"] for r in rows])
    out = {"stage": stage, "gold": round(m, 4), "gold_se": round(se, 4), "n": len(rows)}
    for k in extra:
        km, kse = mean_se([float(r[k]) for r in rows])
        out[k], out[f"{k}_se"] = round(km, 4), round(kse, 4)
    return {**out, **{k: round(v, 4) if isinstance(v, float) else v for k, v in more.items()}}


def paired_difference(after: list[dict], before: list[dict], key: str = "gold") -> str:
    """after - before over the same prompts, with the SE of the per-prompt differences."""
    m, se = mean_se([a[key] - b[key] for a, b in zip(after, before)])
    return f"{m:+.4f} ± {se:.4f} ({m / se:+.1f} SE)" if se and se == se and se > 0 else f"{m:+.4f}"


def generate(model, tokenizer, prompts: list[dict], sampling: SamplingConfig, seed: int, label: str,
             show_progress: bool, chunk: int = 16) -> list[str]:
    out: list[str] = []
    with progress_bar(label, len(prompts), show_progress) as bar:
        for i in range(0, len(prompts), chunk):
            part = [p["prompt"] for p in prompts[i:i + chunk]]
            out += generate_texts(model, tokenizer, part, sampling, seed=seed + i)
            bar.advance(len(part))
    return out


def plot_gold(table: list[dict], curve: list[dict] | None, path: Path, title: str) -> None:
    """Left: each stage's held-out gold, mean ± SE. Right: best-of-n's gold and RM score against n."""
    from rlhf.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(9 if curve else 5, 3.4), dpi=100, squeeze=False)
    a = axes[0][0]
    a.bar(range(len(table)), [r["gold"] for r in table], yerr=[r["gold_se"] if r["gold_se"] == r["gold_se"] else 0
                                                               for r in table], capsize=4)
    a.set_xticks(range(len(table)), [r["stage"] for r in table], fontsize=7, rotation=12)
    a.set_title(f"{title}: held-out gold (mean ± SE)")
    a.grid(alpha=0.3, axis="y")
    if curve:
        b = axes[0][1]
        ns = [c["n"] for c in curve]
        if "gold" in curve[0]:
            b.plot(ns, [c["gold"] for c in curve], "o-", label="gold of RM's pick")
        b.plot(ns, [c["proxy"] for c in curve], "s--", label="RM score of pick")
        b.set_xscale("log", base=2)
        b.set_xlabel("n (best-of-n)")
        b.legend(fontsize=7)
        b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- the shared flow


def _label(cfg: GoldTaskConfig, task: GoldTask, scorer: GoldScorer, model, tokenizer, out: Path,
           show_progress: bool) -> dict:
    """K samples per training prompt from the start policy, ranked by the simulated labeler pool (`label
    simulate`'s code with the task's gold): `out/comparisons.jsonl`, and the pool's numbers."""
    t = time.time()
    prompts = random.Random(cfg.seed).sample(task.train, min(cfg.labels.n_prompts, len(task.train)))
    items, dropped = sample_items(scorer, model, tokenizer, prompts, cfg.labels.k, cfg.labels.sampling, cfg.seed,
                                  show_progress)
    if len(items) < 2:
        raise RLHFError(f"labels: only {len(items)} prompts got 2 distinct responses; raise labels.k or "
                        "labels.sampling.temperature")
    pool = LabelerPool.build(replace(cfg.labels.pool, seed=cfg.seed))
    pairs = within_prompt_pairs(pool, items)
    pool.temperature = cfg.labels.pool.temperature if cfg.labels.pool.temperature is not None else pool.calibrate(pairs)
    rankings = label_rankings(pool, items, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_rankings(out / "comparisons.jsonl", rankings)
    gold_agree = [(r.meta["gold"][i] > r.meta["gold"][j]) for r in rankings for i, j in r.pairs()
                  if r.meta["gold"][i] != r.meta["gold"][j]]
    return {"prompts": len(prompts), "rankings": len(rankings), "pairs": sum(len(r.pairs()) for r in rankings),
            "pool_temperature": round(pool.temperature, 4),
            "inter_labeler_agreement": round(measured_agreement(pool, pairs, 2000, cfg.seed), 3),
            "label_agreement_with_gold": round(sum(gold_agree) / max(1, len(gold_agree)), 3),
            "seconds": round(time.time() - t, 1), **dropped}


def _reward(cfg: GoldTaskConfig, scorer: GoldScorer, root: Path, show_progress: bool) -> dict:
    reward.run(cfg.reward, show_progress)
    result = json.loads((root / "reward" / "summary.json").read_text()).get("result", {})
    out = {k: round(result[k], 4) if isinstance(result.get(k), float) else result.get(k)
           for k in ("rankings_train", "rankings_eval", "eval_pairwise_accuracy", "train_seconds", "pairs_per_s")
           if k in result}
    held_out = reward.held_out(cfg.reward)
    if held_out:
        path = root / "reward" / "model"
        acc = heldout_gold_accuracy(load_reward_model(path).to(device()), load_tokenizer(path), scorer, held_out)
        out.update({"heldout_rm_gold_accuracy": round(acc["rm_gold_accuracy"], 4),
                    "heldout_label_gold_accuracy": round(acc["label_gold_accuracy"], 4),
                    "heldout_gold_pairs": acc["gold_pairs"]})
    return out


def run_gold_task(cfg: GoldTaskConfig, task: GoldTask, show_progress: bool = True) -> Path:
    cfg.validate()
    if not task.eval or not task.train:
        raise RLHFError(f"{task.title}: no prompts ({len(task.train)} train, {len(task.eval)} held out)")
    scorer = GoldScorer(task.gold, task.title)
    extra = list(task.metrics)
    with RunDir(cfg.out, cfg) as run_dir:
        root = run_dir.path
        tokenizer, start = load_tokenizer(cfg.policy), load_causal_lm(cfg.policy).to(device())
        cfg.reward.seed, cfg.reward.out = cfg.seed, str(root / "reward")
        cfg.reward.init, cfg.reward.data = cfg.reward_init or cfg.policy, str(root / "labels" / "comparisons.jsonl")
        cfg.ppo.seed, cfg.ppo.out, cfg.ppo.policy = cfg.seed, str(root / "ppo"), cfg.policy
        cfg.ppo.reward_model, cfg.ppo.prompts = str(root / "reward" / "model"), None
        cfg.ppo.retokenize = cfg.ppo.retokenize or (cfg.reward_init not in (None, cfg.policy))
        if cfg.ppo.retokenize and cfg.ppo.value_init == "reward":
            cfg.ppo.value_init = "policy"  # the RM reads another vocabulary: the value head sits on the policy
        eval_prompts, seconds, sections = task.eval[:cfg.n_eval], {}, {}
        t = time.time()
        console.rule("[bold]start policy")
        before = gold_rows(task, eval_prompts, generate(start, tokenizer, eval_prompts, cfg.eval_sampling, cfg.seed,
                                                        "eval start", show_progress))
        table = [stage_row(f"start ({Path(cfg.policy).name})", before, extra)]
        _write_rows(run_dir.sub("responses_start.jsonl"), before)  # now: a run stopped later still shows its start
        console.print(table[0])
        seconds["eval_start"] = round(time.time() - t, 1)
        curve = None
        if "labels" in cfg.stages:
            console.rule("[bold]simulated labels")
            sections["simulated labels"] = _label(cfg, task, scorer, start, tokenizer, root / "labels", show_progress)
            seconds["labels"] = sections["simulated labels"]["seconds"]
        if "reward" in cfg.stages:
            console.rule("[bold]reward model")
            t = time.time()
            sections["reward model"] = _reward(cfg, scorer, root, show_progress)
            seconds["reward"] = round(time.time() - t, 1)
            rm = load_reward_model(root / "reward" / "model").to(device())
            rm_tok = load_tokenizer(root / "reward" / "model")
        if "best_of_n" in cfg.stages and cfg.best_of_n > 0:
            console.rule(f"[bold]best-of-{cfg.best_of_n}")
            t = time.time()
            bon = best_of_n(start, rm, tokenizer, scorer, eval_prompts, cfg.best_of_n, cfg.eval_sampling, cfg.seed,
                            rm_tokenizer=rm_tok)
            curve = [{k: round(v, 4) for k, v in c.items()} for c in bon["curve"]]
            picks = gold_rows(task, eval_prompts, bon["responses"])
            table.append(stage_row(f"start + RM best-of-{cfg.best_of_n}", picks, extra))
            sections["best-of-n curve (gold and RM score of the pick; n = 1 is one sample)"] = curve
            seconds["best_of_n"] = round(time.time() - t, 1)
        if "ppo" in cfg.stages:
            console.rule("[bold]PPO")
            t = time.time()
            start = rm = None  # PPO loads its own copies: two fewer models in memory while it trains
            ppo.run(cfg.ppo, show_progress, prompts=[p["prompt"] for p in task.train], gold=task.gold)
            seconds["ppo"] = round(time.time() - t, 1)
            t = time.time()
            start = load_causal_lm(cfg.policy).to(device())
            rm = load_reward_model(root / "reward" / "model").to(device())
            tuned = load_causal_lm(root / "ppo" / "model").to(device())
            after = gold_rows(task, eval_prompts, generate(tuned, tokenizer, eval_prompts, cfg.eval_sampling, cfg.seed,
                                                           "eval PPO", show_progress))
            drift = proxy_gold_kl(Models(tuned, start, rm, None, tokenizer,
                                         rm_tok if rm_tok.get_vocab() != tokenizer.get_vocab() else None),
                                  scorer, eval_prompts, cfg.ppo.sampling, cfg.seed)
            lora = f"LoRA r={cfg.ppo.model.lora.r}" if cfg.ppo.model.lora.r else "full"
            table.append(stage_row(f"PPO ({lora}, {cfg.ppo.steps} steps)", after, extra, kl_to_start=drift["kl"],
                                   rm_score=drift["proxy"]))
            ppo_result = json.loads((root / "ppo" / "summary.json").read_text()).get("result", {})
            sections["PPO"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in ppo_result.items()}
            sections["PPO - start, paired over held-out prompts"] = {
                "gold": paired_difference(after, before),
                **{k: paired_difference(after, before, k) for k in extra}}
            seconds["eval_ppo"] = round(time.time() - t, 1)
            _write_rows(run_dir.sub("responses_ppo.jsonl"), after)
        plot_gold(table, curve, run_dir.sub("plots/gold.png"), task.title)
        run_dir.write_summary(f"{task.title} preset", {
            f"held-out gold ({len(eval_prompts)} prompts, T={cfg.eval_sampling.temperature:g}, "
            f"{cfg.eval_sampling.max_new_tokens} new tokens, seed {cfg.seed})": table,
            **sections, "notes": task.notes, "stage seconds": seconds},
            {"table": table, **sections, "notes": task.notes, "seconds": seconds})
    return Path(cfg.out)


def _write_rows(path: Path, rows: list[dict]) -> None:
    from rlhf.data.jsonl import write_jsonl

    write_jsonl(path, rows)
