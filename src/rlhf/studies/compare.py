"""`rlhf study compare`: the policy-optimization methods side by side on the default world, under one budget,
over seeds.

Per seed N (seed=N, world.seed=N, as `rlhf study seeds`), one SFT checkpoint, one reward model and one set of
simulated preference labels are shared by every method. They come from `source` (a `rlhf study seeds` or
`rlhf pipeline`-per-seed directory: `<source>/seed-N/{sft/model, reward/model, labels/comparisons.jsonl,
config.yaml}`), or, without `source`, from the pipeline's first four stages run once per seed into
`<out>/seed-N/pipeline` (reused when finished).

The budget is a number of reward-model calls (one call scores one sampled response; the pipeline's first
reward model only, no ensemble), and every RM-using method spends it:
  PPO-ptx, PPO   steps = budget / rollout_batch_size
  GRPO, RLOO     steps = budget / (prompts_per_step * group_size)
  RAFT           iterations = budget / (prompts_per_iteration * k)    RRHF  steps = budget / (prompts_per_step * k)
  best-of-N      N = budget / (held-out prompts), at inference time on the held-out prompts themselves
  DPO            calls no reward model: it spends the simulated preference labels instead (one epoch)
Every resulting policy (and SFT, the baseline) gets the pipeline's gold evaluation on the world's held-out
prompts, greedy and sampled: gold reward, hallucination rate, fact accuracy, ...; plus the RM's score of the
greedy responses and the KL to SFT on sampled responses (best-of-N: the analytic log N - (N - 1) / N).
A finished method run of a seed (`<out>/seed-N/<method>/compare.json`) is reused when rerun with the same
settings; one finished with other settings is an error, never mixed in. The aggregation across seeds is
`rlhf.studies.seeds.aggregate` (mean, SE and min-max over seeds; paired differences against SFT with their SE).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from rlhf.config import build_config, to_dict
from rlhf.errors import RLHFError
from rlhf.studies import seeds as study
from rlhf.studies.runner import default_cpus, map_runs
from rlhf.pipeline import PipelineConfig
from rlhf.progress import console
from rlhf.report import write_report
from rlhf.rundir import RunDir
from rlhf.stages import PPOStage
from rlhf.train.dpo import DPOConfig
from rlhf.train.grpo import GRPOConfig, RLOOConfig
from rlhf.train.raft import RAFTConfig
from rlhf.train.rrhf import RRHFConfig
from rlhf.world import WorldConfig

# key -> the name in the tables
METHODS = {"ppo-ptx": "PPO-ptx", "ppo": "PPO", "dpo": "DPO", "bon": "best-of-N", "raft": "RAFT", "rrhf": "RRHF",
           "grpo": "GRPO", "rloo": "RLOO"}
BASELINE = "SFT"
# the columns of the headline table (the aggregate also holds every other gold metric)
HEADLINE = ("gold_mean", "rm_score", "kl_to_sft", "hallucination_rate", "fact_accuracy", "train_seconds",
            "train_cpu_seconds")


@dataclass
class CompareConfig:
    out: str = "runs/compare"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budget: int = 768  # reward-model calls per method (one call = one scored sampled response)
    source: str | None = None  # a `rlhf study seeds` directory holding seed-N/{sft,reward,labels}; None: build
    # the per-seed SFT / labels / RM when `source` is unset (its ppo stage is never run here)
    pipeline: PipelineConfig = field(default_factory=lambda: PipelineConfig(
        stages=["pretrain", "sft", "labels", "reward"], reward_ensemble=1))
    ptx_coef: float = 2.0  # PPO-ptx's pretraining-loss coefficient (the pipeline's); PPO: 0
    # the methods' own settings (their step counts are set from the budget; out, seed, models and data are wired)
    ppo: PPOStage = field(default_factory=PPOStage)
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(kl_prompts=0))
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    raft: RAFTConfig = field(default_factory=lambda: RAFTConfig(prompts_per_iteration=32))
    rrhf: RRHFConfig = field(default_factory=RRHFConfig)

    def validate(self) -> None:
        study.parse_seeds(",".join(map(str, self.seeds)))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise RLHFError(f"methods: unknown method '{unknown[0]}'; methods are {', '.join(METHODS)}")
        if not self.methods:
            raise RLHFError("methods: at least one method")
        per_step = {"ppo-ptx": self.ppo.rollout_batch_size, "ppo": self.ppo.rollout_batch_size,
                    "grpo": self.grpo.prompts_per_step * self.grpo.group_size,
                    "rloo": self.rloo.prompts_per_step * self.rloo.group_size,
                    "raft": self.raft.prompts_per_iteration * self.raft.k,
                    "rrhf": self.rrhf.prompts_per_step * self.rrhf.k}
        for m in self.methods:
            if m in per_step and self.budget < per_step[m]:
                raise RLHFError(f"budget: {self.budget} reward-model calls is less than one step of {METHODS[m]} "
                                f"({per_step[m]} calls)")


def parse_methods(text: str) -> list[str]:
    methods = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise RLHFError(f"--methods: unknown method '{unknown[0] if unknown else text}'; methods are "
                        f"{', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


# ---------------------------------------------------------------- aggregation (pure)

def verdict(paired: dict | None) -> str:
    """How a method's paired gold difference to SFT reads: better / worse only when every seed agrees."""
    if paired is None:
        return "n/a"
    n, pos = paired["n_seeds"], paired["positive_seeds"]
    neg = sum(r["diff"] < 0 for r in paired["per_seed"])
    if pos == n and paired["mean"] > 0:
        return "beats SFT"
    if neg == n:
        return "worse than SFT"
    return "does not beat SFT"


