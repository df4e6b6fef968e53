"""`rlhf study seeds`: the whole pipeline once per seed, then its result with seeds as the unit.

Seed N runs `rlhf.pipeline.run` with `seed=N` and `world.seed=N` (a new world and new training randomness)
into `<out>/seed-N/`. A seed whose directory holds a finished pipeline (its summary.json) is reused, not
rerun; one finished with a different config is an error, never mixed in. `aggregate` (a pure function of the
per-seed pipeline summaries) then gives, for the greedy and the sampled table of every pipeline summary:
- per stage and gold metric: the mean over seeds, the spread (min, max) and the standard error over seeds;
- the paired gold difference between stages (PPO - SFT, SFT - pretrained, ...) per seed, its mean, standard
  error over seeds, t = mean / SE, and in how many seeds it is positive;
- the pooled test over all seeds' prompts: each seed's difference has the prompt-level standard error
  sqrt(se_a^2 + se_b^2) (the pipeline's own test), so the mean difference has SE sqrt(sum se_i^2) / n
  (every seed evaluates the same number of held-out prompts, so the pooled mean is the mean over seeds);
- the issue's targets, for every RL row (PPO, and PPO averaged with the pretrained weights): it beats SFT in
  every seed, pooled gain > 3 SE, hallucination rate down >= 50% relative to SFT (of the mean over seeds),
  fact accuracy within 5 points of the pretrained model; and at most 10 minutes per seed.
Each seed's extra numbers from its pipeline summary (`stages`: labels, reward model, PPO) and its stage
seconds are shown per seed, so a reader can see why one seed differs.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlhf.config import to_dict
from rlhf.errors import RLHFError
from rlhf.pipeline import PipelineConfig
from rlhf.progress import console
from rlhf.report import write_report
from rlhf.rundir import RunDir
from rlhf.studies.runner import default_cpus, map_runs

TABLES = {"greedy": "table", "sampled": "sampled_table"}
# rates compared between stages per seed, beside the gold difference
PAIRED_RATES = ("hallucination_rate", "fact_accuracy")
SECONDS_PER_SEED_TARGET = 600.0


@dataclass
class SeedsConfig:
    out: str = "runs/seeds"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # a finished study: each seed's pipeline reuses the matching leading stages of its seed-N (pipeline.reuse)
    reuse: str | None = None


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is one line naming the value."""
    try:
        seeds = [int(part) for part in str(text).split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise RLHFError(f"--seeds: expected comma-separated non-negative integers such as 0,1,2, got '{text}'")
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if dup is not None:
        raise RLHFError(f"--seeds: seed {dup} is given twice in '{text}'")
    return seeds


# ---------------------------------------------------------------- aggregation (pure)

def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _se(xs: list[float]) -> float | None:
    """Standard error of the mean, the sample standard deviation (n - 1) over sqrt(n); None for one value."""
    n = len(xs)
    if n < 2:
        return None
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def _r(v, digits: int = 4):
    return None if v is None else round(v, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None where b is zero (or float noise: the tables hold 3 decimals)."""
    return None if a is None or b is None or abs(b) < 1e-9 else a / b


def _aggregate_table(tables: list[list[dict]], seeds: list[int]) -> dict:
    by_seed = [{row["stage"]: row for row in table} for table in tables]
    stages = list(dict.fromkeys(row["stage"] for table in tables for row in table))
    metrics = list(dict.fromkeys(k for table in tables for row in table for k, v in row.items()
                                 if k not in ("stage", "gold_se") and _num(v) is not None))
    stage_rows = []
    for stage in stages:
        row = {"stage": stage, "n_seeds": sum(stage in b for b in by_seed)}
        for m in metrics:
            xs = [x for b in by_seed if stage in b for x in [_num(b[stage].get(m))] if x is not None]
            if xs:
                row[m] = {"mean": _r(_mean(xs)), "min": _r(min(xs)), "max": _r(max(xs)), "se": _r(_se(xs))}
        stage_rows.append(row)
    per_seed = [{"stage": stage, "seed": seed, **{k: v for k, v in b[stage].items() if k != "stage"}}
                for stage in stages for seed, b in zip(seeds, by_seed) if stage in b]

    pairs = []
    if "SFT" in stages and "pretrained" in stages:
        pairs.append(("SFT", "pretrained"))
    pairs += [(b, "SFT") for b in stages if b not in ("pretrained", "SFT") and "SFT" in stages]
    paired = [_paired(b_stage, a_stage, by_seed, seeds) for b_stage, a_stage in pairs]
    paired = [p for p in paired if p is not None]
    return {"stages": stage_rows, "per_seed": per_seed, "paired": paired,
            "targets": _targets(stages, stage_rows, paired, by_seed, seeds)}


def _paired(b: str, a: str, by_seed: list[dict], seeds: list[int]) -> dict | None:
    rows, variances = [], []
    for seed, table in zip(seeds, by_seed):
        if a not in table or b not in table:
            continue
        ga, gb = _num(table[a].get("gold_mean")), _num(table[b].get("gold_mean"))
        if ga is None or gb is None:
            continue
        sa, sb = _num(table[a].get("gold_se")) or 0.0, _num(table[b].get("gold_se")) or 0.0
        diff, se = gb - ga, math.sqrt(sa ** 2 + sb ** 2)
        row = {"seed": seed, "gold_a": ga, "gold_b": gb, "diff": _r(diff), "se": _r(se),
               "z": _r(_ratio(diff, se), 2)}
        for rate in PAIRED_RATES:
            row[f"{rate}_a"], row[f"{rate}_b"] = _num(table[a].get(rate)), _num(table[b].get(rate))
        rows.append(row)
        variances.append(se ** 2)
    if not rows:
        return None
    diffs = [r["gold_b"] - r["gold_a"] for r in rows]
    n, mean, se = len(rows), _mean(diffs), _se(diffs)
    pooled_se = math.sqrt(sum(variances)) / n
    wins = sum(d > 0 for d in diffs)
    return {"comparison": f"{b} - {a}", "a": a, "b": b, "n_seeds": n, "mean": _r(mean), "se_seeds": _r(se),
            "t": _r(_ratio(mean, se), 2), "positive_seeds": wins, "beats": f"{wins} of {n}",
            "pooled_se": _r(pooled_se), "pooled_z": _r(_ratio(mean, pooled_se), 2), "per_seed": rows}


def _targets(stages, stage_rows, paired, by_seed, seeds) -> list[dict]:
    """The issue's targets for every RL row (PPO, and PPO averaged with the pretrained weights)."""
    if "SFT" not in stages:
        return []
    return [t for ppo in stages if ppo.startswith("PPO")
            for t in _targets_for(ppo, stages, stage_rows, paired, by_seed, seeds)]


def _targets_for(ppo, stages, stage_rows, paired, by_seed, seeds) -> list[dict]:
    agg = {row["stage"]: row for row in stage_rows}
    vs_sft = next((p for p in paired if p["b"] == ppo and p["a"] == "SFT"), None)
    if vs_sft is None:
        return []
    out = [{"target": f"{ppo} beats SFT on mean gold in every seed", "value": vs_sft["beats"],
            "met": vs_sft["positive_seeds"] == vs_sft["n_seeds"]},
           {"target": f"pooled gain {ppo} - SFT > 3 standard errors",
            "value": f"{vs_sft['mean']:+.3f} = {vs_sft['pooled_z']} SE" if vs_sft["pooled_z"] is not None else "n/a",
            "met": vs_sft["pooled_z"] is not None and vs_sft["pooled_z"] > 3}]

    def mean_of(stage, metric):
        return agg.get(stage, {}).get(metric, {}).get("mean")

    h_sft, h_ppo = mean_of("SFT", "hallucination_rate"), mean_of(ppo, "hallucination_rate")
    drop = None if h_sft is None or h_ppo is None or h_sft == 0 else 1 - h_ppo / h_sft
    per_seed, above = [], []
    for seed, table in zip(seeds, by_seed):
        hs, hp = (_num(table.get(s, {}).get("hallucination_rate")) for s in ("SFT", ppo))
        per_seed.append(f"{seed}: {1 - hp / hs:.0%}" if hs and hp is not None else f"{seed}: n/a")
        if hs is not None and hp is not None and hp > hs:
            above.append(f"{seed}: {hs:.2f} -> {hp:.2f}")
    out.append({"target": f"hallucination rate {ppo} vs SFT down >= 50% (of the mean over seeds)",
                "value": (f"{h_sft:.3f} -> {h_ppo:.3f} ({drop:.0%} down; per seed {', '.join(per_seed)})"
                          if drop is not None else "n/a"),
                "met": drop is not None and drop >= 0.5})
    out.append({"target": f"hallucination rate {ppo} above SFT's on no seed",
                "value": "above on " + ", ".join(above) if above else f"at or below on all {len(seeds)} seeds",
                "met": h_sft is not None and h_ppo is not None and not above})
    if "pretrained" in stages:
        f_pre, f_ppo = mean_of("pretrained", "fact_accuracy"), mean_of(ppo, "fact_accuracy")
        gap = None if f_pre is None or f_ppo is None else f_ppo - f_pre
        per_seed = []
        for seed, table in zip(seeds, by_seed):
            fp, fo = (_num(table.get(s, {}).get("fact_accuracy")) for s in ("pretrained", ppo))
            per_seed.append(f"{seed}: {fo - fp:+.2f}" if fp is not None and fo is not None else f"{seed}: n/a")
        out.append({"target": f"fact accuracy {ppo} within 5 points of pretrained (gap >= -0.05)",
                    "value": (f"{f_pre:.3f} -> {f_ppo:.3f} (gap {gap:+.3f}; per seed {', '.join(per_seed)})"
                              if gap is not None else "n/a"),
                    "met": gap is not None and gap >= -0.05})
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = _r(v) if isinstance(v, float) and math.isfinite(v) else v
    return out


def aggregate(summaries: list[dict], seeds: list[int] | None = None) -> dict:
    """Per-seed pipeline summary dicts (summary.json of `rlhf pipeline`) -> the result across seeds."""
    seeds = list(range(len(summaries))) if seeds is None else list(seeds)
    if len(seeds) != len(summaries):
        raise ValueError(f"{len(summaries)} summaries but {len(seeds)} seeds")
    out: dict = {"seeds": seeds}
    for name, key in TABLES.items():
        tables = [s.get(key) if isinstance(s.get(key), list) else [] for s in summaries]
        if any(tables):
            out[name] = _aggregate_table(tables, seeds)
    out["per_seed_stages"] = [{"seed": seed, **_flatten(s.get("stages") or {})} for seed, s in zip(seeds, summaries)]
    seconds = []
    for seed, s in zip(seeds, summaries):
        secs = {k: v for k, v in (s.get("seconds") or {}).items() if _num(v) is not None}
        seconds.append({"seed": seed, **secs, "total": _r(sum(secs.values()), 1) if secs else None})
    out["seconds"] = seconds
    totals = [row["total"] for row in seconds if row["total"] is not None]
    out["targets"] = [{**t, "decoding": name} for name in TABLES if name in out for t in out[name]["targets"]]
    if totals and len(totals) == len(seeds):
        each = ", ".join(f"{s}: {t:.0f}s" for s, t in zip(seeds, totals))
        out["targets"].append({"target": f"at most {SECONDS_PER_SEED_TARGET / 60:g} minutes per seed (whole pipeline)",
                               "value": f"max {max(totals):.0f}s (per seed {each})",
                               "met": max(totals) <= SECONDS_PER_SEED_TARGET, "decoding": "-"})
    return out


# ---------------------------------------------------------------- presentation

def _cell(stat: dict | None) -> str:
    if not stat:
        return ""
    se = f" ± {stat['se']:.3f}" if stat.get("se") is not None else ""
    return f"{stat['mean']:.3f}{se} [{stat['min']:.3f}, {stat['max']:.3f}]"


def _stage_tables(agg: dict) -> tuple[list[dict], list[dict]]:
    """Markdown rows: the headline metrics, and the gold reward per prompt kind."""
    main, kinds = [], []
    for row in agg["stages"]:
        metrics = [k for k in row if k not in ("stage", "n_seeds")]
        main.append({"stage": row["stage"], "seeds": row["n_seeds"],
                     **{("gold" if m == "gold_mean" else m): _cell(row[m]) for m in metrics
                        if m == "gold_mean" or not m.startswith("gold_")}})
        kinds.append({"stage": row["stage"], **{m[5:]: _cell(row[m]) for m in metrics
                                                if m.startswith("gold_") and m != "gold_mean"}})
    return main, kinds


def _paired_rows(agg: dict) -> tuple[list[dict], list[dict]]:
    summary = [{k: "n/a" if p[k] is None else p[k]
                for k in ("comparison", "mean", "se_seeds", "t", "beats", "pooled_se", "pooled_z")}
               for p in agg["paired"]]

    def arrow(r, key, fmt):
        a, b = r[f"{key}_a"], r[f"{key}_b"]
        return "" if a is None or b is None else f"{a:{fmt}} -> {b:{fmt}}"

    per_seed = [{"comparison": p["comparison"], "seed": r["seed"], "gold": arrow(r, "gold", "+.3f"),
                 "diff": r["diff"], "se": r["se"], "z": "n/a" if r["z"] is None else r["z"],
                 **{rate: arrow(r, rate, ".2f") for rate in PAIRED_RATES}}
                for p in agg["paired"] for r in p["per_seed"]]
    return summary, per_seed


def _transpose(rows: list[dict]) -> list[dict]:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "seed"))
    return [{"quantity": k, **{f"seed {r['seed']}": r.get(k, "") for r in rows}} for k in keys]


