"""Admin pages: users, projects, task import, the quality dashboard, and export downloads."""
from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.accounts import create_user
from rlhf.feedback.app.deps import csrf_admin, get_db, require_admin
from rlhf.feedback.app.export import FORMATS, export_project
from rlhf.feedback.app.importer import import_tasks
from rlhf.feedback.app.models import Assignment, Label, LoginSession, Project, Task, User
from rlhf.feedback.app.plots import hbar_chart, histogram
from rlhf.feedback.app.projects import create_project, get_project
from rlhf.feedback.app.quality import quality_report
from rlhf.feedback.app.templating import templates

router = APIRouter(prefix="/admin")


def _admin_page(request: Request, db: Session, session: LoginSession, error: str | None = None,
                notice: str | None = None, status_code: int = 200) -> Response:
    counts = dict(db.execute(select(Task.project_id, func.count()).group_by(Task.project_id)).all())
    labels = dict(db.execute(select(Task.project_id, func.count()).join(Assignment, Assignment.task_id == Task.id)
                             .join(Label, Label.assignment_id == Assignment.id).group_by(Task.project_id)).all())
    projects = [(p, counts.get(p.id, 0), labels.get(p.id, 0))
                for p in db.scalars(select(Project).order_by(Project.name))]
    users = db.scalars(select(User).order_by(User.username)).all()
    return templates.TemplateResponse(request, "admin.html", {
        "session": session, "projects": projects, "users": users, "error": error, "notice": notice},
        status_code=status_code)


@router.get("")
def admin_home(request: Request, session: LoginSession = Depends(require_admin),
               db: Session = Depends(get_db)) -> Response:
    return _admin_page(request, db, session)


@router.post("/users")
def add_user(request: Request, username: str = Form(...), password: str = Form(...), role: str = Form("annotator"),
             session: LoginSession = Depends(csrf_admin), db: Session = Depends(get_db)) -> Response:
    try:
        create_user(db, username, password, role)
    except RLHFError as exc:
        return _admin_page(request, db, session, error=str(exc), status_code=400)
    return RedirectResponse("/admin", status_code=303)


@router.post("/projects")
def add_project(request: Request, name: str = Form(...), overlap: int = Form(1), gold_fraction: float = Form(0.0),
                batch_size: int = Form(10), session: LoginSession = Depends(csrf_admin),
                db: Session = Depends(get_db)) -> Response:
    try:
        project = create_project(db, name, overlap, gold_fraction, batch_size)
    except RLHFError as exc:
        return _admin_page(request, db, session, error=str(exc), status_code=400)
    return RedirectResponse(f"/admin/projects/{project.name}", status_code=303)


def _project(db: Session, name: str) -> Project:
    try:
        return get_project(db, name)
    except RLHFError as exc:
        raise HTTPException(404, str(exc)) from None


def _dashboard(request: Request, db: Session, session: LoginSession, project: Project, error: str | None = None,
               notice: str | None = None, status_code: int = 200) -> Response:
    report = quality_report(db, project)
    people = sorted(report.annotators.values(), key=lambda a: a.username)
    charts = [
        hbar_chart("Gold accuracy per annotator", [(a.username, a.gold_accuracy) for a in people]),
        hbar_chart("Pairwise agreement per annotator", [(a.username, a.agreement) for a in people]),
        hbar_chart("Krippendorff's alpha (ratings) per annotator",
                   [(a.username, a.alpha) for a in people], fmt="{:.2f}"),
        histogram("Likert ratings given", [str(i) for i in range(1, 8)], report.rating_counts),
    ]
    return templates.TemplateResponse(request, "dashboard.html", {
        "session": session, "project": project, "report": report, "people": people, "charts": charts,
        "formats": FORMATS, "error": error, "notice": notice}, status_code=status_code)


@router.get("/projects/{name}")
def dashboard(name: str, request: Request, session: LoginSession = Depends(require_admin),
              db: Session = Depends(get_db)) -> Response:
    return _dashboard(request, db, session, _project(db, name))


def _save_upload(upload: UploadFile | None, folder: Path, stem: str) -> Path | None:
    if upload is None or not upload.filename:
        return None
    path = folder / f"{stem}-{Path(upload.filename).name}"
    path.write_bytes(upload.file.read())
    return path


@router.post("/projects/{name}/import")
def import_upload(name: str, request: Request, tasks: UploadFile | None = None, gold: UploadFile | None = None,
                        session: LoginSession = Depends(csrf_admin), db: Session = Depends(get_db)) -> Response:
    project = _project(db, name)
    with tempfile.TemporaryDirectory() as folder:
        task_path = _save_upload(tasks, Path(folder), "tasks")
        gold_path = _save_upload(gold, Path(folder), "gold")
        try:
            n_tasks, n_gold = import_tasks(db, project.name, task_path, gold_path)
        except RLHFError as exc:
            message = str(exc).replace(f"{folder}/tasks-", "").replace(f"{folder}/gold-", "")
            return _dashboard(request, db, session, project, error=message, status_code=400)
    return _dashboard(request, db, session, project, notice=f"Imported {n_tasks} tasks and {n_gold} gold tasks.")


@router.get("/projects/{name}/export")
def export_download(name: str, format: str = "rankings", min_gold_accuracy: str = "",
                    session: LoginSession = Depends(require_admin), db: Session = Depends(get_db)) -> Response:
    """GET because it changes nothing; an empty threshold (the form's default) means none."""
    project = _project(db, name)
    try:
        threshold = float(min_gold_accuracy) if min_gold_accuracy.strip() else None
    except ValueError:
        raise HTTPException(400, f"min_gold_accuracy must be a number, got {min_gold_accuracy!r}") from None
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "export.jsonl"
        try:
            export_project(db, project, out, format, threshold)
        except RLHFError as exc:
            raise HTTPException(400, str(exc)) from None
        body = out.read_bytes()
    filename = f"{project.name}-{format}.jsonl".replace('"', "")
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
