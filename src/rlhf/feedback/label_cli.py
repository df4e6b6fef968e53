"""`rlhf label ...`: run the labeling server and manage its database from the shell."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_DB = "labels.db"
DB_HELP = "SQLite file path (default labels.db) or a database URL such as postgresql://user@host/db"
MEDIA_HELP = ("folder holding the project's local image/video/audio files; task media paths are relative to it "
              "and must stay inside it")

label_app = typer.Typer(help="Human-feedback labeling app: serve, manage users and projects, import, export.",
                        no_args_is_help=True)


def _sessions(db: str):
    from rlhf.feedback.app.db import open_database  # web stack imported only when used

    return open_database(db)


FORWARDED_HELP = ("comma-separated addresses or networks of the reverse proxies whose X-Forwarded-For and "
                  "X-Forwarded-Proto headers are trusted, e.g. 127.0.0.1 when nginx or Caddy on this machine "
                  "forwards to the app; default: none, every request's client is the TCP peer")
SECURE_HELP = ("mark cookies Secure on every response (default: only on requests that came over https, "
               "as a trusted proxy's X-Forwarded-Proto says)")


@label_app.command()
def serve(db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)"),
          port: int = typer.Option(8000, help="TCP port"),
          forwarded_allow_ips: str = typer.Option("", help=FORWARDED_HELP),
          secure_cookies: bool = typer.Option(False, "--secure-cookies", help=SECURE_HELP)) -> None:
    """Start the labeling web server (migrates the database first)."""
    import uvicorn

    from rlhf.feedback.app import create_app

    proxies = check_proxies(forwarded_allow_ips)
    # uvicorn's own default trusts forwarding headers from 127.0.0.1, which is every client when the
    # app runs behind a proxy on this machine; here nothing is trusted unless named.
    uvicorn.run(create_app(db, secure_cookies=secure_cookies), host=host, port=port, log_level="warning",
                proxy_headers=bool(proxies), forwarded_allow_ips=",".join(proxies) or None)


def check_proxies(value: str) -> list[str]:
    """The trusted proxies of --forwarded-allow-ips, each an IP address or network ('*': any)."""
    import ipaddress

    proxies = [part.strip() for part in value.split(",") if part.strip()]
    for proxy in proxies:
        if proxy == "*":
            continue
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise typer.BadParameter(f"{proxy!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)",
                                     param_hint="--forwarded-allow-ips") from None
    return proxies


@label_app.command()
def init(db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Create or upgrade the database schema."""
    _sessions(db)
    typer.echo(f"database ready: {db}")


@label_app.command("create-user")
def create_user(username: str = typer.Argument(..., help="login name"),
                password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                             help="at least 8 characters (prompted when omitted)"),
                admin: bool = typer.Option(False, "--admin", help="give the user the admin role"),
                db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Add an annotator (or, with --admin, an admin)."""
    from rlhf.feedback.app.accounts import create_user as make_user

    with _sessions(db)() as session:
        user = make_user(session, username, password, "admin" if admin else "annotator")
        typer.echo(f"created {user.role} {user.username}")


@label_app.command("create-project")
def create_project(name: str = typer.Argument(..., help="project name"),
                   overlap: int = typer.Option(1, help="distinct annotators per task (M)"),
                   gold_fraction: float = typer.Option(0.0, help="share of served tasks that are hidden gold tasks"),
                   batch_size: int = typer.Option(10, help="tasks handed to an annotator at a time"),
                   media_root: Optional[Path] = typer.Option(None, help=MEDIA_HELP),
                   db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Create a labeling project."""
    from rlhf.feedback.app.projects import create_project as make_project

    with _sessions(db)() as session:
        project = make_project(session, name, overlap, gold_fraction, batch_size,
                               None if media_root is None else str(media_root))
        root = f", media root {project.media_root}" if project.media_root else ""
        typer.echo(f"created project {project.name} (overlap {project.overlap}, "
                   f"gold {project.gold_fraction:.0%}{root})")


@label_app.command("import")
def import_(file: Optional[Path] = typer.Argument(None,
                                                  help="tasks JSONL: {id, prompt, responses} or {prompt, chosen, "
                                                  "rejected}"),
            project: str = typer.Option(..., help="project name"),
            gold: Optional[Path] = typer.Option(None, help="gold tasks JSONL with known 'ranks'"),
            media_root: Optional[Path] = typer.Option(None, help=MEDIA_HELP + " (only for a project without one)"),
            db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Import tasks (and gold tasks) into a project: every line is checked first, then all or nothing."""
    from rlhf.feedback.app.db import DatabaseFileGuard, sqlite_path
    from rlhf.feedback.app.importer import import_tasks

    with _sessions(db)() as session:
        n_tasks, n_gold = import_tasks(session, project, file, gold,
                                       media_root=None if media_root is None else str(media_root),
                                       guard=DatabaseFileGuard(sqlite_path(db)))
    typer.echo(f"imported {n_tasks} tasks and {n_gold} gold tasks into {project}")


@label_app.command()
def export(project: str = typer.Option(..., help="project name"),
           out: Path = typer.Option(..., help="output JSONL file"),
           format: str = typer.Option("rankings", help="rankings (K-wise JSONL) or pairs (TRL prompt/chosen/rejected)"),
           min_gold_accuracy: Optional[float] = typer.Option(None, help="drop annotators below this gold accuracy"),
           db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Export consensus labels (gold tasks and skips excluded)."""
    from rlhf.feedback.app.export import export_project
    from rlhf.feedback.app.projects import get_project

    with _sessions(db)() as session:
        summary = export_project(session, get_project(session, project), out, format, min_gold_accuracy)
    dropped = f"; dropped annotators: {', '.join(summary.annotators_dropped)}" if summary.annotators_dropped else ""
    typer.echo(f"wrote {summary.rows} rows from {summary.tasks} tasks to {out}{dropped}")


if __name__ == "__main__":
    label_app()
