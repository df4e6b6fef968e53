"""Admin pages: users, projects, task import, the quality dashboard, and export downloads."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path as FilePath
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from starlette.datastructures import FormData, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.accounts import count_sessions, create_user, end_user_sessions, set_disabled
from rlhf.feedback.app.deps import MAX_ID, admin_form, csrf_admin, get_db, require_admin
from rlhf.feedback.app.export import FORMATS, export_project
from rlhf.feedback.app.importer import MAX_UPLOAD_BYTES, import_tasks
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
        "session": session, "projects": projects, "users": users, "sessions": count_sessions(db), "error": error,
        "notice": notice}, status_code=status_code)


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


def _user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return user


UserId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post("/users/{user_id}/disable")
def disable_user(user_id: UserId, request: Request, session: LoginSession = Depends(csrf_admin),
                 db: Session = Depends(get_db)) -> Response:
    """Disable a user: every session of theirs ends now and they cannot log in until enabled."""
    user = _user(db, user_id)
    if user.id == session.user_id:
        return _admin_page(request, db, session, error="you cannot disable yourself", status_code=400)
    try:
        set_disabled(db, user, True)  # another admin too, but never the last active one
    except RLHFError as exc:
        return _admin_page(request, db, session, error=str(exc), status_code=400)
    return _admin_page(request, db, session, notice=f"{user.username} is disabled and logged out everywhere.")


@router.post("/users/{user_id}/enable")
def enable_user(user_id: UserId, request: Request, session: LoginSession = Depends(csrf_admin),
                db: Session = Depends(get_db)) -> Response:
    user = _user(db, user_id)
    set_disabled(db, user, False)
    return _admin_page(request, db, session, notice=f"{user.username} can log in again.")


@router.post("/users/{user_id}/end-sessions")
def end_sessions(user_id: UserId, request: Request, session: LoginSession = Depends(csrf_admin),
                 db: Session = Depends(get_db)) -> Response:
    """Log a user out everywhere (for the admin's own account: everywhere but here)."""
    user = _user(db, user_id)
    ended = end_user_sessions(db, user.id, keep=session if user.id == session.user_id else None)
    return _admin_page(request, db, session, notice=f"Ended {ended} session(s) of {user.username}.")


@router.post("/projects")
def add_project(request: Request, name: str = Form(...), overlap: int = Form(1), gold_fraction: float = Form(0.0),
                batch_size: int = Form(10), session: LoginSession = Depends(csrf_admin),
                db: Session = Depends(get_db)) -> Response:
    try:
        project = create_project(db, name, overlap, gold_fraction, batch_size)
    except RLHFError as exc:
        return _admin_page(request, db, session, error=str(exc), status_code=400)
    return RedirectResponse(f"/admin/projects/{quote(project.name)}", status_code=303)


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
        "formats": FORMATS, "error": error, "notice": notice, "max_upload_mib": MAX_UPLOAD_BYTES // 2**20},
        status_code=status_code)


@router.get("/projects/{name}")
def dashboard(name: str, request: Request, session: LoginSession = Depends(require_admin),
              db: Session = Depends(get_db)) -> Response:
    return _dashboard(request, db, session, _project(db, name))


def _display_name(filename: str) -> str:
    """How reports call an uploaded file: its base name, printable, at most 80 characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "?", filename.replace("\\", "/").rsplit("/", 1)[-1]) or "upload"
    return name if len(name) <= 80 else name[:60] + "..." + name[-17:]


def _save_upload(upload, path: FilePath) -> FilePath | None:
    """Copy an upload to `path` (a fixed name: the client's file name only labels reports)."""
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    size = 0
    with open(path, "wb") as out:
        while chunk := upload.file.read(2**20):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"{_display_name(upload.filename)} is larger than the upload limit of "
                                         f"{MAX_UPLOAD_BYTES // 2**20} MiB; split it, or import it on the server "
                                         f"with `rlhf label import`")
            out.write(chunk)
    return path


@router.post("/projects/{name}/import")
def import_upload(name: str, request: Request, form: FormData = Depends(admin_form),
                  session: LoginSession = Depends(csrf_admin), db: Session = Depends(get_db)) -> Response:
    """Upload `tasks` and/or `gold` files. No File parameters: the body is read only after the
    session is known to be an admin's (see deps.admin_form)."""
    project = _project(db, name)
    tasks, gold = form.get("tasks"), form.get("gold")
    with tempfile.TemporaryDirectory() as folder:
        try:
            task_path = _save_upload(tasks, FilePath(folder) / "tasks.jsonl")
            gold_path = _save_upload(gold, FilePath(folder) / "gold.jsonl")
        except HTTPException as exc:
            return _dashboard(request, db, session, project, error=exc.detail, status_code=exc.status_code)
        names = (_display_name(tasks.filename) if task_path else None,
                 _display_name(gold.filename) if gold_path else None)
        try:
            n_tasks, n_gold = import_tasks(db, project.name, task_path, gold_path, names=names,
                                           guard=request.app.state.database_files)
        except RLHFError as exc:
            return _dashboard(request, db, session, project, error=str(exc), status_code=400)
    return _dashboard(request, db, session, project, notice=f"Imported {n_tasks} tasks and {n_gold} gold tasks.")


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback name plus the exact name in UTF-8 (`filename*=`)."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


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
        out = FilePath(folder) / "export.jsonl"
        try:
            export_project(db, project, out, format, threshold)
        except RLHFError as exc:
            raise HTTPException(400, str(exc)) from None
        body = out.read_bytes()
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": content_disposition(f"{project.name}-{format}.jsonl")})
