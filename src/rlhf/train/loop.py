"""The one training loop every trainer that steps runs in: PPO, GRPO/RLOO, RAFT, RRHF and DPO.

A trainer (a subclass of `Trainer`) holds its models, optimizer, data streams and generators and does one
step of its algorithm in `step(i)`. The loop owns the rest: the progress bar, the metrics file, the caller's
hooks (gold score, per-step metrics and stop requests), held-out evaluation, the sample table, a checkpoint
every `save_every` steps, exact resume from one (`train/checkpoint.py`), the one place where a non-finite
loss ends a run, and the end of the run: the model, samples, plots and summary.

Under torchrun every rank runs the loop in step: each trainer's step returns the global batch's metrics, the
loop makes its own (gold, throughput, the hook's) global too and takes a stop requested on any rank on all of
them, and only rank 0 writes (metrics, checkpoints, the model, samples, plots, summary).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlhf import parallel
from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.progress import progress_bar
from rlhf.rollout.experience import Experience, Models
from rlhf.rundir import RunDir
from rlhf.train.checkpoint import TrainerState, resume
from rlhf.train.common import NonFiniteLoss, apply_update, check_finite


@dataclass
class Hooks:
    """What a caller plugs into a run. gold(prompt, response): a score logged beside the RM's (the world's
    gold reward in the pipeline) for the responses a step returns; evaluate(models): PPO's held-out metrics,
    logged as eval_* every eval_every steps and before the first; on_iteration(step, metrics, batch): a dict
    of more metrics, whose "stop" key (a reason) ends the run cleanly after this step, with a checkpoint. A
    trainer's step may return a "stop" metric as well (PPO: a spent KL budget), after which nothing more is
    trained."""
    gold: Callable[[object, str], float] | None = None
    evaluate: Callable[[Models], dict] | None = None
    on_iteration: Callable[[int, dict, Experience], dict | None] | None = None


@dataclass
class StepOutput:
    """What one step returns. `metrics`: logged at this step (a "stop" key ends the run after it);
    `batch`: the responses it sampled, with `.prompts` and `.texts` (one prompt per response), for the gold
    hook, on_iteration and the sample table; `items`: episodes (or pairs) it trained on, for throughput."""
    metrics: dict
    batch: Any = None
    items: int = 0


@dataclass
class Progress:
    """Where a run stands; `Trainer.result` reads it at the end."""
    start: int  # the step the run started (or resumed) from
    done: int  # steps done so far
    started: float = field(default_factory=time.time)  # wall clock at the start of the loop
    train_seconds: float = 0.0  # wall time spent in steps (evaluation excluded)
    train_cpu_seconds: float = 0.0  # process CPU time spent in steps
    items: int = 0  # episodes (or pairs) trained on since `start`
    row: dict = field(default_factory=dict)  # the last step's metrics
    heldout: dict = field(default_factory=dict)  # "start" / "end" -> held-out metrics (unprefixed)
    samples: list[dict] = field(default_factory=list)  # rows of the sample table


class Trainer:
    """What the loop asks of a trainer. Subclasses set `cfg` (with out, resume and, where they apply,
    save_every, eval_every, samples_every), `steps` and `accelerator`, and implement `step`, `state` and
    `save_model`; the rest has defaults."""
    name = "trainer"  # progress bar label; upper-cased in resume errors
    title = "Training"  # summary heading
    unit: str | None = None  # throughput logged as {unit}_per_s from StepOutput.items (None: none)
    gold_key = "gold"  # metric name of the gold hook's mean over a step's batch
    bar_fields: dict[str, str] = {}  # progress-bar label -> metric key
    plots: dict[str, list[str]] = {}  # plot name -> metric keys
    heldout_note: str | None = None  # summary text when there is no held-out row (None: no held-out section)
    summary_samples = 0  # rows of the sample table shown in the summary
    checkpoint_at_end = False  # a checkpoint at the end of every run, whatever save_every says
    resume_hint = ""  # added to the error when a checkpoint's models do not match

    def step(self, step: int) -> StepOutput:
        raise NotImplementedError

    def state(self) -> TrainerState:
        raise NotImplementedError

    def save_model(self, path: Path) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Held-out metrics, logged as eval_*; {}: nothing to evaluate."""
        return {}

    def scalars(self) -> dict:
        """Numbers a checkpoint keeps beside the state (state.json), given back to `restore`."""
        return {}

    def restore(self, scalars: dict) -> None:
        """Called with a checkpoint's scalars before resuming from it."""

    def sample_rows(self, step: int, out: StepOutput, golds: list[float] | None) -> list[dict]:
        return []

    def result(self, progress: Progress) -> dict:
        return {"steps": progress.done}

    def sections(self) -> dict:
        """More summary sections after the result and held-out ones (in summary.md and summary.json)."""
        return {}


