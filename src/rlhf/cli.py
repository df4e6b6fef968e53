"""`rlhf`: one subcommand per stage, each a YAML config plus `--set key=value` overrides.

Errors a user can fix print as one line and exit 2; `--debug` anywhere on the line shows the traceback.
`--malloc jemalloc` anywhere on the line runs the command with jemalloc as the memory allocator (see `_malloc`).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from rlhf.config import load_config
from rlhf.errors import RLHFError

app = typer.Typer(help="Reinforcement learning from human feedback, end to end.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file")
SetOpt = typer.Option(None, "--set", "-s", help="override a config key: section.key=value (repeatable)")
OutOpt = typer.Option(None, "--out", "-o", help="run directory (overrides the config's out)")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bars")


def _config(cls, config: Optional[Path], overrides: Optional[list[str]], out: Optional[str]):
    cfg = load_config(cls, config, overrides)
    if out is not None:
        cfg.out = out
    return cfg


def _print_result(path: Path) -> None:
    summary = Path(path) / "summary.md"
    typer.echo(summary.read_text() if summary.exists() else f"wrote {path}")
    if (Path(path) / "report.html").is_file():
        typer.echo(f"report: {Path(path) / 'report.html'}")


@app.command()
def world(out: str = typer.Option("runs/world", "--out", "-o"), config: Optional[Path] = ConfigOpt,
          set_: Optional[list[str]] = SetOpt) -> None:
    """Generate the embedded task world: knowledge base, corpus, demonstrations, prompt sets."""
    from rlhf.world import World, WorldConfig

    World(load_config(WorldConfig, config, set_)).save(out)
    typer.echo(f"world written to {out}")


@app.command("eval")
def eval_(checkpoint: Path = typer.Option(..., "--checkpoint", "-m", help="HF model folder"),
          config: Optional[Path] = typer.Option(None, "--world-config", help="YAML WorldConfig (default world)"),
          set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
          temperature: float = typer.Option(0.0, help="0 = greedy"),
          max_new_tokens: int = typer.Option(32)) -> None:
    """Score a checkpoint on held-out world prompts with the gold reward, by prompt kind."""
    from rlhf.eval.gold_eval import evaluate_policy, write_eval_run
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.rollout import SamplingConfig
    from rlhf.world import World, WorldConfig

    w = World(load_config(WorldConfig, config, set_))
    tok, model = load_tokenizer(checkpoint), load_causal_lm(checkpoint)
    metrics, rows = evaluate_policy(model, tok, w, sampling=SamplingConfig(max_new_tokens, temperature))
    write_eval_run(out or f"runs/eval-{Path(checkpoint).parent.name or 'model'}", str(checkpoint), metrics, rows)
    _print_result(Path(out or f"runs/eval-{Path(checkpoint).parent.name or 'model'}"))


@app.command()
def generate(checkpoint: Path = typer.Option(..., "--checkpoint", "-m"),
             prompt: list[str] = typer.Option(..., "--prompt", "-p", help="user message (repeatable)"),
             n: int = typer.Option(1, "-n", help="samples per prompt"),
             temperature: float = typer.Option(0.7), max_new_tokens: int = typer.Option(48),
             seed: int = typer.Option(0)) -> None:
    """Sample responses from any checkpoint."""
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.rollout import SamplingConfig, generate_texts

    tok, model = load_tokenizer(checkpoint), load_causal_lm(checkpoint)
    prompts = [p for p in prompt for _ in range(n)]
    for p, r in zip(prompts,
                    generate_texts(model, tok, prompts, SamplingConfig(max_new_tokens, temperature), seed=seed)):
        typer.echo(json.dumps({"prompt": p, "response": r}, ensure_ascii=False))


@app.command()
def chat(checkpoint: Path = typer.Option(..., "--checkpoint", "-m"), temperature: float = typer.Option(0.7),
         max_new_tokens: int = typer.Option(64)) -> None:
    """Talk to a checkpoint (multi-turn; empty line or Ctrl-D ends)."""
    from rlhf.models.lm import load_causal_lm, load_tokenizer
    from rlhf.rollout import SamplingConfig, generate_texts

    tok, model = load_tokenizer(checkpoint), load_causal_lm(checkpoint)
    messages: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = generate_texts(model, tok, [messages], SamplingConfig(max_new_tokens, temperature),
                               seed=len(messages))[0]
        messages.append({"role": "assistant", "content": reply})
        typer.echo(f"assistant> {reply}")


def _mount_label_app() -> None:
    from rlhf.feedback.label_cli import label_app

    @label_app.command("generate")
    def label_generate(checkpoint: Path = typer.Option(..., "--checkpoint", "-m", help="policy HF folder"),
                       out: Path = typer.Option(..., "--out", "-o", help="tasks JSONL for `rlhf label import`"),
                       prompts: Optional[Path] = typer.Option(
                           None, help='JSONL of {"prompt"}; default: world training prompts'),
                       n: int = typer.Option(100, help="number of prompts"),
                       k: int = typer.Option(4, help="responses per prompt"),
                       temperature: float = typer.Option(0.7), max_new_tokens: int = typer.Option(48),
                       seed: int = typer.Option(0)) -> None:
        """Sample K responses per prompt from a checkpoint into a task file the labeling app imports."""
        from rlhf.data.filters import distinct_responses
        from rlhf.data.jsonl import write_jsonl
        from rlhf.data.prompts import load_prompts
        from rlhf.models.lm import load_causal_lm, load_tokenizer
        from rlhf.rollout import SamplingConfig, generate_texts
        from rlhf.world import World

        tok, model = load_tokenizer(checkpoint), load_causal_lm(checkpoint)
        if prompts is None:
            chosen = [p["prompt"] for p in World().prompts("train")[:n]]
        else:
            chosen = load_prompts(prompts, messages=False)[:n]
        texts = generate_texts(model, tok, [p for p in chosen for _ in range(k)],
                               SamplingConfig(max_new_tokens, temperature),
                               seed=seed)
        rows, dropped = [], 0
        for i, p in enumerate(chosen):
            responses = distinct_responses(texts[i * k:(i + 1) * k])[0]
            if len(responses) < 2:
                dropped += 1
                continue
            rows.append({"id": f"gen-{i}", "prompt": p, "responses": responses})
        write_jsonl(out, rows)
        typer.echo(f"wrote {len(rows)} tasks to {out} ({dropped} prompts dropped: fewer than 2 distinct responses)")

    app.add_typer(label_app, name="label")


study_app = typer.Typer(help="Studies built on the world's gold reward: the pipeline over seeds, the methods "
                        "compared, over-optimization, PPO's stop rules.", no_args_is_help=True)
app.add_typer(study_app, name="study")
_mount_label_app()

control_app = typer.Typer(help="RLHF for control tasks. Without a subcommand: deep RL from preferences over "
                          "trajectory clips (gymnasium + stable-baselines3, simulated teacher).",
                          invoke_without_command=True)
app.add_typer(control_app, name="control")


def _mount_clips_app() -> None:
    from rlhf.control.clips_cli import clips_app  # typer only; the control stack is imported when a command runs

    control_app.add_typer(clips_app, name="clips")


_mount_clips_app()


@control_app.callback()
def control_(ctx: typer.Context, config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
             out: Optional[str] = OutOpt, quiet: bool = QuietOpt) -> None:
    """Deep RL from preferences over trajectory clips (`rlhf control -c configs/control_cartpole.yaml`);
    `rlhf control highway|dagger|tamer|coach -c ...` and `rlhf control clips make|fit` for the rest."""
    if ctx.invoked_subcommand is None:
        from rlhf.control import pbrl

        _print_result(pbrl.run(_config(pbrl.ControlConfig, config, set_, out), not quiet))


RayOpt = typer.Option(None, "--ray", help="run the independent runs as Ray tasks: 'local' (a Ray on this machine), "
                      "'auto' (the cluster this machine joined) or a head node's HOST:PORT / ray://HOST:10001")
RayCpusOpt = typer.Option(None, "--ray-cpus", help="CPUs (and threads) each run asks of Ray (default: "
                          "OMP_NUM_THREADS, else 1)")


@study_app.command("seeds")
def seeds_(seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds: each sets seed and world.seed"),
           config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                 help="YAML pipeline config (as `rlhf pipeline`)"),
           set_: Optional[list[str]] = typer.Option(None, "--set", "-s",
                                                    help="override a pipeline config key (repeatable)"),
           out: str = typer.Option("runs/seeds", "--out", "-o", help="study directory; seed N runs in <out>/seed-N"),
           reuse: Optional[str] = typer.Option(None, "--reuse", help="a finished study: link in each seed's stages "
                                               "whose configs match, run the rest"),
           ray: Optional[str] = RayOpt, ray_cpus: Optional[int] = RayCpusOpt,
           quiet: bool = QuietOpt) -> None:
    """The whole pipeline once per seed (finished seeds are reused), then the result with seeds as the unit."""
    from rlhf.pipeline import PipelineConfig
    from rlhf.studies import seeds as study

    seed_list = study.parse_seeds(seeds)
    if reuse is not None and not Path(reuse).is_dir():
        raise RLHFError(f"--reuse {reuse}: not a directory")
    cfg = study.SeedsConfig(out, seed_list, load_config(PipelineConfig, config, set_), reuse)
    _print_result(study.run(cfg, not quiet, ray=ray, ray_cpus=ray_cpus))


compare_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                          help="The methods side by side under one budget; `tune`, `test` and `protocol`: each method "
                          "tuned on its own seeds, then tested on other seeds along budget curves.")
study_app.add_typer(compare_app, name="compare")


@compare_app.callback()
def compare_(ctx: typer.Context,
             seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds (default 0,1,2)"),
             methods: Optional[str] = typer.Option(None, "--methods",
                                                   help="comma-separated: ppo-ptx,ppo,dpo,bon,raft,rrhf,grpo,rloo"),
             budget: Optional[int] = typer.Option(None, "--budget", help="reward-model calls per method"),
             source: Optional[str] = typer.Option(None, "--from",
                                                  help="a `rlhf study seeds` directory to take seed-N's SFT, RM and "
                                                  "labels from"),
             config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
             out: Optional[str] = typer.Option(None, "--out", "-o",
                                               help="compare directory; seed N runs in <out>/seed-N"),
             ray: Optional[str] = RayOpt, ray_cpus: Optional[int] = RayCpusOpt,
             quiet: bool = QuietOpt) -> None:
    """PPO-ptx, PPO, DPO, best-of-N, RAFT, RRHF, GRPO and RLOO from one SFT model, RM and label set per seed,
    under one reward-model-call budget; gold metrics per method over seeds (finished method runs are reused)."""
    if ctx.invoked_subcommand is not None:
        return
    from rlhf.studies import compare

    cfg = load_config(compare.CompareConfig, config, set_)
    _compare_options(cfg, seeds, methods, budget, source, out)
    _print_result(compare.run(cfg, not quiet, ray=ray, ray_cpus=ray_cpus))


def _compare_options(cfg, seeds, methods, budget, source, out) -> None:
    from rlhf.studies import compare
    from rlhf.studies.seeds import parse_seeds

    if seeds is not None:
        cfg.seeds = parse_seeds(seeds)
    if methods is not None:
        cfg.methods = compare.parse_methods(methods)
    if budget is not None:
        cfg.budget = budget
    if source is not None:
        cfg.source = source
    if out is not None:
        cfg.out = out


def _protocol_command(step: str, doc: str):
    def command(tune_seeds: Optional[str] = typer.Option(None, "--tune-seeds",
                                                         help="comma-separated tuning seeds (default 100,101)"),
                test_seeds: Optional[str] = typer.Option(None, "--test-seeds",
                                                         help="comma-separated test seeds, disjoint from the tuning "
                                                         "seeds (default 0,1,2)"),
                methods: Optional[str] = typer.Option(None, "--methods",
                                                      help="comma-separated: ppo-ptx,ppo,dpo,bon,raft,rrhf,grpo,rloo"),
                budget: Optional[int] = typer.Option(None, "--budget",
                                                     help="reward-model calls at the last budget point (default 2560)"),
                tune_budget: Optional[int] = typer.Option(None, "--tune-budget",
                                                          help="reward-model calls per tuning trial (default 1024)"),
                draw: Optional[str] = typer.Option(None, "--draw", help="inverse_cdf (default) | multinomial: the "
                                                   "random stream of every sampler"),
                source: Optional[str] = typer.Option(None, "--from", help="a `rlhf study seeds` directory to take "
                                                     "seed-N's SFT, RM and labels from"),
                config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
                out: Optional[str] = typer.Option(None, "--out", "-o", help="protocol directory (inputs/, tune/, "
                                                  "test/ and the summary)"),
                quiet: bool = QuietOpt) -> None:
        from rlhf.studies import protocol
        from rlhf.studies.seeds import parse_seeds

        cfg = load_config(protocol.ProtocolConfig, config, set_)
        for flag, text in (("--test-seeds", test_seeds), ("--tune-seeds", tune_seeds)):
            try:
                parse_seeds(text) if text is not None else None
            except RLHFError as exc:
                raise RLHFError(str(exc).replace("--seeds", flag, 1)) from None
        _compare_options(cfg, test_seeds, methods, budget, source, out)
        if tune_seeds is not None:
            cfg.tune_seeds = parse_seeds(tune_seeds)
        if tune_budget is not None:
            cfg.tune_budget = tune_budget
        if draw is not None:
            cfg.draw = draw
        path = protocol.run(cfg, step, not quiet)
        if step == "tune":
            typer.echo((path / "choice.yaml").read_text())
        else:
            _print_result(path)
        typer.echo(f"tuning seeds: {', '.join(map(str, cfg.tune_seeds))}; test seeds: "
                   f"{', '.join(map(str, cfg.seeds))}")
    command.__doc__ = doc
    return command


compare_app.command("tune")(_protocol_command(
    "tune", "Each method's declared search (4 trials) on the tuning seeds, scored by gold on validation prompts; "
    "writes <out>/tune/choice.yaml."))
compare_app.command("test")(_protocol_command(
    "test", "The chosen settings (<out>/tune/choice.yaml) on the test seeds along the budget; the summary."))
compare_app.command("protocol")(_protocol_command(
    "protocol", "Inputs, tuning and test in one command: the fair comparison with its budget curves and cost."))


@app.command("report")
def report_(runs: list[Path] = typer.Argument(..., help="run folders: any stage's, a pipeline's, a study's"),
            out: Optional[Path] = typer.Option(None, "--out", "-o",
                                               help="HTML file to write (default: RUN_DIR/report.html "
                                               "for one run, ./report.html for several)")) -> None:
    """One self-contained HTML file of one run or several side by side: config, summary tables, metric curves,
    samples with RM and gold scores, over-optimization (proxy and gold against sqrt(KL)); no network needed."""
    from rlhf.report import write_report

    path = write_report(runs, out)
    typer.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@study_app.command("signals")
def signals_(runs: list[Path] = typer.Argument(
        ..., help="PPO run directories (metrics.jsonl with the gold reward logged)")) -> None:
    """Where PPO's gold-free stop rules (KL budget, ensemble disagreement, abstain/refuse drift) would have
    ended each run, against the gold reward's peak."""
    from rich.console import Console
    from rich.table import Table

    from rlhf.studies import signals

    rows = signals.run(runs)
    table = Table(*rows[0].keys(), title="gold (5-step mean) @ step where each rule stops")
    for row in rows:
        table.add_row(*row.values())
    Console(width=200).print(table)

