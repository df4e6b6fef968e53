"""The outer loop every on-policy RL trainer shares: steps with a progress bar, metrics, the caller's hooks
(gold score, evaluation, per-iteration metrics and stop requests), sample tables, checkpoints, the
summary, and the one place where a non-finite loss ends a run.

A trainer hands in an object with `name`, `plots` (metric groups), `step(i) -> (metrics, Experience)`,
`save_checkpoint(path, step)`, `save_model(path)`, `models() -> Models` (for evaluation) and
`result() -> dict` (its summary scalars).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlhf.data.jsonl import write_jsonl
from rlhf.progress import progress_bar
from rlhf.rollout.experience import Experience, Models
from rlhf.rundir import RunDir
from rlhf.train.common import NonFiniteLoss


@dataclass
class Hooks:
    """What a caller plugs into an RL run. gold(prompt, response): a score logged beside the RM's (the
    world's gold reward in the pipeline); evaluate(models): metrics logged as eval_* every eval_every steps
    and before the first; on_iteration(step, metrics, batch): a dict of more metrics, whose "stop" key
    (a reason) ends the run cleanly after this step, with a checkpoint. A trainer's step may return a "stop"
    metric as well (PPO: a spent KL budget), after which nothing more is trained."""
    gold: Callable[[object, str], float] | None = None
    evaluate: Callable[[Models], dict] | None = None
    on_iteration: Callable[[int, dict, Experience], dict | None] | None = None


def rl_loop(trainer, cfg, run_dir: RunDir, start: int, hooks: Hooks, show_progress: bool,
            title: str) -> NonFiniteLoss | None:
    """Steps start..cfg.steps; writes samples, plots and the summary. A non-finite loss ends the run early,
    keeping a checkpoint only if the failing step applied no update; it is returned, for the caller to raise
    once the run directory is complete."""
    t0, progress = time.time(), {"done": start, "row": {}, "samples": []}
    stopped = None
    try:
        stopped = _steps(trainer, cfg, run_dir, start, hooks, show_progress, progress)
        trainer.save_checkpoint(run_dir.sub(f"checkpoints/step-{progress['done']}"), progress["done"])
    except NonFiniteLoss as exc:
        stopped = exc
        if exc.updates_applied == 0:  # nothing applied in the failed step: the weights are the last step's
            trainer.save_checkpoint(run_dir.sub(f"checkpoints/step-{progress['done']}"), progress["done"])
    if not isinstance(stopped, NonFiniteLoss) or stopped.updates_applied == 0:
        trainer.save_model(run_dir.sub("model"))
    write_jsonl(run_dir.sub("samples.jsonl"), progress["samples"])
    run_dir.plot_metrics(trainer.plots)
    episodes, row = (progress["done"] - start) * cfg.rollout_batch_size, progress["row"]
    result = {"steps": progress["done"], "episodes": episodes, "seconds": time.time() - t0,
              "episodes_per_s": episodes / max(1e-9, time.time() - t0), **trainer.result(),
              **{k: row[k] for k in ("rm_score", "gold", "kl", "entropy", "response_length") if k in row}}
    if stopped is not None:
        kept = sorted(run_dir.sub("checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
        result["stopped"] = str(stopped)
        result["last_good_checkpoint"] = f"checkpoints/{kept[-1].name}" if kept else "none (stopped before the first save)"
    run_dir.write_summary(title, {"result": result, "samples (last)": progress["samples"][-6:]})
    return stopped if isinstance(stopped, NonFiniteLoss) else None


def _steps(trainer, cfg, run_dir: RunDir, start: int, hooks: Hooks, show_progress: bool, progress: dict):
    t0 = time.time()

    def log_eval(at: int) -> None:
        if hooks.evaluate is not None and cfg.eval_every and (at == 0 or at % cfg.eval_every == 0 or at == cfg.steps):
            run_dir.log(at, **{f"eval_{k}": v for k, v in hooks.evaluate(trainer.models()).items()})

    if start == 0:
        log_eval(0)
    with progress_bar(trainer.name, cfg.steps - start, show_progress) as bar:
        for step in range(start, cfg.steps):
            metrics, exp = trainer.step(step)
            stopped = metrics.pop("stop", None)  # the trainer's own gold-free stop (e.g. PPO's KL budget)
            done = progress["done"] = step + 1
            golds = [hooks.gold(p, r) for p, r in zip(exp.prompts, exp.texts)] if hooks.gold else None
            row = progress["row"] = {"rm_score": metrics.pop("rm_score"),
                                     **({"gold": float(np.mean(golds))} if golds else {}), **metrics,
                                     "episodes_per_s": (done - start) * cfg.rollout_batch_size / (time.time() - t0)}
            extra = (hooks.on_iteration(done, row, exp) if hooks.on_iteration else None) or {}
            stopped = extra.pop("stop", None) or stopped
            run_dir.log(done, **row, **extra)
            log_eval(done)
            bar.advance(rm=row["rm_score"], **({"gold": row["gold"]} if golds else {}), kl=row["kl"])
            if cfg.samples_every and (done % cfg.samples_every == 0 or done == cfg.steps or stopped):
                progress["samples"] += sample_rows(done, exp, golds)
            if stopped:
                return stopped
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                trainer.save_checkpoint(run_dir.sub(f"checkpoints/step-{done}"), done)
    return None


def sample_rows(step: int, exp: Experience, golds: list[float] | None, n: int = 6) -> list[dict]:
    """The first n episodes of a batch for the samples table."""
    return [{"step": step, "prompt": p if isinstance(p, str) else p[-1]["content"], "response": r, "rm": round(s, 3),
             **({"gold": round(golds[i], 3)} if golds else {})}
            for i, (p, r, s) in enumerate(list(zip(exp.prompts, exp.texts, exp.scores.tolist()))[:n])]
