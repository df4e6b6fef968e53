"""`rlhf study compare tune | test | protocol`: the methods compared fairly: each tuned on its own seeds, then
tested on other seeds along budget curves.

1. **Tune** (`tune_seeds`, e.g. 100, 101): every method runs the same number of trials (`TRIALS`, 4) of a
   small declared search (`SEARCH`: 2-3 hyperparameters per method, each level a factor on the method's
   configured value) at `tune_budget` reward-model calls, and each trial is scored by the gold reward on the
   world's *validation* prompts (`World.prompts("valid")`, disjoint from the test prompts), the mean of greedy
   and sampled decoding over the tuning seeds. The best trial per method is the choice. The search space,
   every trial and the choice go to `<out>/tune/choice.yaml`, which the test step reads.
2. **Test** (`seeds`, at least 3 for the report, disjoint from `tune_seeds`: an overlap is an error): each
   method runs once per test seed with its chosen settings at the full `budget`, saving checkpoints at the
   `points` budget points budget * i / points (one run truncated at budget B shares the learning-rate
   schedule of the full run); every checkpoint gets the compare evaluation on the world's test prompts (gold,
   hallucination, fact accuracy, refusal, ..., greedy and sampled; RM score; KL to SFT). Best-of-N samples
   N_max once per prompt and picks the best of the first N = B / (test prompts) at each point. DPO spends
   labels, not RM calls: its points are fractions of its preference pairs.
3. **Summary**: the table at the full budget (`compare.aggregate`: paired gold - SFT per seed, mean ± SE,
   k of n), the curves (gold, RM score and KL against RM calls, gold against KL, DPO's gold against labels),
   the over-optimization point per method (gold turns down while the RM score rises), and the cost per budget
   (training wall and CPU-seconds, gold gained per CPU-second).
Inputs per seed (SFT, RM, labels) come from `source` or are built once into `<out>/inputs/seed-N/pipeline`.
Finished trials and test runs are reused when rerun with the same settings.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import yaml

from rlhf.errors import RLHFError
from rlhf.progress import console
from rlhf.report import write_report
from rlhf.rollout import SamplingConfig
from rlhf.rundir import RunDir
from rlhf.studies import compare
from rlhf.studies import seeds as study
from rlhf.studies.compare import BASELINE, METHODS, CompareConfig

# The declared search: method -> {config key: levels}; every level is a factor on the key's configured value
# (the first level, 1, is the default). Two keys: the full 2 x 2 grid; three keys: the half of the 2^3 grid in
# which every level of each key appears twice and every pair of levels once; best-of-N has one key (its N is
# set by the budget), at four levels. So every method gets TRIALS trials.
SEARCH = {
    "ppo-ptx": {"ppo.kl.beta": [1, 0.5], "ppo.optim.lr": [1, 2], "ptx_coef": [1, 0.5]},
    "ppo": {"ppo.kl.beta": [1, 3], "ppo.optim.lr": [1, 0.5]},
    "dpo": {"dpo.beta": [1, 3], "dpo.optim.lr": [1, 4], "dpo.epochs": [1, 2]},
    "grpo": {"grpo.group_size": [1, 2], "grpo.beta": [1, 0.25], "grpo.optim.lr": [1, 4]},
    "rloo": {"rloo.group_size": [1, 2], "rloo.beta": [1, 0.25], "rloo.optim.lr": [1, 4]},
    "raft": {"raft.k": [1, 2], "raft.optim.lr": [1, 4]},
    "rrhf": {"rrhf.k": [1, 2], "rrhf.optim.lr": [1, 4]},
    "bon": {"pipeline.labels.sampling.temperature": [1, 0.7, 1.4, 1.7]},
}
TRIALS = 4
DESIGNS = {1: [(0,), (1,), (2,), (3,)], 2: [(0, 0), (0, 1), (1, 0), (1, 1)],
           3: [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]}
WHY = {"ppo-ptx": "Ouyang et al. 2022: the KL coefficient, the learning rate and the pretraining-loss weight",
       "ppo": "the KL coefficient and the learning rate (plain PPO has no pretraining loss)",
       "dpo": "Rafailov et al. 2023: beta; Xu et al. 2024 / Ivison et al. 2024: the learning rate and epochs",
       "grpo": "Shao et al. 2024: the group size, the KL coefficient and the learning rate",
       "rloo": "Ahmadian et al. 2024: the number of samples k, the KL coefficient and the learning rate",
       "raft": "Dong et al. 2023: the samples per prompt k and the learning rate",
       "rrhf": "Yuan et al. 2023: the responses per prompt k and the learning rate",
       "bon": "N is set by the budget (B / test prompts); the sampling temperature is searched instead"}
INTEGER_KEYS = {"group_size", "k"}
TABLE_METRICS = ("gold_mean", "rm_score", "kl_to_sft", "hallucination_rate", "fact_accuracy", "refusal_rate_harmful",
                 "over_refusal_rate")


@dataclass
class ProtocolConfig(CompareConfig):
    out: str = "runs/compare-protocol"
    # `seeds` are the test seeds; the tuning seeds must be other seeds
    tune_seeds: list[int] = field(default_factory=lambda: [100, 101])
    budget: int = 2560  # reward-model calls at the last budget point: the pipeline's PPO (40 steps x 64)
    points: int = 5  # budget points budget * i / points, i = 1..points
    tune_budget: int = 1024  # reward-model calls per tuning trial
    valid_prompts: int = 200  # validation prompts per tuning seed (World.prompts("valid"))
    draw: str = "inverse_cdf"  # the random stream of every sampler (inverse_cdf | multinomial)

    def validate(self) -> None:
        super().validate()
        study.parse_seeds(",".join(map(str, self.tune_seeds)))
        shared = sorted(set(self.tune_seeds) & set(self.seeds))
        if shared:
            raise RLHFError(f"tune seeds and test seeds share seed {shared[0]}: the test seeds must take no part "
                            f"in tuning (tune {_seeds(self.tune_seeds)}, test {_seeds(self.seeds)})")
        if self.points < 1 or self.valid_prompts < 2 or self.tune_budget < 1:
            raise RLHFError(f"expected points >= 1, valid_prompts >= 2 and tune_budget >= 1, got points "
                            f"{self.points}, valid_prompts {self.valid_prompts}, tune_budget {self.tune_budget}")
        if self.draw not in ("inverse_cdf", "multinomial"):
            raise RLHFError(f"draw: expected inverse_cdf or multinomial, got '{self.draw}'")
        for key in self.methods:
            for trial in trials(self, key):
                c = _with(self, trial["settings"])
                for b in (self.tune_budget, self.budget // self.points):
                    per = per_step_calls(c, key)
                    if per and b < per:
                        raise RLHFError(f"budget: {b} reward-model calls is less than one step of {METHODS[key]} "
                                        f"with {trial['settings']} ({per} calls)")
                if key != "bon":  # bad settings fail here, before anything runs, not as a failed trial
                    inputs = {"sft": "", "rm": "", "labels": "", "world": self.pipeline.world}
                    compare.method_config(c, key, 0, inputs, Path(".")).validate()


def _seeds(seeds) -> str:
    return ", ".join(map(str, seeds))


def set_draw(cfg, draw: str) -> None:
    """Every SamplingConfig inside the (nested dataclass) config draws its tokens with `draw`."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, SamplingConfig):
            v.draw = draw
        elif is_dataclass(v) and not isinstance(v, type):
            set_draw(v, draw)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with(cfg: ProtocolConfig, settings: dict) -> ProtocolConfig:
    """A copy of cfg with the dotted keys set."""
    c = copy.deepcopy(cfg)
    for dotted, value in settings.items():
        *path, last = dotted.split(".")
        obj = c
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return c