models_app = typer.Typer(help="Bring real models in: GGUF import, folder info, weight averaging.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("import-gguf")
def import_gguf_(file: Path = typer.Argument(..., help="GGUF file (e.g. from `python -c 'from rlhf.models.gguf import "
                                                       "smollm2_gguf_path; print(smollm2_gguf_path())'`)"),
                 out_dir: Path = typer.Argument(..., help="HF folder to write (fp32 safetensors + tokenizer)"),
                 force: bool = typer.Option(False, "--force", help="replace a non-empty OUT_DIR"),
                 quiet: bool = QuietOpt) -> None:
    """Convert a GGUF file (llama.cpp) into a plain fp32 safetensors HF folder with its tokenizer and chat template."""
    from rlhf.models.gguf import import_gguf, summary_line

    log = (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
    typer.echo(summary_line(import_gguf(file, out_dir, force=force, log=log)))


@models_app.command("average")
def models_average(finetuned: Path = typer.Argument(...,
                                                    help="HF folder of the fine-tuned model (e.g. runs/ppo/model)"),
                   base: Path = typer.Argument(
                       ..., help="HF folder of the model it started from (e.g. runs/pretrain/model)"),
                   out_dir: Path = typer.Argument(..., help="HF folder to write"),
                   weight: float = typer.Option(0.2, "--weight", "-w",
                                                help="the base model's share: (1 - w) * fine-tuned + w * base"),
                   force: bool = typer.Option(False, "--force", help="replace a non-empty OUT_DIR")) -> None:
    """Average the weights of two folders of one architecture (WiSE-FT; the alignment-tax remedy of Lin et al. 2024)."""
    from rlhf.models.average import average_models

    s = average_models(finetuned, base, weight, out_dir, force=force)
    typer.echo(f"wrote {s['out_dir']}: {1 - weight:g} x {finetuned} + {weight:g} x {base} "
               f"({s['parameters'] / 1e6:.1f}M parameters, {s['seconds']:.1f} s)")


@models_app.command("info")
def models_info(folder: Path = typer.Argument(..., help="HF model folder")) -> None:
    """Parameters, vocabulary, chat template, EOS and pad of a local HF model folder (nothing is loaded)."""
    from rlhf.models.lm import folder_info

    for key, value in folder_info(folder).items():
        typer.echo(f"{key}: {value}")


# Every command that runs a config-driven stage: (group, name, module, config class, runner, help). Each takes
# --config, --set, --out and --quiet, builds the config and prints the run's summary.
STAGE_COMMANDS = [
    (None, "pretrain", "rlhf.stages", "PretrainStage", "run_pretrain",
     "Stage 1: pretrain a causal LM on the world's corpus (or any {\"text\"} JSONL)."),
    (None, "sft", "rlhf.stages", "SFTStage", "run_sft",
     "Stage 2: supervised fine-tuning on demonstrations (loss on responses only)."),
    (None, "ppo", "rlhf.stages", "PPOStage", "run_ppo",
     "Stage 3.2: PPO against a reward model with a KL penalty to the SFT model (PPO-ptx optional)."),
    (None, "dpo", "rlhf.train.dpo", "DPOConfig", "run",
     "Direct preference optimization (sigmoid, IPO or cDPO loss) on comparisons or rankings."),
    (None, "grpo", "rlhf.train.grpo", "GRPOConfig", "run",
     "GRPO: group-normalized advantages, clipped ratio, KL to the reference as a loss term; no value model."),
    (None, "rloo", "rlhf.train.grpo", "RLOOConfig", "run",
     "RLOO: REINFORCE with a leave-one-out baseline over K samples per prompt, KL as a reward penalty."),
    (None, "raft", "rlhf.train.raft", "RAFTConfig", "run",
     "RAFT: sample K per prompt, keep the top fraction by reward model, fine-tune on them; repeat."),
    (None, "rrhf", "rlhf.train.rrhf", "RRHFConfig", "run",
     "RRHF: ranking loss on length-normalized log-probs of K scored responses, plus SFT on the best."),
    (None, "best-of-n", "rlhf.eval.bon", "BestOfNConfig", "run",
     "Best-of-N: N samples per prompt, the reward model picks; gold/RM tables and the picks as SFT data."),
    ("control", "highway", "rlhf.control.highway", "HighwayConfig", "run",
     "Driving safety from preferences (highway-env): collisions, speed, progress vs the env-reward agent."),
    ("control", "dagger", "rlhf.control.dagger", "DAggerConfig", "run",
     "DAgger: an expert relabels the states the learner visits; behavioural cloning on the aggregate."),
    ("control", "tamer", "rlhf.control.scalar", "TamerConfig", "run",
     "Deep TAMER: a trainer's delayed, noisy +1/-1 on recent actions trains H(s, a); the agent acts greedily on it."),
    ("control", "coach", "rlhf.control.scalar", "CoachConfig", "run",
     "COACH: the trainer's delayed, noisy +1/-1 is the advantage of a softmax policy's recent actions."),
    (None, "pipeline", "rlhf.pipeline", "PipelineConfig", "run",
     "World -> tokenizer -> pretrain -> SFT -> reward model -> PPO, with a gold-metric table per stage; "
     "--preset NAME runs a real task instead (sentiment, instructions, hh-harmless)."),
    ("label", "simulate", "rlhf.feedback.simulate", "SimulateConfig", "run",
     "Sample K responses per world prompt and have a simulated labeler pool rank them."),
    ("study", "overopt", "rlhf.studies.overopt", "OveroptConfig", "run",
     "Proxy vs gold reward against sqrt(KL) for best-of-n and along a PPO run (Gao et al. 2022)."),
]


def _stage_command(module: str, cls: str, runner: str):
    def command(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
                quiet: bool = QuietOpt) -> None:
        mod = importlib.import_module(module)  # imported when run: `rlhf --help` stays fast
        _print_result(getattr(mod, runner)(_config(getattr(mod, cls), config, set_, out), not quiet))
    return command


def _pipeline_command(module: str, cls: str, runner: str):
    """`rlhf pipeline`, plus --preset NAME: a real task's config and run (`rlhf.tasks`) in place of the world's."""
    stage = _stage_command(module, cls, runner)

    def command(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
                quiet: bool = QuietOpt,
                preset: Optional[str] = typer.Option(None, "--preset",
                                                     help="sentiment | instructions | hh-harmless")) -> None:
        if preset is None:
            return stage(config, set_, out, quiet)
        from rlhf.tasks.presets import run_preset

        _print_result(run_preset(preset, config, set_, out, not quiet))
    return command


def _register_stages() -> None:
    from rlhf.feedback.label_cli import label_app

    groups = {None: app, "label": label_app, "study": study_app, "control": control_app}
    for group, name, module, cls, runner, help_ in STAGE_COMMANDS:
        make = _pipeline_command if (group, name) == (None, "pipeline") else _stage_command
        groups[group].command(name, help=help_)(make(module, cls, runner))


# `rlhf reward -c ...` trains (the group's own callback, as a plain stage command would); `rlhf reward eval`
# evaluates a trained reward model on any comparisons file.
reward_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                         help="Stage 3.1: train a reward model on comparisons or rankings (`rlhf reward eval`: "
                         "evaluate one).")
app.add_typer(reward_app, name="reward")


@reward_app.callback()
def reward_(ctx: typer.Context, config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt,
            out: Optional[str] = OutOpt, quiet: bool = QuietOpt) -> None:
    """Stage 3.1: train a reward model on comparisons or rankings."""
    if ctx.invoked_subcommand is None:
        _stage_command("rlhf.train.reward", "RewardConfig", "run")(config, set_, out, quiet)


@reward_app.command("eval")
def reward_eval(model: Path = typer.Option(..., "--model", "-m", help="reward model folder (a run's model/)"),
                data: Path = typer.Option(..., "--data", "-d",
                                          help="comparisons JSONL (any format `rlhf reward` reads)"),
                out: Optional[str] = typer.Option(None, "--out", "-o",
                                                  help="directory for summary.json, summary.md, plots"),
                limit: Optional[int] = typer.Option(None, help="first N comparisons only"),
                on_bad: str = typer.Option("skip", help="skip (counted) | error"),
                buckets: int = typer.Option(4, help="response-length buckets"),
                batch_size: int = typer.Option(32)) -> None:
    """Pairwise accuracy (± SE), accuracy by response length, score distribution and calibration of a reward model."""
    from rich.console import Console
    from rich.table import Table

    from rlhf.eval.reward_eval import run_comparisons_eval

    out_dir = out or f"runs/reward-eval-{Path(data).stem}"
    path, ev = run_comparisons_eval(model, data, out_dir, on_bad, limit, buckets, batch_size)
    r = ev["result"]
    console = Console(width=120)
    table = Table("pairs", "accuracy", "SE", "95% CI", "ECE", "labels prefer longer", "RM prefers longer",
                  title=f"reward model {model} on {data}")
    table.add_row(str(r["pairs"]), f"{r['pairwise_accuracy']:.4f}", f"{r['se']:.4f}",
                  f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}", f"{r['expected_calibration_error']:.3f}",
                  f"{r['labels_prefer_longer']:.3f}", f"{r['rm_prefers_longer']:.3f}")
    console.print(table)
    lengths = Table("response words", "pairs", "accuracy", "SE", title="by response length")
    for row in ev["by_length"]:
        lengths.add_row(row["words"], str(row["pairs"]), f"{row['accuracy']:.4f}", f"{row['se']:.4f}")
    console.print(lengths)
    typer.echo(f"wrote {path}/summary.md, summary.json, plots/")