def run(trainer: Trainer, hooks: Hooks | None = None, show_progress: bool = True) -> Path:
    """Resume the trainer from cfg.resume when set, run its steps into cfg.out and write the summary. A
    non-finite loss ends the run early, keeping a checkpoint only if the failing step applied no update;
    it is raised once the run directory is complete."""
    cfg = trainer.cfg
    start, scalars = resume(trainer.state(), cfg.resume, trainer.name.upper(), trainer.steps, trainer.resume_hint)
    trainer.restore(scalars)
    progress = Progress(start, start, heldout={"start": scalars["heldout_start"]} if "heldout_start" in scalars else {})
    with RunDir(cfg.out, cfg) as run_dir:
        loop = _Loop(trainer, run_dir, hooks or Hooks(), progress)
        failed = loop.run(show_progress and parallel.is_main())  # the process group's rank, whatever accelerate says
    if failed:
        raise RLHFError(f"{failed} (run directory: {cfg.out})")
    return Path(cfg.out)


class _Loop:
    def __init__(self, trainer: Trainer, run_dir: RunDir, hooks: Hooks, progress: Progress):
        self.trainer, self.run_dir, self.hooks, self.progress = trainer, run_dir, hooks, progress
        self.every = {k: getattr(trainer.cfg, f"{k}_every", 0) for k in ("save", "eval", "samples")}

    def run(self, show_progress: bool) -> NonFiniteLoss | None:
        stopped = None
        try:
            stopped = self.steps(show_progress)
            if self.every["save"] or self.trainer.checkpoint_at_end:
                self.checkpoint()
        except NonFiniteLoss as exc:
            stopped = exc
            if exc.updates_applied == 0 and (self.every["save"] or self.trainer.checkpoint_at_end):
                self.checkpoint()  # nothing applied in the failed step: the weights are the last step's
        self.finish(stopped)
        return stopped if isinstance(stopped, NonFiniteLoss) else None

    def steps(self, show_progress: bool) -> str | None:
        trainer, p = self.trainer, self.progress
        if p.start == 0:
            self.evaluate(0)
        with progress_bar(trainer.name, trainer.steps - p.start, show_progress) as bar:
            for step in range(p.start, trainer.steps):
                t, cpu = time.time(), time.process_time()
                out = trainer.step(step)
                p.train_seconds += time.time() - t
                p.train_cpu_seconds += time.process_time() - cpu
                p.done, p.items = step + 1, p.items + out.items
                stopped = self.log(out)
                bar.advance(**{label: p.row[k] for label, k in trainer.bar_fields.items() if k in p.row})
                if stopped:
                    return stopped
                if self.every["save"] and p.done % self.every["save"] == 0 and p.done < trainer.steps:
                    self.checkpoint()
        return None

    def log(self, out: StepOutput) -> str | None:
        """Log one step's metrics (gold, throughput and the hook's added), held-out metrics when due and its
        sample rows; returns a stop reason, if any."""
        trainer, hooks, p, done = self.trainer, self.hooks, self.progress, self.progress.done
        stopped = out.metrics.pop("stop", None)  # the trainer's own gold-free stop (e.g. PPO's KL budget)
        golds = None
        if hooks.gold and out.batch is not None:  # this rank's responses; their mean over every rank's
            golds = [hooks.gold(q, r) for q, r in zip(out.batch.prompts, out.batch.texts)]
        gold = parallel.mean_metrics({trainer.gold_key: float(np.mean(golds))}, len(golds)) if golds else {}
        row = p.row = {**out.metrics, **gold}
        if trainer.unit:  # items are the global batch's; the time the slowest rank's
            seconds = p.train_seconds if parallel.world_size() == 1 else float(
                parallel.all_max(torch.tensor(p.train_seconds, dtype=torch.float64)))
            row[f"{trainer.unit}_per_s"] = p.items / max(1e-9, seconds)
        extra = (hooks.on_iteration(done, row, out.batch) if hooks.on_iteration else None) or {}
        stopped = parallel.first_reason(extra.pop("stop", None) or stopped)  # a stop on one rank stops them all
        extra = parallel.mean_metrics(extra)  # the hook's numbers from each rank's (equal) share of the batch
        self.run_dir.log(done, **row, **extra)
        if (self.every["eval"] and done % self.every["eval"] == 0) or done == trainer.steps:
            self.evaluate(done)
        samples = self.every["samples"]
        if samples and (done % samples == 0 or done == trainer.steps or stopped):
            p.samples += trainer.sample_rows(done, out, golds)
        return stopped

    def evaluate(self, at: int) -> None:
        row = self.trainer.evaluate()
        if row:
            self.run_dir.log(at, **{f"eval_{k}": v for k, v in row.items()})
            self.progress.heldout["start" if at == 0 else "end"] = row

    def checkpoint(self) -> None:
        """Every rank calls the save: on many processes it is collective (each rank writes its shards of the
        sharded checkpoint, rank 0 the rest; train/checkpoint.py)."""
        done, heldout = self.progress.done, self.progress.heldout
        scalars = {**self.trainer.scalars(), **({"heldout_start": heldout["start"]} if "start" in heldout else {})}
        self.trainer.state().save(self.run_dir.sub(f"checkpoints/step-{done}"), done, **scalars)

    def finish(self, stopped) -> None:
        """The end of a run: the model (unless a failed step changed it), samples, plots and summary."""
        trainer, p, run_dir = self.trainer, self.progress, self.run_dir
        if not parallel.is_main():  # (accelerate's is_main_process is true on every CPU rank without cpu=True)
            return
        if not isinstance(stopped, NonFiniteLoss) or stopped.updates_applied == 0:
            trainer.save_model(run_dir.sub("model"))
        write_jsonl(run_dir.sub("samples.jsonl"), p.samples)
        run_dir.plot_metrics(trainer.plots)
        result = trainer.result(p)
        if stopped is not None:
            kept = sorted(run_dir.sub("checkpoints").glob("step-*"), key=lambda c: int(c.name[5:]))
            result["stopped"] = str(stopped)
            result["last_good_checkpoint"] = (f"checkpoints/{kept[-1].name}" if kept
                                              else "none (stopped before the first save)")
        heldout = [{"when": when, **p.heldout[when]} for when in ("start", "end") if when in p.heldout]
        md, data = {"result": result}, {"result": result}
        if trainer.heldout_note is not None:
            md["held-out"], data["heldout"] = heldout or trainer.heldout_note, heldout
        md.update(trainer.sections())
        data.update(trainer.sections())
        if trainer.summary_samples:
            md["samples (last)"] = data["samples (last)"] = p.samples[-trainer.summary_samples:]
        run_dir.write_summary(trainer.title, md, data)