def aggregate(per_seed: list[dict], seeds: list[int]) -> dict:
    """per_seed[i]: {"greedy": [row per method], "sampled": [...], "seconds": {method: s}} for seeds[i], each row
    {"stage": name, "gold_mean", "gold_se", "rm_score", "kl_to_sft", ...}. Returns `seeds.aggregate`'s result
    (its PPO-pipeline targets dropped) with a `verdict` per method against SFT in each decoding."""
    result = study.aggregate([{"table": s.get("greedy", []), "sampled_table": s.get("sampled", []),
                               "seconds": s.get("seconds", {})} for s in per_seed], seeds)
    result.pop("targets", None)
    result.pop("per_seed_stages", None)
    for name in study.TABLES:
        if name in result:
            agg = result[name]
            agg.pop("targets", None)
            by_b = {p["b"]: p for p in agg["paired"] if p["a"] == BASELINE}
            agg["paired"] = list(by_b.values())
            for row in agg["stages"]:
                row["verdict"] = "baseline" if row["stage"] == BASELINE else verdict(by_b.get(row["stage"]))
    return result


def _cell(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return ""
    se = f" ± {stat['se']:.{digits}f}" if stat.get("se") is not None else ""
    return f"{stat['mean']:.{digits}f}{se} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]"


def table_rows(agg: dict) -> list[dict]:
    """The headline table of one decoding: per method, mean ± SE [min, max] over seeds, and the paired
    gold difference to SFT."""
    paired = {p["b"]: p for p in agg["paired"]}
    rows = []
    for row in agg["stages"]:
        p = paired.get(row["stage"])
        diff = "" if p is None else (f"{p['mean']:+.3f} ± {p['se_seeds']:.3f}" if p["se_seeds"] is not None
                                     else f"{p['mean']:+.3f}")
        rows.append({"method": row["stage"], "seeds": row["n_seeds"],
                     **{k.replace("_mean", "").replace("train_", ""): _cell(row.get(k), 1 if "seconds" in k else 3)
                        for k in HEADLINE},
                     "gold - SFT (paired)": diff, "positive seeds": "" if p is None else p["beats"],
                     "verdict": row["verdict"]})
    return rows


# ---------------------------------------------------------------- one seed

def _world_of(seed_dir: Path) -> WorldConfig:
    f = seed_dir / "config.yaml"
    try:
        data = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RLHFError(f"{f}: cannot read the seed's pipeline config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("world"), dict):
        raise RLHFError(f"{f}: not a pipeline config (no 'world' section)")
    return build_config(WorldConfig, data["world"], str(f), "world.")


def prepare_seed(cfg: CompareConfig, seed: int, show_progress: bool) -> dict:
    """The seed's shared inputs: {"dir", "world", "sft", "rm", "labels"}; builds them when `source` is unset."""
    if cfg.source:
        src = Path(cfg.source) / f"seed-{seed}"
    else:
        src = Path(cfg.out) / f"seed-{seed}" / "pipeline"
        if not (src / "summary.json").is_file():
            from rlhf import pipeline

            console.rule(f"[bold]seed {seed}: SFT, labels and reward model (pipeline)")
            p = copy.deepcopy(cfg.pipeline)
            p.seed, p.world.seed, p.out = seed, seed, str(src)
            pipeline.run(p, show_progress)
    paths = {"sft": src / "sft" / "model", "rm": src / "reward" / "model",
             "labels": src / "labels" / "comparisons.jsonl"}
    for key, path in paths.items():
        if not path.exists():
            raise RLHFError(f"source {src}: missing {path.relative_to(src)} (the pipeline's sft, labels and reward "
                            "stages)")
    return {"dir": src, "world": _world_of(src), **{k: str(v) for k, v in paths.items()}}


def method_config(cfg: CompareConfig, key: str, seed: int, inputs: dict, out: Path):
    """The trainer config of method `key` for one seed, its steps set from the budget."""
    b = cfg.budget
    if key in ("ppo-ptx", "ppo"):
        c = replace(copy.deepcopy(cfg.ppo), ptx_coef=cfg.ptx_coef if key == "ppo-ptx" else 0.0,
                    steps=b // cfg.ppo.rollout_batch_size, ensemble=[], ensemble_reward="first", eval_every=0,
                    world=copy.deepcopy(inputs["world"]), prompts=None, ptx_data=None, resume=None)
    elif key == "dpo":
        return replace(copy.deepcopy(cfg.dpo), out=str(out), seed=seed, policy=inputs["sft"], reference=None,
                       data=inputs["labels"])
    elif key in ("grpo", "rloo"):
        base = cfg.grpo if key == "grpo" else cfg.rloo
        c = replace(copy.deepcopy(base), steps=b // (base.prompts_per_step * base.group_size), eval_prompts=None)
    elif key == "raft":
        c = replace(copy.deepcopy(cfg.raft), iterations=b // (cfg.raft.prompts_per_iteration * cfg.raft.k),
                    eval_prompts=None)
    elif key == "rrhf":
        c = replace(copy.deepcopy(cfg.rrhf), steps=b // (cfg.rrhf.prompts_per_step * cfg.rrhf.k), eval_prompts=None)
    else:
        raise ValueError(key)
    return replace(c, out=str(out), seed=seed, policy=inputs["sft"], reward_model=inputs["rm"])


def rm_calls(key: str, c) -> int:
    return {"ppo-ptx": lambda: c.steps * c.rollout_batch_size, "ppo": lambda: c.steps * c.rollout_batch_size,
            "grpo": lambda: c.steps * c.prompts_per_step * c.group_size,
            "rloo": lambda: c.steps * c.prompts_per_step * c.group_size,
            "raft": lambda: c.iterations * c.prompts_per_iteration * c.k,
            "rrhf": lambda: c.steps * c.prompts_per_step * c.k, "dpo": lambda: 0}[key]()


def _train(key: str, c, world, show_progress: bool, ppo_stage: bool = True) -> None:
    """Train method `key` with config `c` on the world's training prompts, the gold reward logged beside.
    PPO runs as the pipeline's stage (its held-out evaluation included) or, with ppo_stage=False, as the
    trainer alone on the training prompts (the compare protocol's tuning, which never reads held-out prompts)."""
    gold = lambda prompt, response: world.score(prompt, response).total  # noqa: E731
    train_prompts = [p["prompt"] for p in world.prompts("train")]
    if key in ("ppo-ptx", "ppo") and ppo_stage:
        from rlhf.stages import run_ppo

        run_ppo(c, show_progress)
    elif key in ("ppo-ptx", "ppo"):
        from rlhf.stages import watch_rates
        from rlhf.train import ppo

        ptx = world.corpus() if c.ptx_coef > 0 else None
        ppo.run(c, show_progress, prompts=train_prompts, ptx_docs=ptx, gold=gold, on_iteration=watch_rates)
    elif key == "dpo":
        from rlhf.train import dpo

        dpo.run(c, show_progress, gold=gold)
    else:
        import importlib

        mod = importlib.import_module({"grpo": "rlhf.train.grpo", "rloo": "rlhf.train.grpo", "raft": "rlhf.train.raft",
                                       "rrhf": "rlhf.train.rrhf"}[key])
        mod.run(c, show_progress, gold=gold, prompts=train_prompts, eval_prompts=[])


def _evaluate(model, tokenizer, world, prompts, rm, sft_model, cfg: CompareConfig, seed: int) -> dict:
    from rlhf.eval.gold_eval import evaluate_policy
    from rlhf.models.reward import score_texts
    from rlhf.train.heldout import sample_kl

    p = cfg.pipeline
    greedy, rows = evaluate_policy(model, tokenizer, world, prompts, p.eval_sampling, seed)
    greedy["rm_score"] = sum(score_texts(rm, tokenizer, [r["prompt"] for r in rows],
                                         [r["response"] for r in rows])) / len(rows)
    T = p.eval_sampled_temperature if p.eval_sampled_temperature is not None else 0.7
    sampling = replace(p.eval_sampling, temperature=T)  # the same draw (random stream) as the greedy table
    kl = sample_kl(model, sft_model, tokenizer, [x["prompt"] for x in prompts], sampling, seed)["kl"]
    out = {"greedy": {**greedy, "kl_to_sft": kl}}
    if p.eval_sampled_temperature is not None:
        sampled, rows = evaluate_policy(model, tokenizer, world, prompts, sampling, seed)
        sampled["rm_score"] = sum(score_texts(rm, tokenizer, [r["prompt"] for r in rows],
                                              [r["response"] for r in rows])) / len(rows)
        out["sampled"] = {**sampled, "kl_to_sft": kl}
    return out


def _best_of_n(tokenizer, world, prompts, rm, sft_model, cfg: CompareConfig, seed: int) -> dict:
    from rlhf.eval.gold_eval import score_responses, summarize
    from rlhf.eval.reward_eval import best_of_n

    n = max(2, cfg.budget // len(prompts))
    bon = best_of_n(sft_model, rm, tokenizer, world, prompts, n, cfg.pipeline.labels.sampling, seed=seed)
    metrics = summarize(score_responses(world, prompts, bon["responses"]))
    metrics.update(rm_score=bon["curve"][-1]["proxy"], kl_to_sft=bon["curve"][-1]["kl"])
    # one set of picks (sampled at the labeler's temperature) stands in both tables
    return {"greedy": metrics, "sampled": dict(metrics), "n": n, "rm_calls": n * len(prompts)}


def _settings(key: str, c) -> dict:
    d = yaml.safe_load(yaml.safe_dump(to_dict(c), sort_keys=False)) if c is not None else {}
    d.pop("out", None)
    return d


def run_seed(cfg: CompareConfig, seed: int, show_progress: bool) -> dict:
    """Every method of one seed (finished ones reused); returns {"greedy", "sampled", "seconds", "methods"}."""
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.world import World

    inputs = prepare_seed(cfg, seed, show_progress)
    root = Path(cfg.out) / f"seed-{seed}"
    world = World(inputs["world"])
    prompts = world.prompts("eval")
    tokenizer = load_tokenizer(inputs["sft"])
    sft_model, rm = load_causal_lm(inputs["sft"]), load_reward_model(inputs["rm"])
    for m in (sft_model, rm):
        m.eval()
    evaluation = {"eval_sampling": to_dict(cfg.pipeline.eval_sampling),
                  "sampled_T": cfg.pipeline.eval_sampled_temperature,
                  "inputs": {k: v for k, v in inputs.items() if k in ("sft", "rm", "labels")}}
    results = {}
    for key in [BASELINE.lower(), *cfg.methods]:
        out = root / ("sft-eval" if key == "sft" else key)
        c = None if key in ("sft", "bon") else method_config(cfg, key, seed, inputs, out)
        want = {"method": key, "settings": _settings(key, c), "budget": cfg.budget if key == "bon" else None,
                "evaluation": evaluation}
        done = out / "compare.json"
        if done.is_file():
            have = json.loads(done.read_text())
            diff = study._first_difference(want, have.get("run"))
            if diff:
                raise RLHFError(f"{out}: finished with other settings ({diff[0]}: {study._short(diff[2])} there, "
                                f"{study._short(diff[1])} now); use another --out, or delete {out} to rerun it")
            results[key] = have
            console.print(f"seed {seed}: {METHODS.get(key, BASELINE)} finished in {out}, not rerun")
            continue
        console.rule(f"[bold]seed {seed}: {METHODS.get(key, BASELINE)}")
        t, c0 = time.time(), time.process_time()
        if key == "sft":
            res = _evaluate(sft_model, tokenizer, world, prompts, rm, sft_model, cfg, seed)
            res["rm_calls"] = 0
        elif key == "bon":
            res = _best_of_n(tokenizer, world, prompts, rm, sft_model, cfg, seed)
        else:
            _train(key, c, world, show_progress)
            train_s, train_cpu = time.time() - t, time.process_time() - c0
            model = load_causal_lm(out / "model")
            model.eval()
            res = _evaluate(model, tokenizer, world, prompts, rm, sft_model, cfg, seed)
            res["rm_calls"] = rm_calls(key, c)
            for d in (res["greedy"], res.get("sampled", {})):
                d.update(train_seconds=train_s, train_cpu_seconds=train_cpu)
        if key in ("sft", "bon"):  # no training: the time is the evaluation's (best-of-N's sampling included)
            for d in (res["greedy"], res.get("sampled", {})):
                d.update(train_seconds=time.time() - t, train_cpu_seconds=time.process_time() - c0)
        res.update(run=want, seconds=time.time() - t, cpu_seconds=time.process_time() - c0)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "compare.json.tmp"
        tmp.write_text(json.dumps(res, indent=1))
        tmp.rename(done)
        results[key] = res
    per_seed: dict = {"greedy": [], "sampled": [], "seconds": {}, "rm_calls": {}}
    for key, res in results.items():
        name = METHODS.get(key, BASELINE)
        for table in ("greedy", "sampled"):
            if table in res:
                per_seed[table].append({"stage": name, **{k: round(v, 4) for k, v in res[table].items()
                                                          if isinstance(v, (int, float)) and k != "n"}})
        per_seed["seconds"][name] = round(res["seconds"], 1)
        per_seed["rm_calls"][name] = res.get("rm_calls")
    return per_seed


# ---------------------------------------------------------------- the study

class _CompareDir(RunDir):
    """The compare directory also holds the seeds' runs: just before the new directory replaces the old one,
    every `seed-N` moves into it (a rename: never copied, never lost)."""

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.final.is_dir():
            for d in sorted(self.final.iterdir()):
                if d.name.startswith("seed-") and d.is_dir():
                    d.rename(self.path / d.name)
        super().__exit__(exc_type, exc, tb)


def plot_compare(result: dict, path: Path) -> None:
    """Gold per method (seeds as points, mean, min-max) and the paired difference to SFT; gold against KL."""
    study.plot_seeds(result, path)
    from rlhf.plots import pyplot

    plt = pyplot()

    if "greedy" not in result:
        return
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for row in result["greedy"]["stages"]:
        g, k = row.get("gold_mean"), row.get("kl_to_sft")
        if g and k:
            ax.errorbar(k["mean"], g["mean"], xerr=k["se"] or 0, yerr=g["se"] or 0, fmt="o", capsize=3)
            ax.annotate(row["stage"], (k["mean"], g["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("KL to SFT (nats per response)")
    ax.set_ylabel("mean gold reward (greedy, held-out)")
    ax.set_title("gold against KL to SFT (mean ± SE over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_name("gold_vs_kl.png"))
    plt.close(fig)


def _run_seed_job(job: tuple) -> dict:
    """One seed's methods (a module-level function: Ray ships it to its workers by name)."""
    return run_seed(*job)


def run(cfg: CompareConfig, show_progress: bool = True, ray: str | None = None, ray_cpus: int | None = None) -> Path:
    """`ray`: run the seeds as Ray tasks of `ray_cpus` CPUs each (`rlhf.studies.runner`), not one after another;
    the summary's cpu_seconds then count this process only."""
    cfg.validate()
    seeds, root = list(cfg.seeds), Path(cfg.out)
    if root.exists() and not root.is_dir():
        raise RLHFError(f"--out {root}: exists and is not a directory")
    t0, c0 = time.time(), time.process_time()
    if ray is None:
        per_seed = [run_seed(cfg, seed, show_progress) for seed in seeds]
    else:
        per_seed = map_runs(_run_seed_job, [(cfg, seed, False) for seed in seeds], ray=ray,
                            num_cpus=ray_cpus or default_cpus())
    result = aggregate(per_seed, seeds)
    result["rm_calls"] = [{"seed": s, **p["rm_calls"]} for s, p in zip(seeds, per_seed)]
    result["wall_seconds"], result["cpu_seconds"] = round(time.time() - t0, 1), round(time.process_time() - c0, 1)
    out_dir = _CompareDir(root, cfg)
    out_dir.started = t0
    with out_dir as run_dir:
        plot_compare(result, run_dir.sub("plots/gold_by_method.png"))
        T = cfg.pipeline.eval_sampled_temperature
        sections: dict[str, object] = {
            "setup": (f"seeds {', '.join(map(str, seeds))} (seed=N, world.seed=N); inputs per seed: "
                      f"{'from ' + cfg.source if cfg.source else 'built by the pipeline in <out>/seed-N/pipeline'}. "
                      f"Budget: {cfg.budget} reward-model calls per method (one call scores one sampled response; "
                      f"best-of-N spends them on the held-out prompts at inference; DPO calls no reward model and "
                      f"uses the simulated preference labels instead). Cells: mean ± standard error over seeds "
                      f"[min, max]; 'gold - SFT' is the paired difference per seed, mean ± SE over seeds. Seconds: "
                      f"training (SFT and best-of-N: their evaluation) wall and process CPU seconds."),
            "reward-model calls spent per seed": result["rm_calls"],
        }
        for name in study.TABLES:
            if name not in result:
                continue
            label = "greedy decoding" if name == "greedy" else f"sampled at T={T} (best-of-N: its picks)"
            sections[f"{name}: {label}, per method across seeds"] = table_rows(result[name])
            main, _ = study._stage_tables({"stages": [{k: v for k, v in row.items() if k != "verdict"}
                                                      for row in result[name]["stages"]]})
            sections[f"{name}: every gold metric across seeds"] = main
            sections[f"{name}: per seed"] = result[name]["per_seed"]
        sections["seconds per seed (training + evaluation)"] = result["seconds"]
        sections["this run"] = {"wall_seconds": result["wall_seconds"], "cpu_seconds": result["cpu_seconds"]}
        run_dir.write_summary(f"rlhf study compare: {len(cfg.methods)} methods over {len(seeds)} seeds", sections,
                              result)
    write_report([root])  # report.html beside summary.md
    return root