_register_stages()


JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
            "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")


def _pop_malloc(argv: list[str]) -> str:
    """Remove `--malloc NAME` / `--malloc=NAME` from argv; return NAME (default: system)."""
    for i, a in enumerate(argv):
        if a == "--malloc" or a.startswith("--malloc="):
            if "=" in a:
                name = a.split("=", 1)[1]
                del argv[i]
            elif i + 1 < len(argv):
                name = argv[i + 1]
                del argv[i:i + 2]
            else:
                raise RLHFError("--malloc: expected system or jemalloc after it")
            if name not in ("system", "jemalloc"):
                raise RLHFError(f"--malloc: expected system or jemalloc, got '{name}'")
            return name
    return "system"


def _jemalloc_loaded() -> bool:
    return "libjemalloc" in Path("/proc/self/maps").read_text()


def _malloc(name: str, argv: list[str]) -> None:
    """`jemalloc`: re-run this command with libjemalloc preloaded (as PyTorch's CPU performance guide does with
    LD_PRELOAD). glibc's malloc keeps the freed blocks of varied batch shapes, and a long reward-model run on
    SmolLM2 grows to 5-6 GB that way; with jemalloc it stayed under 4 GB (docs/real-models.md, HH harmless)."""
    if name == "system":
        return
    if not sys.platform.startswith("linux"):
        raise RLHFError("--malloc jemalloc: supported on Linux only")
    if _jemalloc_loaded():
        return
    if os.environ.get("RLHF_MALLOC_PRELOADED"):
        raise RLHFError(f"--malloc jemalloc: LD_PRELOAD={os.environ.get('LD_PRELOAD', '')} did not load jemalloc")
    import ctypes.util
    lib = next((p for p in JEMALLOC if Path(p).is_file()), None) or ctypes.util.find_library("jemalloc")
    if not lib:
        raise RLHFError("--malloc jemalloc: libjemalloc is not installed (Debian/Ubuntu: apt-get install libjemalloc2)")
    preload = " ".join(x for x in (lib, os.environ.get("LD_PRELOAD")) if x)
    typer.echo(f"malloc: jemalloc (LD_PRELOAD={lib})", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "rlhf.cli", *argv],
              dict(os.environ, LD_PRELOAD=preload, RLHF_MALLOC_PRELOADED="1"))


# Commands that moved into a group: the old name still runs the command, after a one-line note on stderr.
MOVED = {"control-highway": ["control", "highway"], "control-clips": ["control", "clips"],
         "compare": ["study", "compare"]}


def _moved(argv: list[str]) -> None:
    """Rewrite an old top-level command name in argv (in place) to its place in the tree."""
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] in MOVED:
        typer.echo(f"note: `rlhf {argv[i]}` is now `rlhf {' '.join(MOVED[argv[i]])}`", err=True)
        argv[i:i + 1] = MOVED[argv[i]]


def main() -> None:
    # Hugging Face's own tqdm bars ("Loading weights", "Writing model shards") would clutter stderr, and
    # -q could not silence them; the stages show their own progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = sys.argv[1:]
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    else:  # transformers' notices (a new reward head is "MISSING" from the SFT checkpoint, by design) are noise here
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        _malloc(_pop_malloc(sys.argv), argv)
        args = sys.argv[1:]
        _moved(args)
        app(args=args, standalone_mode=False)
        if "torch.distributed" in sys.modules:  # (a command that never loaded torch has no process group)
            from rlhf import parallel

            parallel.shutdown()  # under torchrun: every rank done, then the process group is left
    except RLHFError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