SAMPLE_ROWS = 6  # episodes of a batch in the sample table


def sample_rows(step: int, exp: Experience, golds: list[float] | None, n: int = SAMPLE_ROWS) -> list[dict]:
    """The first n episodes of a batch for the samples table."""
    return [{"step": step, "prompt": p if isinstance(p, str) else p[-1]["content"], "response": r, "rm": round(s, 3),
             **({"gold": round(golds[i], 3)} if golds else {})}
            for i, (p, r, s) in enumerate(list(zip(exp.prompts, exp.texts, exp.scores.tolist()))[:n])]


def finite_everywhere(loss: torch.Tensor) -> torch.Tensor:
    """The loss itself with one process; with several, the sum over ranks (not finite when any rank's is not), so
    that `check_finite` stops every rank alike."""
    return loss if parallel.world_size() == 1 else parallel.all_sum(loss.detach())


def synced_update(accelerator, model, opt, sched, loss: torch.Tensor, step: int, grad_clip: float,
                  updates_applied: int = 0) -> float:
    """`common.optimizer_step` (stop on a non-finite loss, backward, clip, step, schedule) with the gradients
    averaged over the processes between backward and clipping; the same operations with one process."""
    check_finite(finite_everywhere(loss), step, updates_applied)
    accelerator.backward(loss)
    parallel.average_gradients(model)
    return apply_update(accelerator, model, opt, sched, grad_clip)