def trials(cfg: ProtocolConfig, key: str) -> list[dict]:
    """Method `key`'s trials: [{"trial": i, "factors": {...}, "settings": {dotted key: value}}]."""
    space = SEARCH[key]
    out = []
    for i, levels in enumerate(DESIGNS[len(space)]):
        factors = {k: space[k][lv] for k, lv in zip(space, levels)}
        settings = {}
        for k, f in factors.items():
            v = _get(cfg, k) * f
            settings[k] = max(1, round(v)) if k.rsplit(".", 1)[-1] in INTEGER_KEYS else float(f"{v:.6g}")
        out.append({"trial": i, "factors": factors, "settings": settings})
    return out


def per_step_calls(cfg: CompareConfig, key: str) -> int:
    """Reward-model calls one step (RAFT: one iteration) of method `key` spends; 0 for DPO and best-of-N."""
    return {"ppo-ptx": cfg.ppo.rollout_batch_size, "ppo": cfg.ppo.rollout_batch_size,
            "grpo": cfg.grpo.prompts_per_step * cfg.grpo.group_size,
            "rloo": cfg.rloo.prompts_per_step * cfg.rloo.group_size,
            "raft": cfg.raft.prompts_per_iteration * cfg.raft.k,
            "rrhf": cfg.rrhf.prompts_per_step * cfg.rrhf.k}.get(key, 0)


# ---------------------------------------------------------------- inputs, training and evaluation

def _inputs(cfg: ProtocolConfig, seed: int, show_progress: bool) -> dict:
    c = copy.deepcopy(cfg)
    c.out = str(Path(cfg.out) / "inputs")
    return compare.prepare_seed(c, seed, show_progress)


