"""`rlhf`: one subcommand per stage, each a YAML config plus `--set key=value` overrides.

Errors a user can fix print as one line and exit 2; `--debug` anywhere on the line shows the traceback.
"""
from __future__ import annotations

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


@app.command()
def world(out: str = typer.Option("runs/world", "--out", "-o"), config: Optional[Path] = ConfigOpt,
          set_: Optional[list[str]] = SetOpt) -> None:
    """Generate the embedded task world: knowledge base, corpus, demonstrations, prompt sets."""
    from rlhf.world import World, WorldConfig

    World(load_config(WorldConfig, config, set_)).save(out)
    typer.echo(f"world written to {out}")


@app.command()
def pretrain(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
             quiet: bool = QuietOpt) -> None:
    """Stage 1: pretrain a causal LM on the world's corpus (or any {"text"} JSONL)."""
    from rlhf.train import pretrain as stage

    _print_result(stage.run(_config(stage.PretrainConfig, config, set_, out), not quiet))


@app.command()
def sft(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
        quiet: bool = QuietOpt) -> None:
    """Stage 2: supervised fine-tuning on demonstrations (loss on responses only)."""
    from rlhf.train import sft as stage

    _print_result(stage.run(_config(stage.SFTConfig, config, set_, out), not quiet))


@app.command()
def reward(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
           quiet: bool = QuietOpt) -> None:
    """Stage 3.1: train a reward model on comparisons or rankings."""
    from rlhf.train import reward as stage

    _print_result(stage.run(_config(stage.RewardConfig, config, set_, out), not quiet))


@app.command()
def ppo(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
        quiet: bool = QuietOpt) -> None:
    """Stage 3.2: PPO against a reward model with a KL penalty to the SFT model (PPO-ptx optional)."""
    from rlhf.train import ppo as stage

    _print_result(stage.run(_config(stage.PPOConfig, config, set_, out), not quiet))


@app.command()
def pipeline(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
             quiet: bool = QuietOpt) -> None:
    """World -> tokenizer -> pretrain -> SFT -> reward model -> PPO, with a gold-metric table per stage."""
    from rlhf import pipeline as pl

    _print_result(pl.run(_config(pl.PipelineConfig, config, set_, out), not quiet))


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
    for p, r in zip(prompts, generate_texts(model, tok, prompts, SamplingConfig(max_new_tokens, temperature), seed=seed)):
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
        reply = generate_texts(model, tok, [messages], SamplingConfig(max_new_tokens, temperature), seed=len(messages))[0]
        messages.append({"role": "assistant", "content": reply})
        typer.echo(f"assistant> {reply}")


@app.command()
def control(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
            quiet: bool = QuietOpt) -> None:
    """Deep RL from preferences over trajectory clips (gymnasium + stable-baselines3, simulated teacher)."""
    from rlhf.control import pbrl as stage

    _print_result(stage.run(_config(stage.ControlConfig, config, set_, out), not quiet))


study_app = typer.Typer(help="Studies built on the world's gold reward.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command()
def overopt(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
            quiet: bool = QuietOpt) -> None:
    """Proxy vs gold reward against sqrt(KL) for best-of-n and along a PPO run (Gao et al. 2022)."""
    from rlhf.eval import overopt as study

    _print_result(study.run(_config(study.OveroptConfig, config, set_, out), not quiet))


def _mount_label_app() -> None:
    from rlhf.feedback.label_cli import label_app

    @label_app.command()
    def simulate(config: Optional[Path] = ConfigOpt, set_: Optional[list[str]] = SetOpt, out: Optional[str] = OutOpt,
                 quiet: bool = QuietOpt) -> None:
        """Sample K responses per world prompt and have a simulated labeler pool rank them."""
        from rlhf.feedback import simulate as stage

        _print_result(stage.run(_config(stage.SimulateConfig, config, set_, out), not quiet))

    @label_app.command("generate")
    def label_generate(checkpoint: Path = typer.Option(..., "--checkpoint", "-m", help="policy HF folder"),
                       out: Path = typer.Option(..., "--out", "-o", help="tasks JSONL for `rlhf label import`"),
                       prompts: Optional[Path] = typer.Option(None, help='JSONL of {"prompt"}; default: world training prompts'),
                       n: int = typer.Option(100, help="number of prompts"), k: int = typer.Option(4, help="responses per prompt"),
                       temperature: float = typer.Option(0.7), max_new_tokens: int = typer.Option(48),
                       seed: int = typer.Option(0)) -> None:
        """Sample K responses per prompt from a checkpoint into a task file the labeling app imports."""
        from rlhf.data.jsonl import read_jsonl, write_jsonl
        from rlhf.models.lm import load_causal_lm, load_tokenizer
        from rlhf.rollout import SamplingConfig, generate_texts
        from rlhf.world import World

        tok, model = load_tokenizer(checkpoint), load_causal_lm(checkpoint)
        if prompts is None:
            chosen = [p["prompt"] for p in World().prompts("train")[:n]]
        else:
            chosen = []
            for lineno, obj in read_jsonl(prompts):
                if "prompt" not in obj:
                    raise RLHFError(f"{prompts}:{lineno}: missing field 'prompt'")
                chosen.append(obj["prompt"])
            chosen = chosen[:n]
        texts = generate_texts(model, tok, [p for p in chosen for _ in range(k)], SamplingConfig(max_new_tokens, temperature),
                               seed=seed)
        rows, dropped = [], 0
        for i, p in enumerate(chosen):
            responses = list(dict.fromkeys(t for t in texts[i * k:(i + 1) * k] if t.strip()))
            if len(responses) < 2:
                dropped += 1
                continue
            rows.append({"id": f"gen-{i}", "prompt": p, "responses": responses})
        write_jsonl(out, rows)
        typer.echo(f"wrote {len(rows)} tasks to {out} ({dropped} prompts dropped: fewer than 2 distinct responses)")

    app.add_typer(label_app, name="label")


_mount_label_app()


def main() -> None:
    # Hugging Face's own tqdm bars ("Loading weights", "Writing model shards") would clutter stderr, and
    # -q could not silence them; the stages show their own progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    else:  # transformers' notices (a new reward head is "MISSING" from the SFT checkpoint, by design) are noise here
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app(standalone_mode=False)
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