def plot_seeds(result: dict, path: Path) -> None:
    """Per stage, the gold reward of each seed as a point, the mean as a bar and the min-max spread."""
    from rlhf.plots import pyplot

    plt = pyplot()

    names = [n for n in TABLES if n in result]
    if not names:
        return
    seeds = result["seeds"]
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.8 * len(names)), dpi=100, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(names):
        agg, (ax, axd) = result[name], axes[j]
        stages = [row["stage"] for row in agg["stages"]]
        width = 0.5
        for i, row in enumerate(agg["stages"]):
            g = row.get("gold_mean")
            if not g:
                continue
            ax.vlines(i, g["min"], g["max"], color="0.6", lw=6, alpha=0.5, zorder=1)
            ax.hlines(g["mean"], i - width / 2, i + width / 2, color="k", lw=2, zorder=3)
        for k, seed in enumerate(seeds):
            off = (k - (len(seeds) - 1) / 2) * (width / max(1, len(seeds)))
            pts = [(i, r["gold_mean"]) for i, st in enumerate(stages) for r in agg["per_seed"]
                   if r["stage"] == st and r["seed"] == seed and _num(r.get("gold_mean")) is not None]
            if pts:
                ax.scatter([i + off for i, _ in pts], [y for _, y in pts], s=22, color=colors[k % len(colors)],
                           label=f"seed {seed}", zorder=4)
        ax.set_xticks(range(len(stages)), [s.replace(" (", "\n(").replace(" + ", "\n+ ") for s in stages], fontsize=7)
        ax.set_ylabel("mean gold reward (held-out prompts)")
        ax.set_title(f"{name}: per seed, mean (bar), min-max (grey)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
        for i, p in enumerate(agg["paired"]):
            for k, r in enumerate(p["per_seed"]):
                off = (k - (len(p["per_seed"]) - 1) / 2) * 0.12
                axd.errorbar(i + off, r["diff"], yerr=r["se"], fmt="o", ms=4, capsize=2,
                             color=colors[seeds.index(r["seed"]) % len(colors)] if r["seed"] in seeds else "k")
            axd.hlines(p["mean"], i - 0.3, i + 0.3, color="k", lw=2)
        axd.set_xticks(range(len(agg["paired"])), [p["comparison"].replace(" - ", "\n- ") for p in agg["paired"]],
                       fontsize=7)
        axd.axhline(0, color="k", lw=0.6)
        axd.set_title(f"{name}: gold difference per seed (± prompt SE), mean", fontsize=9)
        axd.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- running

def seed_config(cfg: SeedsConfig, seed: int) -> PipelineConfig:
    p = copy.deepcopy(cfg.pipeline)
    p.seed, p.world.seed, p.out = seed, seed, str(Path(cfg.out) / f"seed-{seed}")
    if cfg.reuse is not None and (Path(cfg.reuse) / f"seed-{seed}" / "config.yaml").is_file():
        p.reuse = str(Path(cfg.reuse) / f"seed-{seed}")
    return p


def _first_difference(want, have, path: str = ""):
    if isinstance(want, dict) and isinstance(have, dict):
        for k in list(dict.fromkeys([*want, *have])):
            if k not in have or k not in want:
                return f"{path}{k}", want.get(k, "<absent>"), have.get(k, "<absent>")
            d = _first_difference(want[k], have[k], f"{path}{k}.")
            if d:
                return d
        return None
    return None if want == have else (path.rstrip("."), want, have)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _check_finished(seed_dir: Path, expected: PipelineConfig) -> None:
    """A finished seed is reused only if it ran the config asked for now (its `out` and `reuse` aside: linking
    finished stages in changes no result)."""
    try:
        have = yaml.safe_load((seed_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RLHFError(f"{seed_dir / 'config.yaml'}: cannot read the finished seed's config ({exc})") from None
    want = yaml.safe_load(yaml.safe_dump(to_dict(expected), sort_keys=False))
    if not isinstance(have, dict):
        raise RLHFError(f"{seed_dir / 'config.yaml'}: not a pipeline config")
    for key in ("out", "reuse"):
        have.pop(key, None), want.pop(key, None)
    diff = _first_difference(want, have)
    if diff:
        key, w, h = diff
        raise RLHFError(f"{seed_dir}: finished with a different config ({key}: {_short(h)} there, {_short(w)} now); "
                        f"use another --out, or delete {seed_dir} to rerun that seed")


def _read_summary(seed_dir: Path) -> dict:
    f = seed_dir / "summary.json"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise RLHFError(f"{f}: cannot read the pipeline summary ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("table"), list):
        raise RLHFError(f"{f}: not a pipeline summary (no 'table')")
    return data


class _StudyDir(RunDir):
    """The study's run directory, which also holds the seeds' pipeline runs: just before the new directory
    replaces the old one, every finished `seed-N` moves into it (a rename: never copied, never lost)."""

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.final.is_dir():
            moved = []
            try:
                for d in sorted(self.final.iterdir()):
                    if d.name.startswith("seed-") and d.name[5:].isdigit() and (d / "summary.json").is_file():
                        d.rename(self.path / d.name)
                        moved.append(d.name)
            except OSError as err:
                for name in moved:
                    (self.path / name).rename(self.final / name)
                super().__exit__(type(err), err, None)
                raise RLHFError(f"{self.final}: cannot move the seed runs into the new study directory "
                                f"({err})") from None
        super().__exit__(exc_type, exc, tb)


def _run_seed(job: tuple[PipelineConfig, bool]) -> None:
    """One seed's pipeline (a module-level function: Ray ships it to its workers by name)."""
    from rlhf import pipeline

    pipeline.run(*job)


def run(cfg: SeedsConfig, show_progress: bool = True, ray: str | None = None, ray_cpus: int | None = None) -> Path:
    """`ray`: run the seeds as Ray tasks of `ray_cpus` CPUs each (`rlhf.studies.runner`), not one after another."""
    seeds = parse_seeds(",".join(map(str, cfg.seeds)))
    t0, root = time.time(), Path(cfg.out)
    if root.exists() and not root.is_dir():
        raise RLHFError(f"--out {root}: exists and is not a directory")
    reused, todo = [], []
    for seed in seeds:  # every finished seed is checked before anything runs
        seed_dir = root / f"seed-{seed}"
        if (seed_dir / "summary.json").is_file():
            _check_finished(seed_dir, seed_config(cfg, seed))
            reused.append(seed)
        else:
            todo.append(seed)
    if reused:
        console.print(f"seeds {', '.join(map(str, reused))}: finished in {root}, not rerun")
    if ray is None:
        for seed in todo:
            console.rule(f"[bold]seed {seed} ({todo.index(seed) + 1} of {len(todo)} to run)")
            _run_seed((seed_config(cfg, seed), show_progress))
    elif todo:
        jobs = [(seed_config(cfg, seed), show_progress) for seed in todo]
        map_runs(_run_seed, jobs, ray=ray, num_cpus=ray_cpus or default_cpus())
    result = aggregate([_read_summary(root / f"seed-{s}") for s in seeds], seeds)
    result["ran_now"], result["reused"] = todo, reused
    study_dir = _StudyDir(root, cfg)
    study_dir.started = t0  # the wall time in summary.md counts the seeds run now
    with study_dir as run_dir:
        plot_seeds(result, run_dir.sub("plots/gold_by_seed.png"))
        sections: dict[str, object] = {
            "seeds": f"{', '.join(map(str, seeds))} (each: seed=N, world.seed=N; run now: "
                     f"{', '.join(map(str, todo)) or 'none'}; reused: {', '.join(map(str, reused)) or 'none'}). "
                     "Cells: mean ± standard error over seeds [min, max].",
            "targets": result["targets"] or "no PPO and SFT stages to compare"}
        for name in TABLES:
            if name not in result:
                continue
            agg = result[name]
            main, kinds = _stage_tables(agg)
            paired, paired_seed = _paired_rows(agg)
            sections[f"{name}: gold metrics across seeds"] = main
            sections[f"{name}: gold reward by prompt kind across seeds"] = kinds
            title = f"{name}: paired gold differences (seeds as the unit; pooled over all seeds' prompts)"
            sections[title] = paired or "none"
            sections[f"{name}: paired differences per seed"] = paired_seed or "none"
            sections[f"{name}: per seed"] = agg["per_seed"]
        sections["per seed: labels, reward model, PPO"] = _transpose(result["per_seed_stages"])
        sections["per seed: stage seconds"] = result["seconds"]
        run_dir.write_summary(f"RLHF pipeline over {len(seeds)} seeds", sections, result)
    write_report([root])  # report.html beside summary.md
    return root