class _Seed:
    """One seed's world, models and prompts, loaded once."""

    def __init__(self, cfg: ProtocolConfig, seed: int, split: str, show_progress: bool):
        from rlhf.models.lm import load_causal_lm, load_tokenizer
        from rlhf.models.reward import load_reward_model
        from rlhf.world import World

        self.seed, self.inputs = seed, _inputs(cfg, seed, show_progress)
        self.world = World(self.inputs["world"])
        # the tuning step reads the validation prompts only, the test step the test prompts only
        self.prompts = (self.world.prompts("valid", cfg.valid_prompts) if split == "valid"
                        else self.world.prompts("eval"))
        self.tokenizer = load_tokenizer(self.inputs["sft"])
        self.sft, self.rm = load_causal_lm(self.inputs["sft"]), load_reward_model(self.inputs["rm"])
        for m in (self.sft, self.rm):
            m.eval()


def _evaluate(cfg: ProtocolConfig, s: _Seed, model) -> dict:
    """compare's evaluation (greedy and sampled gold metrics, RM score, KL to SFT) on the seed's prompts."""
    return compare._evaluate(model, s.tokenizer, s.world, s.prompts, s.rm, s.sft, cfg, s.seed)


def _best_of_n(cfg: ProtocolConfig, s: _Seed, ns: list[int]) -> list[dict]:
    """N_max = max(ns) samples per prompt, once; per n in ns the RM's pick of the first n, its gold metrics."""
    from rlhf.eval.gold_eval import score_responses, summarize
    from rlhf.models.reward import score_texts
    from rlhf.rollout import generate_texts

    n_max, prompts = max(ns), [p["prompt"] for p in s.prompts]
    flat = [p for p in prompts for _ in range(n_max)]
    texts = generate_texts(s.sft, s.tokenizer, flat, cfg.pipeline.labels.sampling, seed=s.seed)
    rm = score_texts(s.rm, s.tokenizer, flat, texts)
    out = []
    for n in ns:
        picks = [max(range(i * n_max, i * n_max + n), key=lambda j: rm[j]) for i in range(len(prompts))]
        metrics = summarize(score_responses(s.world, s.prompts, [texts[j] for j in picks]))
        metrics.update(rm_score=sum(rm[j] for j in picks) / len(picks), kl_to_sft=math.log(n) - (n - 1) / n)
        out.append({"greedy": metrics, "sampled": dict(metrics), "n": n, "rm_calls": n * len(prompts)})
    return out


def _train(cfg: ProtocolConfig, key: str, s: _Seed, budget: int, save_every: int, out: Path, show_progress: bool):
    """Train method `key` (cfg holds its settings) at `budget` RM calls into `out`; returns its trainer config."""
    c = compare.method_config(replace(cfg, budget=budget), key, s.seed, s.inputs, out)
    c.save_every = save_every
    compare._train(key, c, s.world, show_progress, ppo_stage=False)
    return c


def _steps(c, key: str) -> int:
    return c.iterations if key == "raft" else c.steps


def _dpo_steps(cfg: ProtocolConfig, s: "_Seed") -> int:
    """DPO's step count on the seed's labels, as train.dpo computes it from the rankings it trains on."""
    import torch

    from rlhf.data.sampler import train_eval_split
    from rlhf.train.dpo import load_pairs

    c = compare.method_config(cfg, "dpo", s.seed, s.inputs, Path("."))
    train, _ = train_eval_split(load_pairs(c)[0], c.eval_fraction, torch.Generator().manual_seed(c.seed))
    return max(1, int(c.epochs * len(train) / c.batch_size))


def _load(path: Path):
    from rlhf.models.lm import load_causal_lm

    m = load_causal_lm(path)
    m.eval()
    return m


def _done(path: Path, want: dict) -> dict | None:
    """A finished result at `path` run with `want`, or None; one run with other settings is an error."""
    if not path.is_file():
        return None
    have = json.loads(path.read_text())
    diff = study._first_difference(want, have.get("run"))
    if diff:
        raise RLHFError(f"{path.parent}: finished with other settings ({diff[0]}: {study._short(diff[2])} there, "
                        f"{study._short(diff[1])} now); use another --out, or delete {path.parent} to rerun it")
    return have


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.rename(path)


def _settings_of(cfg: ProtocolConfig, key: str) -> dict:
    """What a method run depends on: its trainer settings (or best-of-N's sampling) and the evaluation."""
    if key == "bon":
        return {"sampling": compare._settings("bon", cfg.pipeline.labels.sampling)}
    if key == "sft":
        return {}
    return {k: v for k, v in compare._settings(key, compare.method_config(
        cfg, key, 0, {"sft": "", "rm": "", "labels": "", "world": cfg.pipeline.world}, Path("."))).items()
        if k not in ("seed", "policy", "reward_model", "data", "steps", "iterations", "save_every", "world")}


