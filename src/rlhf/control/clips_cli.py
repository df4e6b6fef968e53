"""`rlhf control clips make|fit`: clip pairs to the labeling app and people's answers back (app_clips.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

clips_app = typer.Typer(help="Clip pairs for people: make them for the labeling app, fit the reward model on the "
                             "app's export.", no_args_is_help=True)


@clips_app.command("make")
def make(env: str = typer.Argument(..., help="CartPole, Pendulum, MountainCarContinuous, Acrobot or Highway"),
         out: Path = typer.Argument(..., help="folder for clips/, tasks.jsonl, gold.jsonl, pairs.npz (the media root)"),
         pairs: int = typer.Option(50, help="clip pairs to label"),
         gold: int = typer.Option(0, help="extra gold pairs ranked by the true reward (most different returns)"),
         clip_len: int = typer.Option(25, help="steps per clip"),
         episodes: int = typer.Option(8, help="episodes of random actions the clips come from"),
         seed: int = typer.Option(0),
         db: Optional[str] = typer.Option(None, help="also import into this labeling database (needs --project)"),
         project: Optional[str] = typer.Option(None, help="project to create (media root = OUT) and import into"),
         overlap: int = typer.Option(1, help="with --project: distinct annotators per pair")) -> None:
    """Episodes -> clip pairs as GIFs under OUT/clips, a task file of 'clip' pairs, and pairs.npz for `fit`."""
    from rlhf.control.app_clips import make_pairs
    from rlhf.errors import RLHFError

    if (db is None) != (project is None):
        raise RLHFError("--db and --project go together")
    made = make_pairs(env, out, pairs, clip_len, episodes, gold, seed=seed)
    typer.echo(f"wrote {made['pairs']} clip pairs ({made['gold']} gold) to {out}")
    if project is not None:
        from rlhf.feedback.app.db import open_database
        from rlhf.feedback.app.importer import import_tasks
        from rlhf.feedback.app.projects import create_project

        with open_database(db)() as session:
            create_project(session, project, overlap=overlap, gold_fraction=0.2 if made["gold"] else 0.0,
                           media_root=str(out))
            n, g = import_tasks(session, project, made["tasks"], made["gold_file"])
        typer.echo(f"project {project!r}: imported {n} pairs and {g} gold pairs")


@clips_app.command("fit")
def fit(pairs_dir: Path = typer.Argument(..., help="the folder `make` wrote"),
        export: Path = typer.Argument(..., help="`rlhf label export` rankings of that project"),
        seed: int = typer.Option(0)) -> None:
    """Fit the control reward-model ensemble on people's answers; print its fit and their agreement with the
    environment's reward."""
    from rlhf.control.app_clips import fit_answers

    got = fit_answers(pairs_dir, export, seed)
    typer.echo(f"{got['env']}: {got['labels']} answers ({got['equal']} equal); reward model loss {got['rm_loss']:.3f}, "
               f"accuracy on the answers {got['rm_acc']:.3f}; people agree with the true reward on "
               f"{got['people_vs_true_reward']:.3f} of decided pairs")