# ---------------------------------------------------------------- tuning

def _trial(cfg: ProtocolConfig, key: str, trial: dict, s: _Seed, root: Path, show_progress: bool) -> dict:
    c = _with(cfg, trial["settings"])
    out = root / f"seed-{s.seed}" / key / f"trial-{trial['trial']}"
    want = {"method": key, "settings": trial["settings"], "budget": cfg.tune_budget, "run": _settings_of(c, key),
            "valid_prompts": cfg.valid_prompts}
    have = _done(out / "trial.json", want)
    if have:
        return have
    console.rule(f"[bold]tune seed {s.seed}: {METHODS[key]} trial {trial['trial']} {trial['settings']}")
    t, c0 = time.time(), time.process_time()
    res: dict = {"run": want}
    try:
        if key == "bon":
            n = max(2, cfg.tune_budget // cfg.pipeline.world.n_eval_prompts)
            ev = _best_of_n(c, s, [n])[0]
        else:
            _train(c, key, s, cfg.tune_budget, 0, out, show_progress)
            ev = _evaluate(c, s, _load(out / "model"))
            shutil.rmtree(out / "model", ignore_errors=True)  # the choice needs the numbers, not the weights
        res.update({d: {k: ev[d][k] for k in TABLE_METRICS if k in ev[d]} for d in ("greedy", "sampled")})
        res["score"] = (ev["greedy"]["gold_mean"] + ev["sampled"]["gold_mean"]) / 2
    except RLHFError as exc:  # e.g. a loss that became non-finite at a large learning rate: the trial fails
        res.update(failed=str(exc), score=None)
    res.update(seconds=time.time() - t, cpu_seconds=time.process_time() - c0)
    _write(out / "trial.json", res)
    return res


def tune(cfg: ProtocolConfig, show_progress: bool = True) -> dict:
    """Every method's trials on every tuning seed, scored on validation prompts; writes and returns the choice."""
    cfg.validate()
    root = Path(cfg.out) / "tune"
    console.print(f"tuning on seeds {_seeds(cfg.tune_seeds)} (validation prompts); test seeds "
                  f"{_seeds(cfg.seeds)} take no part")
    t0, c0 = time.time(), time.process_time()
    results: dict[str, list[dict]] = {k: [] for k in cfg.methods}
    for seed in cfg.tune_seeds:
        s = _Seed(cfg, seed, "valid", show_progress)
        for key in cfg.methods:
            for trial in trials(cfg, key):
                results[key].append({"seed": seed, "trial": trial["trial"], **_trial(cfg, key, trial, s, root,
                                                                                     show_progress)})
    methods = {}
    for key in cfg.methods:
        rows = []
        for trial in trials(cfg, key):
            runs = [r for r in results[key] if r["trial"] == trial["trial"]]
            scores = [r["score"] for r in runs if r.get("score") is not None]
            ok = len(scores) == len(runs)
            rows.append({**trial, "score": sum(scores) / len(scores) if ok else None,
                         "per_seed": [{"seed": r["seed"], "score": r.get("score"), "failed": r.get("failed"),
                                       "greedy_gold": r.get("greedy", {}).get("gold_mean"),
                                       "sampled_gold": r.get("sampled", {}).get("gold_mean"),
                                       "cpu_seconds": round(r["cpu_seconds"], 1)} for r in runs]})
        best = max((r for r in rows if r["score"] is not None), key=lambda r: r["score"], default=rows[0])
        methods[key] = {"why": WHY[key], "space": SEARCH[key], "trials": rows, "chosen": best["trial"],
                        "settings": best["settings"]}
    choice = {"tune_seeds": list(cfg.tune_seeds), "test_seeds": list(cfg.seeds), "tune_budget": cfg.tune_budget,
              "criterion": f"mean gold on {cfg.valid_prompts} validation prompts (World.prompts('valid'), never a "
                           "test prompt), greedy and sampled averaged, mean over the tuning seeds",
              "trials_per_method": TRIALS, "draw": cfg.draw, "methods": methods,
              "wall_seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "choice.yaml").write_text(yaml.safe_dump(choice, sort_keys=False))
    return choice


def read_choice(cfg: ProtocolConfig) -> dict:
    f = Path(cfg.out) / "tune" / "choice.yaml"
    try:
        choice = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RLHFError(f"{f}: cannot read the tuning choice ({exc}); run `rlhf study compare tune` first") from None
    if not isinstance(choice, dict) or not isinstance(choice.get("methods"), dict):
        raise RLHFError(f"{f}: not a tuning choice (no 'methods')")
    shared = sorted(set(choice.get("tune_seeds") or []) & set(cfg.seeds))
    if shared:
        raise RLHFError(f"{f}: tuned on seed {shared[0]}, which is a test seed now; test on seeds that took no "
                        "part in tuning")
    missing = [m for m in cfg.methods if m not in choice["methods"]]
    if missing:
        raise RLHFError(f"{f}: no choice for method '{missing[0]}'; tune it first")
    return choice


# ---------------------------------------------------------------- testing along the budget

def budget_points(cfg: ProtocolConfig) -> list[int]:
    return [cfg.budget * i // cfg.points for i in range(1, cfg.points + 1)]


def _test_method(cfg: ProtocolConfig, key: str, s: _Seed, root: Path, show_progress: bool) -> dict:
    """One method's run on one test seed: its evaluation at every budget point (DPO: label fraction)."""
    out = root / f"seed-{s.seed}" / key
    points = budget_points(cfg)
    want = {"method": key, "run": _settings_of(cfg, key), "points": points,
            "evaluation": {"eval_sampling": compare._settings("x", cfg.pipeline.eval_sampling),
                           "sampled_T": cfg.pipeline.eval_sampled_temperature}}
    have = _done(out / "curve.json", want)
    if have:
        console.print(f"test seed {s.seed}: {METHODS.get(key, BASELINE)} finished in {out}, not rerun")
        return have
    console.rule(f"[bold]test seed {s.seed}: {METHODS.get(key, BASELINE)}")
    t, c0 = time.time(), time.process_time()
    rows = []
    if key == "sft":
        ev = _evaluate(cfg, s, s.sft)
        rows.append({"budget": 0, "rm_calls": 0, "labels": 0, **ev})
    elif key == "bon":
        n_prompts = len(s.prompts)
        ns = [max(2, b // n_prompts) for b in points]
        evs = _best_of_n(cfg, s, ns)
        spent = time.process_time() - c0, time.time() - t
        for b, ev in zip(points, evs):  # one sample set: its cost shared out by the samples each pick reads
            share = ev["n"] / max(ns)
            rows.append({"budget": b, "rm_calls": ev["rm_calls"], "labels": 0, "n": ev["n"],
                         "greedy": ev["greedy"], "sampled": ev["sampled"],
                         "train_cpu_seconds": spent[0] * share, "train_seconds": spent[1] * share})
    else:
        if key == "dpo":
            total = _dpo_steps(cfg, s)  # points at multiples of total // points (one checkpoint each), and the end
            every = max(1, total // cfg.points)
            at = sorted({*(every * i for i in range(1, cfg.points) if every * i < total), total})
        else:
            per = per_step_calls(cfg, key)
            at = [b // per for b in points]
        every = every if key == "dpo" else math.gcd(*at)
        c = _train(cfg, key, s, cfg.budget, every, out, show_progress)
        wall, cpu = time.time() - t, time.process_time() - c0  # the whole training call, loading included
        summary = json.loads((out / "summary.json").read_text())["result"]
        steps = total if key == "dpo" else _steps(c, key)
        done = max(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*"))
        for i, step in enumerate(at):
            use = min(step, done)  # PPO may stop early at its KL budget: later points hold its last model
            model = _load(out / "checkpoints" / f"step-{use}" / "policy")
            ev = _evaluate(cfg, s, model)
            frac = use / steps
            row = {"budget": points[i] if key != "dpo" else 0, "step": use, "steps": steps,
                   "rm_calls": 0 if key == "dpo" else use * per_step_calls(cfg, key),
                   "labels": round(summary.get("pairs_trained", 0) * use / max(1, done)) if key == "dpo" else 0,
                   **ev}
            row["train_cpu_seconds"], row["train_seconds"] = cpu * frac, wall * frac
            rows.append(row)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # model/ keeps the last; the curve keeps the numbers
    res = {"run": want, "points": rows, "seconds": time.time() - t, "cpu_seconds": time.process_time() - c0}
    _write(out / "curve.json", res)
    return res


def test(cfg: ProtocolConfig, choice: dict, show_progress: bool = True) -> dict:
    """Each method with its chosen settings on every test seed, evaluated along the budget."""
    root = Path(cfg.out) / "test"
    console.print(f"testing on seeds {_seeds(cfg.seeds)}; tuned on seeds {_seeds(choice['tune_seeds'])}")
    t0, c0 = time.time(), time.process_time()
    curves: dict[str, dict[int, dict]] = {}
    for seed in cfg.seeds:
        s = _Seed(cfg, seed, "eval", show_progress)
        for key in ["sft", *cfg.methods]:
            c = cfg if key == "sft" else _with(cfg, choice["methods"][key]["settings"])
            curves.setdefault(key, {})[seed] = _test_method(c, key, s, root, show_progress)
    return {"curves": curves, "wall_seconds": round(time.time() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1)}


# ---------------------------------------------------------------- the summary (pure functions of the curves)

def _name(key: str) -> str:
    return METHODS.get(key, BASELINE)


def final_tables(curves: dict, seeds: list[int]) -> dict:
    """compare.aggregate at each method's last point: paired gold - SFT per seed, mean ± SE, k of n."""
    per_seed = []
    for seed in seeds:
        entry: dict = {"greedy": [], "sampled": [], "seconds": {}}
        for key, by_seed in curves.items():
            if seed not in by_seed:
                continue
            last = by_seed[seed]["points"][-1]
            for d in ("greedy", "sampled"):
                entry[d].append({"stage": _name(key), **{k: v for k, v in last[d].items()
                                                          if isinstance(v, (int, float)) and k != "n"},
                                 "train_cpu_seconds": last.get("train_cpu_seconds", 0.0)})
            entry["seconds"][_name(key)] = round(by_seed[seed]["seconds"], 1)
        per_seed.append(entry)
    return compare.aggregate(per_seed, seeds)


def curve_rows(curves: dict, sft_gold: dict[int, float] | None = None) -> list[dict]:
    """Per method and budget point: mean, SE, min, max over seeds of gold (greedy and sampled), RM score, KL,
    RM calls, labels and training CPU-seconds; gold gained over SFT per CPU-second."""
    rows = []
    for key, by_seed in curves.items():
        if key == "sft":
            continue
        n_points = min(len(c["points"]) for c in by_seed.values())
        for i in range(n_points):
            pts = {seed: c["points"][i] for seed, c in by_seed.items()}
            row = {"method": _name(key), "point": i + 1, "budget": next(iter(pts.values()))["budget"],
                   "n_seeds": len(pts)}
            for name, get in (("gold", lambda p: p["greedy"]["gold_mean"]),
                              ("gold_sampled", lambda p: p["sampled"]["gold_mean"]),
                              ("rm_score", lambda p: p["greedy"].get("rm_score")),
                              ("kl", lambda p: p["greedy"].get("kl_to_sft")),
                              ("rm_calls", lambda p: p["rm_calls"]), ("labels", lambda p: p.get("labels", 0)),
                              ("cpu_seconds", lambda p: p.get("train_cpu_seconds")),
                              ("wall_seconds", lambda p: p.get("train_seconds"))):
                xs = [x for p in pts.values() for x in [get(p)] if x is not None]
                if xs:
                    row[name] = {"mean": study._r(study._mean(xs)), "se": study._r(study._se(xs)),
                                 "min": study._r(min(xs)), "max": study._r(max(xs))}
            if sft_gold:
                gains = [(p["greedy"]["gold_mean"] - sft_gold[seed]) / p["train_cpu_seconds"]
                         for seed, p in pts.items() if seed in sft_gold and p.get("train_cpu_seconds")]
                if gains:
                    row["gain_per_cpu_s"] = study._r(study._mean(gains), 6)
            rows.append(row)
    return rows


def overoptimization(rows: list[dict], curves: dict) -> list[dict]:
    """Per method: the budget point of its highest mean gold, and whether it over-optimized after it: a later
    point whose gold is below the peak's on every test seed (the verdicts' rule: every seed agrees) while the
    mean RM score is above the peak's."""
    out = []
    for key, by_seed in curves.items():
        method = _name(key)
        pts = [r for r in rows if r["method"] == method and "gold" in r and "rm_score" in r]
        if key == "sft" or not pts:
            continue
        x = "labels" if key == "dpo" else "rm_calls"
        unit = "pairs" if key == "dpo" else "RM calls"
        peak = max(range(len(pts)), key=lambda i: pts[i]["gold"]["mean"])
        gold = {seed: [p["greedy"]["gold_mean"] for p in c["points"]] for seed, c in by_seed.items()}
        later = next((j for j in range(peak + 1, len(pts))
                      if all(g[j] < g[peak] for g in gold.values())
                      and pts[j]["rm_score"]["mean"] > pts[peak]["rm_score"]["mean"]), None)
        a = pts[peak]
        text = "none within the budget"
        if later is not None:
            b = pts[later]
            text = (f"after {a[x]['mean']:.0f} {unit}: gold {a['gold']['mean']:+.3f} -> {b['gold']['mean']:+.3f} at "
                    f"{b[x]['mean']:.0f} (lower on every seed), RM score {a['rm_score']['mean']:.2f} -> "
                    f"{b['rm_score']['mean']:.2f}")
        out.append({"method": method, "highest gold": f"{a['gold']['mean']:+.3f} at {a[x]['mean']:.0f} {unit}",
                    "over-optimization": text})
    return out


def _fmt(stat: dict | None, digits: int = 3, sign: bool = False) -> str:
    if not stat:
        return ""
    f = f"+.{digits}f" if sign else f".{digits}f"
    se = f" ± {stat['se']:.{digits}f}" if stat.get("se") is not None else ""
    return f"{stat['mean']:{f}}{se}"


def headline(agg: dict) -> list[dict]:
    """The table of one decoding at the full budget: gold - SFT (mean ± SE over seeds, k of n) and the rest."""
    paired = {p["b"]: p for p in agg["paired"]}
    rows = []
    for row in agg["stages"]:
        p = paired.get(row["stage"])
        rows.append({"method": row["stage"], "gold": _fmt(row.get("gold_mean")),
                     "gold - SFT": "" if p is None else (f"{p['mean']:+.3f} ± {p['se_seeds']:.3f}"
                                                         if p["se_seeds"] is not None else f"{p['mean']:+.3f}"),
                     "seeds better": "" if p is None else p["beats"],
                     "KL to SFT": _fmt(row.get("kl_to_sft"), 2), "RM score": _fmt(row.get("rm_score"), 2),
                     "hallucination": _fmt(row.get("hallucination_rate"), 2),
                     "fact acc.": _fmt(row.get("fact_accuracy"), 2),
                     "refusal (harmful)": _fmt(row.get("refusal_rate_harmful"), 2),
                     "over-refusal": _fmt(row.get("over_refusal_rate"), 2),
                     "train CPU-s": _fmt(row.get("train_cpu_seconds"), 0), "verdict": row["verdict"]})
    return rows


def cost_rows(rows: list[dict]) -> list[dict]:
    return [{"method": r["method"], "budget": r["budget"] if r["method"] != "DPO" else "labels",
             "RM calls": _fmt(r.get("rm_calls"), 0),
             "labels": _fmt(r.get("labels"), 0), "gold": _fmt(r.get("gold"), 3, True),
             "train wall s": _fmt(r.get("wall_seconds"), 1), "train CPU-s": _fmt(r.get("cpu_seconds"), 1),
             "(gold - SFT) per CPU-s": f"{r['gain_per_cpu_s']:+.5f}" if "gain_per_cpu_s" in r else ""}
            for r in rows]


def plot_curves(rows: list[dict], path: Path, sft_gold: float | None = None) -> None:
    """Four panels: gold and RM score against RM calls (mean, min-max band over seeds), gold against KL, and
    gold against preference pairs for DPO; SFT's mean gold as a dashed line."""
    from rlhf.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    panels = [(axes[0][0], "rm_calls", "gold", "reward-model calls", "gold reward (greedy, test prompts)"),
              (axes[0][1], "rm_calls", "rm_score", "reward-model calls", "RM score (greedy)"),
              (axes[1][0], "kl", "gold", "KL to SFT (nats per response)", "gold reward (greedy)"),
              (axes[1][1], "labels", "gold", "preference pairs trained on (DPO)", "gold reward (greedy)")]
    for ax, xk, yk, xl, yl in panels:
        for j, m in enumerate(methods):
            if (m == "DPO") != (xk == "labels") and xk != "kl":
                continue
            pts = [r for r in rows if r["method"] == m and xk in r and yk in r]
            if not pts:
                continue
            xs, ys = [r[xk]["mean"] for r in pts], [r[yk]["mean"] for r in pts]
            color = colors[j % len(colors)]
            ax.plot(xs, ys, "o-", color=color, label=m, ms=4)
            lo, hi = [r[yk]["min"] for r in pts], [r[yk]["max"] for r in pts]
            if xk == "kl":  # KL is not monotone in the budget: the seed range as bars
                ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                            fmt="none", ecolor=color, alpha=0.4, capsize=2)
            else:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12)
        if yk == "gold" and sft_gold is not None:
            ax.axhline(sft_gold, color="k", ls="--", lw=0.8, label="SFT")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("each method along its budget: mean over test seeds, band = min-max over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cost(rows: list[dict], path: Path) -> None:
    from rlhf.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == m and "cpu_seconds" in r]
        if pts:
            ax.plot([r["cpu_seconds"]["mean"] for r in pts], [r["gold"]["mean"] for r in pts], "o-", ms=4, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("training CPU-seconds (one thread; best-of-N: sampling and scoring)")
    ax.set_ylabel("gold reward (greedy, test prompts)")
    ax.set_title("gold against cost (mean over test seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- the protocol

class _ProtocolDir(RunDir):
    """The protocol's directory also holds inputs/, tune/ and test/: they move into the new directory just
    before it replaces the old one (a rename: never copied, never lost)."""

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.final.is_dir():
            for name in ("inputs", "tune", "test"):
                if (self.final / name).is_dir():
                    (self.final / name).rename(self.path / name)
        super().__exit__(exc_type, exc, tb)


def run(cfg: ProtocolConfig, step: str = "protocol", show_progress: bool = True) -> Path:
    """step: tune (the choice only), test (reads the choice), protocol (both), then the summary."""
    cfg.validate()
    set_draw(cfg, cfg.draw)
    root = Path(cfg.out)
    if root.exists() and not root.is_dir():
        raise RLHFError(f"--out {root}: exists and is not a directory")
    t0, c0 = time.time(), time.process_time()
    console.print(f"tuning seeds: {_seeds(cfg.tune_seeds)}; test seeds: {_seeds(cfg.seeds)} (disjoint)")
    inputs = {}
    for seed in [*cfg.tune_seeds, *cfg.seeds] if step == "protocol" else []:
        t, c = time.time(), time.process_time()
        _inputs(cfg, seed, show_progress)
        inputs[seed] = {"wall_seconds": round(time.time() - t, 1), "cpu_seconds": round(time.process_time() - c, 1)}
    choice = tune(cfg, show_progress) if step in ("tune", "protocol") else read_choice(cfg)
    if step == "tune":
        console.print(f"wrote {root / 'tune' / 'choice.yaml'}")
        return root / "tune"
    tested = test(cfg, choice, show_progress)
    curves = tested["curves"]
    result = final_tables(curves, list(cfg.seeds))
    sft_gold = {seed: c["points"][0]["greedy"]["gold_mean"] for seed, c in curves["sft"].items()}
    rows = curve_rows(curves, sft_gold)
    result.update(curve=rows, overoptimization=overoptimization(rows, curves), choice=choice, inputs=inputs,
                  tune_seeds=list(cfg.tune_seeds), test_seeds=list(cfg.seeds), points=budget_points(cfg),
                  timing={"inputs_wall_seconds": round(sum(v["wall_seconds"] for v in inputs.values()), 1),
                          "inputs_cpu_seconds": round(sum(v["cpu_seconds"] for v in inputs.values()), 1),
                          "tune_wall_seconds": choice["wall_seconds"], "tune_cpu_seconds": choice["cpu_seconds"],
                          "test_wall_seconds": tested["wall_seconds"], "test_cpu_seconds": tested["cpu_seconds"],
                          "wall_seconds": round(time.time() - t0, 1),
                          "cpu_seconds": round(time.process_time() - c0, 1)})
    out_dir = _ProtocolDir(root, cfg)
    out_dir.started = t0
    with out_dir as run_dir:
        plot_curves(rows, run_dir.sub("plots/budget_curves.png"), study._mean(list(sft_gold.values())))
        plot_cost(rows, run_dir.sub("plots/gold_vs_cpu.png"))
        compare.plot_compare(result, run_dir.sub("plots/gold_by_method.png"))
        T = cfg.pipeline.eval_sampled_temperature
        sections: dict[str, object] = {
            "protocol": (f"tuning seeds {_seeds(cfg.tune_seeds)}, test seeds {_seeds(cfg.seeds)} (disjoint; each "
                         f"seed=N, world.seed=N); random stream: {cfg.draw}. Tuning: {TRIALS} trials per method at "
                         f"{cfg.tune_budget} reward-model calls, scored by {choice['criterion']}. Test: the chosen "
                         f"settings at {cfg.budget} calls, evaluated at {_seeds(budget_points(cfg))} calls (one run "
                         f"per method and seed, its checkpoints; DPO: the same fractions of its preference pairs) on "
                         f"the world's test prompts. Cells: mean ± SE over the test seeds."),
            "the choice per method (tune/choice.yaml)": [
                {"method": _name(k), "chosen trial": m["chosen"], "settings": m["settings"],
                 "validation gold per trial": ", ".join("failed" if t["score"] is None else f"{t['score']:+.3f}"
                                                        for t in m["trials"])}
                for k, m in choice["methods"].items()],
        }
        for name in study.TABLES:
            if name in result:
                label = "greedy" if name == "greedy" else f"sampled at T={T} (best-of-N: its picks)"
                sections[f"{label}, at the full budget"] = headline(result[name])
        sections["over-optimization per method"] = result["overoptimization"]
        sections["cost and gold along the budget"] = cost_rows(rows)
        sections["time"] = result["timing"]
        run_dir.write_summary(f"rlhf study compare protocol: {len(cfg.methods)} methods, tuned on "
                              f"{len(cfg.tune_seeds)} seeds, tested on {len(cfg.seeds)}", sections, result)
    write_report([root])
    return root
